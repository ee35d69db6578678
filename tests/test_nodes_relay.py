"""Edge nodes through the gateway's local broker: bound nodes relayed at most once, acknowledged only when held."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.intake import Intake
from gateway.model import Priority, Reading
from gateway.outbox import Outbox
from gateway.sources.base import SourceHealth
from gateway.sources.nodes import BoundNode, NodesSource, NodesSourceConfig
from kakehashi import wire
from kakehashi.identity import Role
from kakehashi.mqtt import TlsIdentity
from kakehashi.mqtt_link import MqttLink, PublishRefusedError
from tests.conftest import Fleet
from tests.fleet import RunningBroker, start_broker

GW = "gw-test-0001"


@pytest.fixture
def local_broker(fleet: Fleet, tmp_path: Path) -> Iterator[RunningBroker]:
    fleet.identity(Role.NODE, "wl-0007")
    fleet.identity(Role.NODE, "wl-0099")
    running = start_broker(fleet.ca.path, tmp_path / "local", extra=("--profile", "local", "--gateway", GW))
    try:
        yield running
    finally:
        running.stop()


def node_link(fleet: Fleet, broker: RunningBroker, node: str) -> MqttLink:
    directory = fleet.root / "devices" / node  # the identity was made by the local_broker fixture
    identity = TlsIdentity(fleet.ca.trust_bundle_path, directory / f"{node}.crt", directory / f"{node}.key")
    return MqttLink(broker.endpoint, identity, client_id=node)


def envelope(node: str, seq: int, values: list[float], device: str | None = None) -> bytes:
    readings = tuple(
        wire.Reading(device or node, "level", v, "m", 1.8e9 + i, wire.ClockQuality.SYNCED) for i, v in enumerate(values)
    )
    return wire.encode_readings(wire.ReadingsMessage(seq=seq, sent_at=1.8e9, readings=readings))


async def relay_acks(link: MqttLink, count: int) -> list[int]:
    async with asyncio.timeout(5 * count):
        return [wire.decode_relay_ack((await link.messages.get()).payload) for _ in range(count)]


async def test_bound_node_relayed_once_and_acknowledged_after_commit(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path
) -> None:
    outbox = await Outbox.open(tmp_path / "outbox.db", 16 * 1024 * 1024)
    intake = Intake(outbox)
    source = NodesSource(
        NodesSourceConfig(port=local_broker.endpoint.port, nodes=[BoundNode(id="wl-0007")]), GW, fleet.gw1
    )
    health = SourceHealth("nodes")
    task = asyncio.get_running_loop().create_task(source.run(intake, health))
    try:
        for _ in range(100):
            if health.state == "ok":
                break
            await asyncio.sleep(0.05)
        async with (
            node_link(fleet, local_broker, "wl-0007") as node,
            node_link(fleet, local_broker, "wl-0099") as stranger,
        ):
            await node.subscribe(["kn/v1/wl-0007/down/#"])
            base = "kn/v1/wl-0007/up"
            await node.publish(f"{base}/readings", envelope("wl-0007", 1, [1.0, 1.1]))
            await node.publish(f"{base}/alarms", envelope("wl-0007", 2, [3.2]))
            await node.publish(f"{base}/readings", envelope("wl-0007", 2, [3.2]))  # a redelivery after a lost ack
            await node.publish(f"{base}/readings", envelope("wl-0007", 3, [9.9], device="wl-0099"))  # spoof
            await node.publish(f"{base}/readings", b"{not json")
            assert await relay_acks(node, 3) == [1, 2, 2]
            await stranger.publish("kn/v1/wl-0099/up/readings", envelope("wl-0099", 1, [5.0]))  # not bound
            with pytest.raises(PublishRefusedError):
                await stranger.publish("kn/v1/wl-0007/up/readings", envelope("wl-0007", 9, [0.0]))
            await asyncio.sleep(0.5)
        stored = await outbox.fetch_after(0, 100)
        assert [m.readings for m in stored] == [2, 1], "the duplicate of seq 2 was not stored again"
        assert stored[1].priority is Priority.ALARM
        values = [r.value for m in stored for r in wire.decode_readings(m.payload).readings]
        assert values == [1.0, 1.1, 3.2]
        assert health.errors["spoofed"] == 1
        assert health.errors["malformed"] == 1
        assert health.errors["unbound_node"] == 1
        assert intake.stats.relay_duplicates == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()


async def test_the_high_water_mark_survives_a_gateway_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    for attempt in range(2):
        outbox = await Outbox.open(path, 16 * 1024 * 1024)
        intake = Intake(outbox)
        held = await intake.submit_once("wl-0007", 5, [Reading("wl-0007", "level", 1.0, "m", 1.8e9)])
        assert held
        assert intake.stats.relay_duplicates == attempt
        await outbox.close()
    outbox = await Outbox.open(path, 16 * 1024 * 1024)
    assert len(await outbox.fetch_after(0, 10)) == 1
    await outbox.close()
