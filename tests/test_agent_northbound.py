"""The agent feeding a City OS NGSI-LD broker (the stand-in in hw/cityos) from what it stored: every message's
entities arrive, in order per entity, across a City OS outage; watch tags never leave raw; the outbox drains."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_agent.northbound.alerts import SOS_QUANTITY
from cloud_agent.northbound.mapping import CONTEXTS
from device_registry import Location, Registry
from hw.cityos import NgsiLdBroker, StandInServer
from kakehashi import wire
from tests.agent_support import ORG, agent_config, gateway_link, register_gateway, running_agent, wait_for
from tests.conftest import Fleet
from tests.fleet import RunningBroker

GW = "gw-test-0001"
GAUGE, TAG = "wl-0101", "bt-0001"
TOPIC = wire.topic_for(GW, wire.Channel.READINGS)
SOS_SEQ = 7  # sent while the City OS is down
T0 = time.time() - 3600  # within the last hour or two: crowd counts are flushed up to the current hour


@pytest.fixture(name="registry")
async def registry_fixture(fleet: Fleet, tmp_path: Path) -> AsyncIterator[Registry]:
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    try:
        await register_gateway(registry, fleet, GW)
        await registry.create_device(
            GAUGE, ORG, "water_level", actor="admin", gateway_id=GW, profile="water-level",
            location=Location(latitude=34.7566, longitude=134.8411, place="Kako river, Kakogawa bridge"),
        )  # fmt: skip
        from datetime import timedelta

        from device_registry import State

        await registry.create_device(TAG, ORG, "watch_tag", actor="admin", consent=True, retention=timedelta(days=30))
        await registry.transition(TAG, State.PROVISIONED, "admin", "consent form signed")
        yield registry
    finally:
        await registry.close()


def _message(seq: int, level: float) -> bytes:
    at = T0 + seq
    readings = (
        wire.Reading(GAUGE, "level", level, "m", at, wire.ClockQuality.SYNCED),
        wire.Reading(TAG, "rssi", -70.0, "dBm", at, wire.ClockQuality.SYNCED),
        *((wire.Reading(TAG, SOS_QUANTITY, True, None, at, wire.ClockQuality.SYNCED),) if seq == SOS_SEQ else ()),
    )
    return wire.encode_readings(wire.ReadingsMessage(seq=seq, sent_at=at, readings=readings))


@pytest.mark.parametrize("mapping_worker", [True, False], ids=["mapping-worker", "mapping-in-loop"])
async def test_stored_readings_reach_the_city_os_in_order_across_an_outage(
    fleet: Fleet, broker: RunningBroker, registry: Registry, tmp_path: Path, mapping_worker: bool
) -> None:
    city = NgsiLdBroker(allowed_contexts=set(CONTEXTS.values()))
    async with StandInServer(city.app()) as server:
        config = agent_config(
            fleet, broker.endpoint, f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", tmp_path / "agent",
            northbound={"kind": "ngsi-ld", "url": server.url, "tenant": "kakogawa", "batch_size": 10,
                        "crowd_flush_s": 0.2, "mapping_worker": mapping_worker},
        )  # fmt: skip
        async with running_agent(config) as agent, gateway_link(broker.endpoint, fleet.gw1, GW) as gw:
            for seq in range(1, 6):
                await gw.publish(TOPIC, _message(seq, 1.0 + seq / 10))
            water = "urn:ngsi-ld:WaterObserved:" + GAUGE

            def levels() -> list[float]:
                return [
                    float(entity["height"]["value"])
                    for tenant, entity_id, entity in city.updates
                    if tenant == "kakogawa" and entity_id == water and "height" in entity
                ]

            await wait_for(
                lambda: len(levels()) == 5,
                what=lambda: f"5 water levels at the City OS: {levels()} {agent.metrics.snapshot().get('northbound')}",
            )
            await server.down()  # the City OS goes away for a while
            for seq in range(6, 11):
                await gw.publish(TOPIC, _message(seq, 1.0 + seq / 10))
            await wait_for(
                lambda: agent.metrics.readings_stored == 21, what="the readings stored meanwhile"
            )  # with the SOS
            await asyncio.sleep(0.5)
            await server.up()
            await wait_for(
                lambda: len(levels()) == 10,
                within=30,
                what=lambda: f"10 levels: {levels()} {agent.metrics.snapshot().get('northbound')}",
            )
            assert levels() == [round(1.0 + seq / 10, 6) for seq in range(1, 11)], "every sample, in order"
            await wait_for(_drained(registry), what="the northbound outbox drained")
            crowd_urn = "urn:ngsi-ld:CrowdFlowObserved:"
            await wait_for(lambda: any(e.startswith(crowd_urn) for e in city.entities("kakogawa")),
                           what=lambda: f"a crowd count: {sorted(city.entities('kakogawa'))}")  # fmt: skip
        ids = set(city.entities("kakogawa"))
        assert "urn:ngsi-ld:Device:" + GAUGE in ids
        crowd = [city.entities("kakogawa")[e] for e in ids if e.startswith("urn:ngsi-ld:CrowdFlowObserved:")]
        assert crowd, "watch tags are counted per zone and hour"
        sos = [city.entities("kakogawa")[e] for e in ids if e.startswith("urn:ngsi-ld:Alert:sos:")]
        assert len(sos) == 1, "the tag's SOS went out as an Alert"
        assert sos[0]["category"]["value"] == "security"
        assert not any(TAG in entity_id for entity_id in ids), "a watch tag never leaves raw"
        assert all(TAG not in str(entity) for _, _, entity in city.updates)


def _drained(registry: Registry):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return (await registry.northbound_depth()).pending == 0

    return check


async def test_the_agent_registers_as_a_context_source_and_removes_the_registration_when_it_stops(
    fleet: Fleet, broker: RunningBroker, registry: Registry, tmp_path: Path
) -> None:
    city = NgsiLdBroker(allowed_contexts=set(CONTEXTS.values()))
    async with StandInServer(city.app()) as server:
        config = agent_config(
            fleet, broker.endpoint, f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", tmp_path / "agent",
            context_source={"broker_url": server.url, "endpoint": "https://agent.kakogawa.example:8443"},
        )  # fmt: skip
        async with running_agent(config):
            await wait_for(lambda: bool(city.registrations), what="a context-source registration")
            (registration,) = city.registrations.values()
            assert registration["endpoint"] == "https://agent.kakogawa.example:8443"
            served = {info["entities"][0]["type"] for info in registration["information"]}
            assert "Device" in served  # more types join as readings arrive (it registers again every retry_s)
        assert city.registrations == {}, "removed when the agent stopped"
