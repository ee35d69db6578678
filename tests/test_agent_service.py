"""The agent service end to end with a real Mosquitto and both databases: ingest exactly once, refusals counted,
presence from status, will and time-out, twin delivery, gap reports, reported state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_registry import Registry, State
from kakehashi import wire
from kakehashi.mqtt_link import LinkError
from tests.agent_support import (
    ORG,
    agent_config,
    gateway_link,
    readings,
    register_gateway,
    running_agent,
    status,
    wait_for,
)
from tests.conftest import Fleet
from tests.fleet import RunningBroker
from tests.postgres import database_url_fixture as database_url_fixture

GW1, GW2 = "gw-test-0001", "gw-test-0002"


@pytest.fixture(name="registry")
async def registry_fixture(database_url: str, fleet: Fleet) -> AsyncIterator[Registry]:
    registry = await Registry.open(database_url)
    try:
        await register_gateway(registry, fleet, GW1)
        await register_gateway(registry, fleet, GW2)
        await registry.create_device("wl-0001", ORG, "water_level", actor="admin", gateway_id=GW1)
        await registry.create_device("wl-0002", ORG, "water_level", actor="admin", gateway_id=GW2)
        yield registry
    finally:
        await registry.close()


async def test_readings_are_stored_once_whatever_the_replay_and_order(
    fleet: Fleet, broker: RunningBroker, registry: Registry, database_url: str, tmp_path: Path
) -> None:
    config = agent_config(fleet, broker.endpoint, database_url, tmp_path / "agent")
    async with running_agent(config) as agent, gateway_link(broker.endpoint, fleet.gw1, GW1) as gw:
        topic = wire.topic_for(GW1, wire.Channel.READINGS)
        for seq in (1, 2, 3, 2, 1, 5, 4, 3):  # replayed and reordered
            await gw.publish(topic, readings(seq, "wl-0001", [float(seq), float(seq) + 0.5]))
        await wait_for(lambda: agent.metrics.acknowledged == 8, what=lambda: f"8 messages: {agent.metrics.snapshot()}")
        stored = await registry.history("wl-0001", limit=100)
        assert sorted(r.seq for r in stored) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        assert agent.metrics.readings_stored == 10
        assert agent.metrics.duplicates == 3
        assert (await registry.get_gateway(GW1)).state is State.ACTIVE
        assert (await registry.get_device("wl-0001")).state is State.ACTIVE
        assert (await registry.completeness(GW1)).highest_seq == 5


async def test_a_spoofed_device_and_bad_payloads_are_refused_counted_and_do_not_block_the_queue(
    fleet: Fleet, broker: RunningBroker, registry: Registry, database_url: str, tmp_path: Path
) -> None:
    config = agent_config(fleet, broker.endpoint, database_url, tmp_path / "agent")
    async with running_agent(config) as agent, gateway_link(broker.endpoint, fleet.gw1, GW1) as gw:
        topic = wire.topic_for(GW1, wire.Channel.READINGS)
        await gw.publish(topic, readings(1, "wl-0002", [1.0]))  # bound to gw2: spoofed by gw1
        await gw.publish(topic, b'{"v": 1, "seq": 2, "ts": 1.8e9, "senml": [{"n": "wl-0001:level"}]}')
        await gw.publish(topic, b"\xff not json")
        too_many = b'{"v": 1, "seq": 4, "ts": 1.8e9, "senml": [' + b",".join([b'{"v":1}'] * 10_001) + b"]}"
        await gw.publish(topic, too_many)  # over the record limit
        await gw.publish(f"kh/v1/{GW1}/up/nonsense", b"{}")
        await gw.publish(topic, readings(3, "wl-0001", [7.0]))  # still flows afterwards
        await wait_for(lambda: agent.metrics.acknowledged == 6, what=lambda: f"6 messages: {agent.metrics.snapshot()}")
        assert await registry.history("wl-0002") == []
        assert agent.metrics.readings_rejected["unbound"] == 1
        assert sum(agent.metrics.refused.values()) == 4, agent.metrics.refused
        assert agent.metrics.refused["bad_topic"] == 1
        audit = await registry.audit(action="ingest.rejected_unbound")
        assert [(entry.actor, entry.detail["device"]) for entry in audit] == [(GW1, "wl-0002")]


async def test_an_oversize_payload_is_cut_off_by_the_broker_before_it_reaches_anyone(
    fleet: Fleet, broker: RunningBroker, registry: Registry, database_url: str, tmp_path: Path
) -> None:
    config = agent_config(fleet, broker.endpoint, database_url, tmp_path / "agent")
    async with running_agent(config) as agent:
        async with gateway_link(broker.endpoint, fleet.gw1, GW1) as gw:
            with pytest.raises(LinkError):  # "Packet too large" (or the bare disconnect, depending on timing)
                await gw.publish(wire.topic_for(GW1, wire.Channel.READINGS), b"[" * (2 * wire.MAX_PAYLOAD_BYTES))
        async with gateway_link(broker.endpoint, fleet.gw1, GW1) as gw:  # the gateway reconnects and goes on
            await gw.publish(wire.topic_for(GW1, wire.Channel.READINGS), readings(1, "wl-0001", [1.0]))
        await wait_for(
            lambda: agent.metrics.readings_stored == 1, what=lambda: f"1 reading: {agent.metrics.snapshot()}"
        )
        assert agent.metrics.refused == {}  # the agent never saw the oversize message


async def test_presence_twin_delivery_reported_state_and_gaps(
    fleet: Fleet, broker: RunningBroker, registry: Registry, database_url: str, tmp_path: Path
) -> None:
    config = agent_config(
        fleet, broker.endpoint, database_url, tmp_path / "agent", presence={"heartbeat_timeout_s": 1.5}
    )
    version = await registry.set_desired(GW1, {"heartbeat_s": 10}, actor="tanaka")  # queued while offline
    async with running_agent(config) as agent:
        async with gateway_link(broker.endpoint, fleet.gw1, GW1, manual_ack=False) as gw:
            await gw.subscribe(wire.gateway_subscriptions(GW1))
            await gw.publish(wire.topic_for(GW1, wire.Channel.STATUS), status(
                wire.StatusState.ONLINE, wire.StatusReason.CONNECTED), retain=True)  # fmt: skip
            async with asyncio.timeout(10):
                desired = wire.decode_desired((await _next_on(gw, "desired")).payload)
            assert (desired.version, desired.delta) == (version, {"heartbeat_s": 10})
            presence = await registry.get_presence(GW1)
            assert presence is not None
            assert presence.online

            # while online, a new desired change goes out at once (the API calls desired_changed)
            second = await registry.set_desired(GW1, {"heartbeat_s": 20}, actor="tanaka")
            await agent.runtime.actions.desired_changed(GW1)
            async with asyncio.timeout(10):
                again = wire.decode_desired((await _next_on(gw, "desired")).payload)
            assert again.version == second

            reported = wire.ReportedMessage(seq=1, sent_at=time.time(), version=second, state={"heartbeat_s": 20})
            await gw.publish(wire.topic_for(GW1, wire.Channel.REPORTED), wire.encode_reported(reported))
            gaps = wire.EventsMessage(seq=12, sent_at=time.time(), events=(wire.GapReport(3, 9, 70, "disk_budget"),))
            await gw.publish(wire.topic_for(GW1, wire.Channel.EVENTS), wire.encode_events(gaps))
            await wait_for(
                lambda: agent.metrics.acknowledged >= 3, what=lambda: f"3 messages: {agent.metrics.snapshot()}"
            )
            assert (await registry.get_twin(GW1)).reported_version == second
            assert await registry.pending_desired(GW1) == []
            completeness = await registry.completeness(GW1)
            assert [(g.from_seq, g.to_seq) for g in completeness.reported_gaps] == [(3, 9)]
            # silence past the time-out: offline
            await wait_for(_offline(registry, GW1), within=10, what="heartbeat time-out")
            assert (await registry.get_presence(GW1)).reason == "heartbeat_timeout"  # type: ignore[union-attr]

        # a heartbeat brings it back; then the last will (connection dropped uncleanly) takes it offline
        gw2 = gateway_link(broker.endpoint, fleet.gw1, GW1, keepalive_s=5)
        await gw2.__aenter__()
        await gw2.publish(wire.topic_for(GW1, wire.Channel.STATUS), status(
            wire.StatusState.ONLINE, wire.StatusReason.HEARTBEAT))  # fmt: skip
        await wait_for(_online(registry, GW1), what="online again")
        gw2._client.socket().close()  # the network drops: the broker publishes the will  # type: ignore[union-attr]
        await wait_for(_offline(registry, GW1), within=20, what="the last will")
        assert (await registry.get_presence(GW1)).reason == "will"  # type: ignore[union-attr]
        await gw2.__aexit__(None, None, None)


def _offline(registry: Registry, gateway_id: str):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        presence = await registry.get_presence(gateway_id)
        return presence is not None and not presence.online

    return check


def _online(registry: Registry, gateway_id: str):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        presence = await registry.get_presence(gateway_id)
        return presence is not None and presence.online

    return check


async def _next_on(link, channel: str):  # type: ignore[no-untyped-def]
    while True:
        message = await link.messages.get()
        if message.topic.endswith("/" + channel):
            return message
