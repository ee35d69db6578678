"""Tests of the gateway's Modbus source (gateway.sources.modbus) against the real simulator (hw.modbus.simulator):
Modbus TCP on an OS-chosen loopback port and Modbus RTU over a socat PTY pair; block reads counted at the simulator;
faulty devices backed off and quarantined while the rest of the bus keeps its rate; reconnect after the simulator
restarts; writes read back; configuration errors that name the key and the fix; throughput of one bus."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.intake import IntakeClosedError
from gateway.model import ClockQuality, Priority, Reading
from gateway.sources.base import SourceHealth
from gateway.sources.modbus import (
    ModbusBusSource,
    ModbusSourceConfig,
    ModbusWriteError,
    build_modbus_buses,
    build_modbus_source,
    find_bus,
)
from hw.modbus.profile import load_profile
from hw.modbus.simulator import Fault, ModbusSimulator

FAST = {"backoff_initial_s": 0.1, "backoff_max_s": 0.4, "reconnect_initial_s": 0.1, "reconnect_max_s": 0.2}


class CollectingSink:
    """A stand-in for the outbox: keeps every batch submitted."""

    def __init__(self) -> None:
        self.batches: list[list[Reading]] = []

    async def submit(self, readings: Sequence[Reading]) -> None:
        self.batches.append(list(readings))

    def of(self, device_id: str, quantity: str | None = None) -> list[Reading]:
        return [
            r
            for batch in self.batches
            for r in batch
            if r.device_id == device_id and (quantity is None or r.quantity == quantity)
        ]

    def polls(self, device_id: str) -> int:
        """Polls of a device: every poll yields its first point once (submits may carry several polls)."""
        readings = self.of(device_id)
        return sum(1 for r in readings if r.quantity == readings[0].quantity) if readings else 0


def number(reading: Reading) -> float:
    assert isinstance(reading.value, int | float)
    return float(reading.value)


def config(buses: list[dict[str, Any]], **policy: Any) -> ModbusSourceConfig:
    return ModbusSourceConfig.model_validate({"buses": buses, **FAST, **policy})


def device(device_id: str, unit: int, profile: str, interval: float = 0.05, **extra: Any) -> dict[str, Any]:
    return {"id": device_id, "unit": unit, "profile": profile, "poll_interval_s": interval, **extra}


@contextlib.asynccontextmanager
async def running(bus: ModbusBusSource) -> AsyncIterator[tuple[CollectingSink, SourceHealth]]:
    sink, health = CollectingSink(), SourceHealth(bus.name)
    task = asyncio.create_task(bus.run(sink, health))
    try:
        yield sink, health
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked serial ports from socat; the simulator takes one end, the gateway the other."""
    left, right = tmp_path / "sim-tty", tmp_path / "gw-tty"
    proc = subprocess.Popen(
        ["socat", "-d", "-d", f"pty,raw,echo=0,link={left}", f"pty,raw,echo=0,link={right}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (left.exists() and right.exists()):
            assert proc.poll() is None, "socat exited"
            assert time.monotonic() < deadline, "socat made no PTY pair"
            time.sleep(0.01)
        yield os.fspath(left), os.fspath(right)
    finally:
        proc.terminate()
        proc.wait(timeout=5)


async def test_tcp_bus_polls_every_device_at_its_interval() -> None:
    async with ModbusSimulator({1: "sdm120", 2: "water-level", 3: "water-meter"}) as sim:
        cfg = config(
            [
                {
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "devices": [
                        device("em-1", 1, "sdm120"),
                        device("wl-2", 2, "water-level"),
                        device("wm-3", 3, "water-meter"),
                    ],
                }
            ],
            submit_linger_ms=0,  # one submission per poll, so that each batch below is one device's poll
        )
        [bus] = build_modbus_buses(cfg)
        started = time.time()
        async with running(bus) as (sink, health):
            await until(lambda: all(sink.polls(d) >= 3 for d in ("em-1", "wl-2", "wm-3")))
            assert health.state == "ok"
        for batch in sink.batches:
            assert len({r.device_id for r in batch}) == 1
            profile = {"em-1": "sdm120", "wl-2": "water-level", "wm-3": "water-meter"}[batch[0].device_id]
            assert [r.quantity for r in batch] == [p.name for p in _in_read_order(profile)]
        voltage = sink.of("em-1", "voltage")[-1]
        assert voltage.unit == "V"
        assert 95 < number(voltage) < 107
        assert started <= voltage.observed_at <= time.time()
        assert voltage.clock is ClockQuality.SYNCED
        assert voltage.priority is Priority.TELEMETRY
        energy = [r.value for r in sink.of("em-1", "import_energy")]
        assert energy == sorted(energy)
        assert sink.of("em-1", "import_energy")[0].unit == "Wh"
        assert sink.of("wm-3", "valve_open")[-1].value is True
        assert sink.of("wm-3", "total_volume")[-1].unit == "m3"
        assert health.readings == sum(len(b) for b in sink.batches)
        assert health.detail["devices"]["wl-2"]["state"] == "ok"
        assert health.detail["bus"]["connected"] is False  # stopped


def _in_read_order(profile_name: str) -> list[Any]:
    from gateway.sources.modbus_plan import plan_reads

    profile = load_profile(profile_name)
    blocks = plan_reads(profile.points, max_gap=profile.max_gap, max_registers=profile.max_read)
    return [point for block in blocks for point, _ in block.points]


async def test_alarm_thresholds_make_alarm_readings() -> None:
    async with ModbusSimulator({2: "water-level", 3: "water-meter"}) as sim:
        sim.pin(2, "water_level", 3.5)
        sim.pin(3, "empty_pipe", True)
        cfg = config(
            [
                {
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "devices": [device("wl-2", 2, "water-level"), device("wm-3", 3, "water-meter")],
                }
            ]
        )
        [bus] = build_modbus_buses(cfg)
        async with running(bus) as (sink, _):
            await until(lambda: bool(sink.of("wl-2", "water_level")) and bool(sink.of("wm-3", "empty_pipe")))
        level = sink.of("wl-2", "water_level")[0]
        assert (level.value, level.unit, level.priority) == (3.5, "m", Priority.ALARM)
        assert sink.of("wl-2", "status")[0].priority is Priority.TELEMETRY
        assert sink.of("wm-3", "empty_pipe")[0].priority is Priority.ALARM


async def test_reads_are_coalesced_into_blocks_counted_at_the_simulator() -> None:
    subset = ["voltage_l1", "voltage_l2", "voltage_l3", "total_active_power"]
    async with ModbusSimulator({1: "sdm120", 2: "sdm630"}) as sim:
        cfg = config(
            [
                {
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "devices": [device("em-1", 1, "sdm120"), device("em-2", 2, "sdm630", points=subset)],
                }
            ]
        )
        [bus] = build_modbus_buses(cfg)
        async with running(bus) as (sink, health):
            await until(lambda: sink.polls("em-1") >= 5 and sink.polls("em-2") >= 5)
        devices = health.detail["devices"]
        assert (devices["em-1"]["reads_per_poll"], devices["em-2"]["reads_per_poll"]) == (3, 2)
        for unit, device_id, per_poll in ((1, "em-1", 3), (2, "em-2", 2)):
            polls = devices[device_id]["polls"]
            assert polls * per_poll <= sim.request_count(unit, 4) < (polls + 1) * per_poll
            assert sim.request_count(unit) == sim.request_count(unit, 4)
        assert {r.quantity for r in sink.of("em-2")} == set(subset)


async def test_failing_devices_back_off_and_are_quarantined_while_the_bus_keeps_polling() -> None:
    async with ModbusSimulator({1: "bench-seq", 2: "bench-seq", 3: "bench-seq"}) as sim:
        sim.inject(2, Fault.no_answer())
        sim.inject(3, Fault.exception(0x02))
        cfg = config(
            [
                {
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "timeout_s": 0.1,
                    "devices": [
                        device("b-1", 1, "bench-seq"),
                        device("b-2", 2, "bench-seq"),
                        device("b-3", 3, "bench-seq"),
                    ],
                }
            ],
            quarantine_after=3,
        )
        [bus] = build_modbus_buses(cfg)
        async with running(bus) as (sink, health):
            await asyncio.sleep(2.0)
            devices = health.detail["devices"]
            assert devices["b-2"]["state"] == "quarantined"
            assert devices["b-3"]["state"] == "quarantined"
            assert "no answer" in devices["b-2"]["last_error"]
            assert "exception 0x02" in devices["b-3"]["last_error"]
            assert health.state == "degraded"
            assert health.errors["timeout"] >= 3
            assert health.errors["exception"] >= 3
            # Backed off: without backoff each would have been asked 13-40 times in 2 s.
            assert sim.request_count(2) <= 8
            assert sim.request_count(3) <= 9
            # The healthy device kept its rate (ideal 40 polls at 0.05 s; the timeouts cost the bus ~0.6 s).
            assert sink.polls("b-1") >= 15
            assert health.detail["bus"]["connects"] == 1
            assert not sink.of("b-2")
            assert not sink.of("b-3")
            sim.inject(2, None)
            sim.inject(3, None)
            await until(lambda: health.state == "ok", within=2.0)
            assert devices["b-2"]["state"] == devices["b-3"]["state"] == "ok"
            await until(lambda: bool(sink.of("b-2")) and bool(sink.of("b-3")), within=1.0)


async def test_late_answers_count_as_timeouts_and_never_reach_another_device() -> None:
    async with ModbusSimulator({1: "bench-seq", 2: "bench-seq"}) as sim:
        sim.inject(2, Fault.slow(0.15))
        cfg = config(
            [
                {
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "timeout_s": 0.1,
                    "devices": [device("b-1", 1, "bench-seq", 0.01), device("b-2", 2, "bench-seq", 0.01)],
                }
            ],
            backoff_initial_s=0.05,
            backoff_max_s=0.05,
        )
        [bus] = build_modbus_buses(cfg)
        async with running(bus) as (sink, health):
            await asyncio.sleep(1.0)
        assert health.errors["timeout"] >= 3
        assert not sink.of("b-2")
        seqs = [int(r.value) for r in sink.of("b-1", "seq")]
        assert len(seqs) >= 10
        assert all(b == a + 1 for a, b in itertools.pairwise(seqs))  # no answer of unit 2 slipped in


async def test_bus_reconnects_after_the_simulator_restarts() -> None:
    sim = ModbusSimulator({1: "sdm120"})
    await sim.start()
    try:
        [bus] = build_modbus_buses(
            config([{"host": "127.0.0.1", "port": sim.port, "devices": [device("em-1", 1, "sdm120")]}])
        )
        async with running(bus) as (sink, health):
            await until(lambda: sink.polls("em-1") >= 2)
            await sim.stop()
            await until(lambda: health.errors["connection"] >= 2 and health.state == "degraded")
            assert health.detail["bus"]["connected"] is False
            assert health.detail["devices"]["em-1"]["state"] == "ok"  # a lost link is not the device's fault
            before = sink.polls("em-1")
            await sim.start()  # same port
            await until(lambda: sink.polls("em-1") >= before + 2)
            assert health.state == "ok"
            assert health.detail["bus"]["connects"] == 2
    finally:
        await sim.stop()


async def test_write_point_reads_back_and_refuses_what_it_must() -> None:
    async with ModbusSimulator({2: "water-level", 3: "water-meter"}) as sim:
        cfg = config(
            [
                {
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "devices": [device("wl-2", 2, "water-level"), device("wm-3", 3, "water-meter")],
                }
            ]
        )
        sources = build_modbus_source(cfg)
        bus = find_bus(sources, "wm-3")
        assert isinstance(bus, ModbusBusSource)
        with pytest.raises(ModbusWriteError) as refused:
            await bus.write_point("wl-2", "mode", 1)
        assert refused.value.reason == "not_running"
        async with running(bus) as (sink, health):
            await until(lambda: health.state == "ok")
            assert await bus.write_point("wl-2", "mode", 1) == 1
            assert sim.value(2, "mode") == 1
            assert await bus.write_point("wl-2", "flood_threshold", 3.25) == 3.25
            assert sim.value(2, "flood_threshold") == 3.25
            assert await bus.write_point("wm-3", "valve_open", False) is False
            assert sim.value(3, "valve_open") is False
            polls = sink.polls("wm-3")
            await until(lambda: sink.polls("wm-3") > polls)
            assert sink.of("wm-3", "valve_open")[-1].value is False
            for args, reason in [
                (("wl-2", "water_level", 1.0), "not_writable"),
                (("wl-2", "mode", 5), "bad_value"),
                (("wl-2", "sample_interval", 0), "bad_value"),
                (("wl-2", "sample_interval", 70000), "bad_value"),
                (("wm-3", "valve_open", 2), "bad_value"),
                (("wl-2", "nope", 1), "unknown_point"),
                (("wl-9", "mode", 1), "unknown_device"),
            ]:
                with pytest.raises(ModbusWriteError) as caught:
                    await bus.write_point(*args)
                assert caught.value.reason == reason, args
            sim.inject(2, Fault.exception(0x04))
            with pytest.raises(ModbusWriteError, match="exception 0x04") as failed:
                await bus.write_point("wl-2", "mode", 0)
            assert failed.value.reason == "exception"
            assert health.errors["exception"] >= 1
            assert sim.value(2, "mode") == 1
        with pytest.raises(ModbusWriteError, match="no Modbus bus has a device 'xx-1'"):
            find_bus(sources, "xx-1")


async def test_rtu_bus_over_a_socat_pty_pair(pty_pair: tuple[str, str]) -> None:
    sim_end, gateway_end = pty_pair
    async with ModbusSimulator({1: "sdm120", 2: "water-level"}, serial=sim_end, baudrate=115200) as sim:
        cfg = config(
            [
                {
                    "port": gateway_end,
                    "baudrate": 115200,
                    "timeout_s": 0.15,
                    "name": "line-1",
                    "devices": [device("em-1", 1, "sdm120"), device("wl-2", 2, "water-level")],
                }
            ]
        )
        [bus] = build_modbus_buses(cfg)
        assert bus.name == "modbus:line-1"
        async with running(bus) as (sink, health):
            await until(lambda: sink.polls("em-1") >= 3 and sink.polls("wl-2") >= 3)
            assert 95 < number(sink.of("em-1", "voltage")[-1]) < 107
            assert await bus.write_point("wl-2", "mode", 1) == 1
            sim.inject(2, Fault.bad_crc())
            await until(lambda: health.errors["crc"] >= 3, within=3.0)
            assert health.detail["devices"]["wl-2"]["state"] == "quarantined"
            assert "bad CRC" in health.detail["devices"]["wl-2"]["last_error"]
            during = sink.polls("em-1")
            await until(lambda: sink.polls("em-1") >= during + 3)  # the rest of the line carries on
            sim.inject(2, None)
            await until(lambda: health.state == "ok", within=2.0)
        assert health.detail["bus"]["transport"] == "rtu"
        assert sink.of("wl-2", "mode")[-1].value == 1


async def test_one_tcp_bus_reads_thousands_of_readings_per_second_without_loss() -> None:
    units = range(1, 21)
    async with ModbusSimulator(dict.fromkeys(units, "bench-seq")) as sim:
        cfg = config(
            [
                {
                    "host": "127.0.0.1",
                    "port": sim.port,
                    "devices": [device(f"b-{u}", u, "bench-seq", 0.001) for u in units],
                }
            ]
        )
        [bus] = build_modbus_buses(cfg)
        async with running(bus) as (sink, health):
            await until(lambda: len(sink.batches) >= 20)
            start_count, start = sum(len(b) for b in sink.batches), time.perf_counter()
            await asyncio.sleep(1.0)
            rate = (sum(len(b) for b in sink.batches) - start_count) / (time.perf_counter() - start)
        assert rate >= 5000, f"{rate:.0f} readings/s"
        assert not health.errors
        for u in units:
            seqs = [int(r.value) for r in sink.of(f"b-{u}", "seq")]
            assert all(b == (a + 1) % 65536 for a, b in itertools.pairwise(seqs)), f"b-{u} lost a poll"


class TimedSink(CollectingSink):
    """A :class:`CollectingSink` that also notes when each batch was submitted (wall clock, as ``observed_at``)."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []

    async def submit(self, readings: Sequence[Reading]) -> None:
        self.at.append(time.time())
        await super().submit(readings)


async def run_timed(bus: ModbusBusSource, done: Callable[[TimedSink], bool]) -> TimedSink:
    sink, health = TimedSink(), SourceHealth(bus.name)
    task = asyncio.create_task(bus.run(sink, health))
    try:
        await until(lambda: done(sink))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert health.readings == sum(len(b) for b in sink.batches)
    return sink


def busy_bus(port: int, linger_ms: float, extra: list[dict[str, Any]] | None = None) -> ModbusBusSource:
    devices = [device(f"b-{u}", u, "bench-seq", 0.001) for u in range(1, 21)] + (extra or [])
    [bus] = build_modbus_buses(
        config([{"host": "127.0.0.1", "port": port, "devices": devices}], submit_linger_ms=linger_ms)
    )
    return bus


@pytest.mark.parametrize("linger_ms", [0, 20])
async def test_a_busy_bus_submits_its_polls_in_batches_only_when_lingering(linger_ms: float) -> None:
    async with ModbusSimulator(dict.fromkeys(range(1, 21), "bench-seq")) as sim:
        sink = await run_timed(busy_bus(sim.port, linger_ms), lambda s: sum(map(len, s.batches)) >= 40 * 500)
    polls = sum(len(batch) for batch in sink.batches) / 20  # bench-seq: 20 registers a poll
    per_submission = polls / len(sink.batches)
    if linger_ms:
        assert per_submission >= 5, f"{per_submission:.1f} polls a submission"
        assert max(len(batch) for batch in sink.batches) <= 500 + 20  # a batch stops once it holds 500 readings
    else:
        assert per_submission < 2, f"{per_submission:.1f} polls a submission"  # this sink never holds the bus up
    for u in range(1, 21):
        seqs = [int(r.value) for r in sink.of(f"b-{u}", "seq")]
        assert all(b == (a + 1) % 65536 for a, b in itertools.pairwise(seqs)), f"b-{u} lost a poll"


async def test_an_unhurried_bus_submits_each_poll_at_once_despite_the_linger() -> None:
    async with ModbusSimulator({2: "water-level"}) as sim:
        cfg = config(
            [{"host": "127.0.0.1", "port": sim.port, "devices": [device("wl-2", 2, "water-level", 0.3)]}],
            submit_linger_ms=150,
        )
        [bus] = build_modbus_buses(cfg)
        sink = await run_timed(bus, lambda s: len(s.batches) >= 4)
    waits = [at - batch[-1].observed_at for at, batch in zip(sink.at, sink.batches, strict=True)]
    assert max(waits) < 0.075, waits  # lingering would have held each poll for the whole 150 ms


async def test_an_alarm_is_submitted_at_once_from_a_busy_lingering_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.sources.modbus.SUBMIT_BATCH_READINGS", 10**9)  # only the linger or an alarm ends one
    units: dict[int, str] = {**dict.fromkeys(range(1, 21), "bench-seq"), 21: "water-level"}
    async with ModbusSimulator(units) as sim:
        sim.pin(21, "water_level", 3.5)  # above the profile's alarm_above (3.0): every poll of wl-21 is an alarm
        bus = busy_bus(sim.port, 400, [device("wl-21", 21, "water-level", 0.05, points=["water_level"])])
        sink = await run_timed(bus, lambda s: len(s.of("wl-21")) >= 5)
    alarms = [
        at - reading.observed_at
        for at, batch in zip(sink.at, sink.batches, strict=True)
        for reading in batch
        if reading.priority is Priority.ALARM
    ]
    assert len(alarms) >= 5
    assert max(alarms) < 0.2, alarms  # a lingering batch would have held them for up to 400 ms
    assert any(at - batch[0].observed_at > 0.01 for at, batch in zip(sink.at, sink.batches, strict=True))


async def test_polls_held_by_the_linger_reach_the_sink_when_the_bus_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.sources.modbus.SUBMIT_BATCH_READINGS", 10**9)  # hold everything for the linger
    async with ModbusSimulator(dict.fromkeys(range(1, 21), "bench-seq")) as sim:
        bus = busy_bus(sim.port, 1000)
        async with running(bus) as (sink, health):
            await until(lambda: health.detail.get("bus", {}).get("requests", 0) >= 100)
            assert not sink.batches  # all held by the linger
        requests = health.detail["bus"]["requests"]
    assert sum(len(batch) for batch in sink.batches) == 20 * requests  # every poll made, none lost on the stop
    assert health.readings == 20 * requests


class ClosedSink(CollectingSink):
    """An intake that has closed already (the gateway is past draining): it refuses every submission."""

    async def submit(self, readings: Sequence[Reading]) -> None:
        raise IntakeClosedError("the gateway is shutting down: readings are no longer accepted")


async def test_a_bus_stopped_after_the_intake_closed_stops_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.sources.modbus.SUBMIT_BATCH_READINGS", 10**9)  # hold everything for the linger
    async with ModbusSimulator(dict.fromkeys(range(1, 21), "bench-seq")) as sim:
        bus = busy_bus(sim.port, 1000)
        health = SourceHealth(bus.name)
        task = asyncio.create_task(bus.run(ClosedSink(), health))
        await until(lambda: health.detail.get("bus", {}).get("requests", 0) >= 20)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done
    assert task.cancelled()  # the refused hand-over is logged, not raised in place of the stop
    assert health.readings == 0


def test_build_gives_one_source_per_bus_named_by_endpoint_or_name() -> None:
    cfg = config(
        [
            {"host": "127.0.0.1", "devices": [device("em-1", 1, "sdm120")]},
            {"port": "/dev/ttyUSB0", "name": "line-2", "devices": [device("wl-1", 1, "water-level")]},
        ]
    )
    sources = build_modbus_source(cfg)
    assert [s.name for s in sources] == ["modbus:127.0.0.1:502", "modbus:line-2"]
    assert find_bus(sources, "wl-1") is sources[1]


def _bus(**extra: Any) -> dict[str, Any]:
    return {"host": "10.0.0.5", "devices": [device("em-1", 1, "sdm120")], **extra}


@pytest.mark.parametrize(
    ("doc", "where", "message"),
    [
        ({"buses": [_bus(devices=[device("EM-1", 1, "sdm120")])]}, "id", "invalid id 'EM-1': use 1-63 lowercase"),
        ({"buses": [_bus(devices=[device("em-1", 0, "sdm120")])]}, "unit", "greater than or equal to 1"),
        ({"buses": [_bus(devices=[device("em-1", 248, "sdm120")])]}, "unit", "less than or equal to 247"),
        ({"buses": [_bus(devices=[device("em-1", 1, "sdm999")])]}, "profile", "no Modbus profile 'sdm999'; use one of"),
        (
            {"buses": [_bus(devices=[device("em-1", 1, "sdm120", points=["voltage", "volts"])])]},
            "devices.0",
            "'volts' is not a point of profile 'sdm120'; use some of voltage",
        ),
        (
            {"buses": [_bus(devices=[device("em-1", 1, "sdm120"), device("em-2", 1, "sdm630")])]},
            "buses.0.tcp",
            "'em-1' and 'em-2' both use unit 1 on one bus; give each device its own unit id",
        ),
        (
            {"buses": [_bus(), _bus(host="10.0.0.6")]},
            "",
            "device id 'em-1' is configured twice",
        ),
        ({"buses": [{"devices": [device("em-1", 1, "sdm120")]}]}, "buses.0", "a bus needs host (Modbus TCP) or port"),
        ({"buses": [{"port": "/dev/ttyUSB0", "baud": 9600, "devices": []}]}, "baud", "Extra inputs are not permitted"),
        (
            {"buses": [{"port": "/dev/ttyUSB0", "parity": "X", "devices": []}]},
            "parity",
            "Input should be 'N', 'E' or 'O'",
        ),
        ({"buses": [_bus(timeout_s=0)]}, "timeout_s", "greater than 0"),
        (
            {"buses": [_bus()], "backoff_initial_s": 5, "backoff_max_s": 1},
            "",
            "backoff_max_s is below backoff_initial_s",
        ),
        ({"buses": []}, "buses", "at least 1 item"),
        ({"buses": [_bus()], "poll": 1}, "poll", "Extra inputs are not permitted"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(doc: dict[str, Any], where: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ModbusSourceConfig.model_validate(doc)
    errors = [(".".join(str(part) for part in e["loc"]), e["msg"]) for e in caught.value.errors()]
    assert any(loc.endswith(where) and message in msg for loc, msg in errors), errors


async def test_twin_changes_poll_interval_and_alarm_thresholds_live() -> None:
    async with ModbusSimulator({2: "water-level"}) as sim:
        [bus] = build_modbus_buses(
            config([{"host": "127.0.0.1", "port": sim.port, "devices": [device("wl-0002", 2, "water-level", 5.0)]}])
        )
        async with running(bus) as (sink, _health):
            await until(lambda: sink.polls("wl-0002") >= 1)
            assert sink.polls("wl-0002") == 1, "a 5 s interval: one poll so far"
            level = number(sink.of("wl-0002", "water_level")[-1])
            results = bus.reconfigure(
                {
                    "poll_interval_s": {"wl-0002": 0.05},
                    "thresholds": {"wl-0002": {"water_level": {"above": level - 10, "below": None}}},
                    "colour": "red",
                }
            )
            assert results["poll_interval_s"] == "applied"
            assert results["thresholds"] == "applied"
            assert results["colour"].startswith("rejected: not a live setting")
            await until(lambda: sink.polls("wl-0002") >= 4, within=2)  # not after the old 5 s interval
            assert sink.of("wl-0002", "water_level")[-1].priority is Priority.ALARM
            bad = bus.reconfigure({"poll_interval_s": {"wl-9999": 1}, "thresholds": {"wl-0002": {"nope": {}}}})
            assert bad["poll_interval_s"].startswith("rejected: no device wl-9999")
            assert bad["thresholds"].startswith("rejected:")
