"""Outbox → uplink → real Mosquitto with mutual TLS: every reading arrives, in order, across broker outages."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.intake import Intake
from gateway.model import Priority, Reading
from gateway.outbox import Outbox
from gateway.sources.base import SourceHealth
from gateway.sources.synthetic import SyntheticSource, SyntheticSourceConfig
from gateway.twin import ignore_downlink
from gateway.uplink import Uplink, UplinkSettings
from kakehashi import wire
from kakehashi.mqtt import BrokerEndpoint
from tests.conftest import Fleet
from tests.fleet import Collector, RunningBroker, free_port, start_broker

GW = "gw-test-0001"


@dataclass
class Pipeline:
    outbox: Outbox
    intake: Intake
    uplink: Uplink
    source: SyntheticSource
    collector: Collector
    health: SourceHealth


@contextlib.asynccontextmanager
async def pipeline(
    fleet: Fleet,
    broker: RunningBroker,
    tmp_path: Path,
    *,
    rate: float,
    limit: int,
    heartbeat_s: float = 30.0,
    gateway_id: str = GW,
) -> AsyncIterator[Pipeline]:
    outbox = await Outbox.open(tmp_path / "outbox.db", 64 * 1024 * 1024)
    intake = Intake(outbox, max_readings_per_message=100)
    source = SyntheticSource(SyntheticSourceConfig(devices=["sim-0001", "sim-0002"], rate_per_s=rate, batch=50,
                                                   limit=limit))  # fmt: skip
    health = SourceHealth(source.name)

    async def health_doc() -> dict[str, object]:
        return {"outbox": (await outbox.stats()).to_json()}

    settings = UplinkSettings(heartbeat_s=heartbeat_s, backoff_base_s=0.2, backoff_cap_s=1.0)
    uplink = Uplink(gateway_id, broker.endpoint, fleet.gw1, outbox, health=health_doc, on_downlink=ignore_downlink,
                    settings=settings)  # fmt: skip
    collector = Collector(broker.endpoint, fleet.agent)
    stop_uplink, stop_collector = asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        collector_task = tg.create_task(collector.run(stop_collector))
        async with asyncio.timeout(10):
            await collector.subscribed.wait()
        intake_task = tg.create_task(intake.run())
        uplink_task = tg.create_task(uplink.run(stop_uplink))
        source_task = tg.create_task(source.run(intake, health))
        try:
            yield Pipeline(outbox, intake, uplink, source, collector, health)
        finally:
            source_task.cancel()
            await intake.drain()
            intake_task.cancel()
            stop_uplink.set()
            await uplink_task
            stop_collector.set()
            collector_task.cancel()
            await outbox.close()


async def wait_for(predicate, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def assert_complete(p: Pipeline, produced: int) -> None:
    seqs = p.collector.seqs(GW)
    assert sorted(seqs) == list(range(1, len(seqs) + 1)), "sequence numbers dense: nothing missing"
    assert p.collector.readings == produced, "every reading arrived once after dedupe"
    counters: dict[str, list[float]] = {}
    for key in sorted(p.collector.payloads):
        for r in wire.decode_readings(p.collector.payloads[key]).readings:
            if r.quantity == "counter":
                counters.setdefault(r.device_id, []).append(float(r.value))  # type: ignore[arg-type]
    for device, values in counters.items():
        assert values == [float(v) for v in range(1, 2 * len(values), 2)], f"{device} counter has no holes"


async def test_every_reading_is_forwarded_and_the_outbox_empties(fleet: Fleet, broker: RunningBroker,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    async with pipeline(fleet, broker, tmp_path, rate=20_000, limit=6_000) as p:

        async def done() -> bool:
            return p.collector.readings >= 6_000 and (await p.outbox.stats()).depth_messages == 0

        await wait_for(done, 30, "all readings delivered and acknowledged")
        assert_complete(p, 6_000)
        assert p.collector.seqs(GW) == sorted(p.collector.seqs(GW)), "delivered in order"
        assert p.uplink.stats.acked_messages == p.uplink.stats.published_messages


async def test_status_is_retained_online_with_health_then_offline_on_clean_stop(
    fleet: Fleet, broker: RunningBroker, tmp_path: Path
) -> None:
    async with pipeline(fleet, broker, tmp_path, rate=100, limit=10, heartbeat_s=1.0) as p:
        await wait_for(lambda: _true(len(p.collector.statuses) >= 2), 10, "online status and a heartbeat")
        collector = p.collector
    await asyncio.sleep(0.5)
    states = [wire.decode_status(s) for s in collector.statuses]
    assert states[0].state is wire.StatusState.ONLINE
    assert any(s.reason is wire.StatusReason.HEARTBEAT and s.health and "outbox" in s.health for s in states)


async def _true(value: bool) -> bool:
    return value


@pytest.mark.slow
async def test_broker_down_30_seconds_while_the_source_runs_loses_nothing(
    fleet: Fleet, broker: RunningBroker, tmp_path: Path
) -> None:
    produced = 12_000
    async with pipeline(fleet, broker, tmp_path, rate=300, limit=produced) as p:
        await wait_for(lambda: _true(p.collector.readings > 300), 15, "flow before the outage")
        port = broker.endpoint.port
        assert broker.stop() == 0
        await asyncio.sleep(30)
        backlog = (await p.outbox.stats()).depth_readings
        assert backlog > 5_000, "readings kept arriving and were buffered during the outage"
        assert p.uplink.stats.connect_failures > 0
        restarted = start_broker(broker.pki_dir, broker.rundir, port=port)
        try:

            async def done() -> bool:
                return (
                    p.source.produced >= produced
                    and (await p.outbox.stats()).depth_messages == 0
                    and (p.collector.readings >= produced)
                )

            await wait_for(done, 60, "backlog replayed after the outage")
            assert_complete(p, produced)
            first = p.collector.seqs(GW)
            assert first == sorted(first), "replayed in order"
        finally:
            restarted.stop()


async def test_publishes_the_broker_refuses_stay_in_the_outbox(fleet: Fleet, broker: RunningBroker,
                                                               tmp_path: Path) -> None:  # fmt: skip
    # gw1's certificate, but configured with another gateway's id: the broker's ACL refuses every publish.
    async with pipeline(fleet, broker, tmp_path, rate=5_000, limit=500, gateway_id="gw-test-0002") as p:
        await wait_for(lambda: _true(p.uplink.stats.errors.get("publish_refused", 0) > 0), 10, "a refusal")
        await asyncio.sleep(1.0)
        stats = await p.outbox.stats()
        assert stats.depth_readings == 500, "nothing the broker refused was deleted"
        assert "refused" in (p.uplink.stats.last_error or "")
        assert p.collector.readings == 0


async def test_disk_budget_exhausted_during_an_outage_alarms_survive_and_gaps_are_reported(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The broker is unreachable while telemetry floods a small outbox; alarms keep coming. When the broker returns,
    the cloud gets every alarm, and every sequence number is either delivered or listed in a gap report."""
    port = free_port()
    outbox = await Outbox.open(tmp_path / "outbox.db", 128 * 1024)
    intake = Intake(outbox, max_readings_per_message=50)
    telemetry = SyntheticSource(SyntheticSourceConfig(devices=["sim-0001"], rate_per_s=20_000, batch=50, limit=40_000))

    async def health_doc() -> dict[str, object]:
        return {}

    settings = UplinkSettings(backoff_base_s=0.2, backoff_cap_s=0.5)
    uplink = Uplink(GW, BrokerEndpoint("127.0.0.1", port), fleet.gw1, outbox, health=health_doc,
                    on_downlink=ignore_downlink, settings=settings)  # fmt: skip
    stop_uplink = asyncio.Event()
    alarms_sent = 0
    # The cloud side's persistent session exists before the gateway can reach the broker (as the agent's does in a
    # deployment); else what the uplink publishes before the collector subscribes is acknowledged and dropped.
    broker = start_broker(fleet.ca.path, tmp_path / "broker", port=port)
    collector = Collector(broker.endpoint, fleet.agent)
    stop_collector = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        collector_task = tg.create_task(collector.run(stop_collector))
        try:
            async with asyncio.timeout(10):
                await collector.subscribed.wait()
        finally:
            broker.stop()  # the outage (or, if the collector never subscribed, no broker left behind)
        intake_task = tg.create_task(intake.run())
        uplink_task = tg.create_task(uplink.run(stop_uplink))
        source_task = tg.create_task(telemetry.run(intake, SourceHealth("synthetic")))
        while not telemetry.finished.is_set():
            alarms_sent += 1
            await intake.submit([Reading("wl-0001", "water_level", 5.0 + alarms_sent, "m", time.time(),
                                         priority=Priority.ALARM)])  # fmt: skip
            await asyncio.sleep(0.01)
        stats = await outbox.stats()
        assert stats.dropped_readings > 0, "the budget was exhausted and telemetry thinned"
        broker = start_broker(fleet.ca.path, tmp_path / "broker", port=port)
        try:

            async def drained() -> bool:
                return (await outbox.stats()).depth_messages == 0

            await wait_for(drained, 60, "the outbox to drain after the outage")
            await asyncio.sleep(0.5)
            delivered = set(collector.seqs(GW))
            gaps: set[int] = set()
            alarms = 0
            for payload in collector.payloads.values():
                try:
                    events = wire.decode_events(payload).events
                except wire.WireError:  # not an events message: readings
                    alarms += sum(r.device_id == "wl-0001" for r in wire.decode_readings(payload).readings)
                    continue
                for event in events:
                    if isinstance(event, wire.GapReport):
                        gaps.update(range(event.from_seq, event.to_seq + 1))
            everything = set(range(1, (await outbox.stats()).next_seq))
            assert everything == delivered | gaps, "every seq is delivered or reported as a gap"
            assert alarms == alarms_sent, "no alarm was dropped"
        finally:
            source_task.cancel()
            await intake.drain()
            intake_task.cancel()
            stop_uplink.set()
            await uplink_task
            stop_collector.set()
            collector_task.cancel()
            broker.stop()
            await outbox.close()
