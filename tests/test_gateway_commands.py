"""Commands on the gateway, at most once: the executor with its real journal and outbox, on real Modbus buses.

Each test runs pymodbus simulators on loopback (a water meter with a valve coil and a water-level gauge on one bus,
a second gauge on a second bus), the gateway's Modbus bus sources polling them, and the command executor; the
acknowledgements are read back from the outbox exactly as the uplink would publish them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.commands.actuator import Outcome
from gateway.commands.assemble import JOURNAL_FILE, actuators_for
from gateway.commands.executor import CommandExecutor
from gateway.commands.journal import CommandJournal, JournalStore
from gateway.model import Reading
from gateway.outbox import Outbox
from gateway.sources.base import SourceHealth
from gateway.sources.modbus import ModbusBusSource, build_modbus_buses
from gateway.sources.modbus_config import ModbusDeviceConfig, ModbusSourceConfig, ModbusTcpBusConfig
from hw.modbus.simulator import Fault, ModbusSimulator
from kakehashi import wire

BUDGET = 16 * 1024 * 1024
WRITE_CODES = (5, 6, 15, 16)
ROOT = Path(__file__).resolve().parents[1]


def command(
    cid: str,
    device: str,
    name: str,
    params: wire.JSONObject | None = None,
    *,
    deadline_in: float = 10.0,
    key: str | None = None,
    precondition: int | None = None,
) -> wire.CommandMessage:
    now = time.time()
    return wire.CommandMessage(
        command_id=cid,
        device_id=device,
        name=name,
        params=params or {},
        deadline=now + deadline_in,
        idempotency_key=key or f"key-{cid}",
        sent_at=now,
        precondition=None if precondition is None else wire.Precondition(precondition),
    )


async def all_acks(outbox: Outbox) -> list[wire.CommandAck]:
    messages = await outbox.fetch_after(0, 10_000)
    return [ack for m in messages if m.channel is wire.Channel.ACKS for ack in wire.decode_acks(m.payload).acks]


async def acks_of(outbox: Outbox, cid: str) -> list[wire.CommandAck]:
    return [ack for ack in await all_acks(outbox) if ack.command_id == cid]


async def final(outbox: Outbox, cid: str) -> wire.CommandAck:
    finals = [ack for ack in await acks_of(outbox, cid) if ack.status is not wire.AckStatus.DELIVERED]
    assert finals, f"no final ack for {cid}"
    return finals[-1]


def writes(sim: ModbusSimulator, unit: int) -> int:
    return sum(sim.request_count(unit, code) for code in WRITE_CODES)


class ListSink:
    """Takes the buses' readings (the commands are under test here, not the intake)."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def submit(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)


def bus_config(sims: list[tuple[ModbusSimulator, list[tuple[str, int, str]]]], timeout_s: float) -> ModbusSourceConfig:
    return ModbusSourceConfig(
        buses=tuple(
            ModbusTcpBusConfig(
                name=f"bus{index}",
                host="127.0.0.1",
                port=sim.port,
                timeout_s=timeout_s,
                devices=tuple(
                    ModbusDeviceConfig(id=dev, unit=unit, profile=profile, poll_interval_s=3600)
                    for dev, unit, profile in devices
                ),
            )
            for index, (sim, devices) in enumerate(sims)
        )
    )


@asynccontextmanager
async def running_buses(config: ModbusSourceConfig) -> AsyncIterator[list[ModbusBusSource]]:
    buses = build_modbus_buses(config)
    healths = [SourceHealth(bus.name) for bus in buses]
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(bus.run(ListSink(), h)) for bus, h in zip(buses, healths, strict=True)]
    try:
        for _ in range(200):  # connected, and every device polled once (so polls no longer touch the fault set later)
            if all(h.state == "ok" and all(d["polls"] for d in h.detail["devices"].values()) for h in healths):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"buses not up: {[h.to_json() for h in healths]}")
        yield buses
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Rig:
    bus_a: ModbusSimulator  # unit 1 water meter wm-0001, unit 2 water-level gauge wl-0001
    bus_b: ModbusSimulator  # unit 1 water-level gauge wl-0002
    outbox: Outbox
    executor: CommandExecutor
    twin: list[int] = field(default_factory=lambda: [0])


@asynccontextmanager
async def rig(tmp_path: Path, timeout_s: float = 1.0) -> AsyncIterator[Rig]:
    async with (
        ModbusSimulator({1: "water-meter", 2: "water-level"}) as bus_a,
        ModbusSimulator({1: "water-level"}) as bus_b,
    ):
        config = bus_config(
            [
                (bus_a, [("wm-0001", 1, "water-meter"), ("wl-0001", 2, "water-level")]),
                (bus_b, [("wl-0002", 1, "water-level")]),
            ],
            timeout_s,
        )
        async with running_buses(config) as buses:
            outbox = await Outbox.open(tmp_path / "outbox.db", BUDGET)
            journal = await CommandJournal.open(tmp_path / JOURNAL_FILE)
            twin = [0]
            executor = CommandExecutor(journal, outbox, actuators_for(buses, ["tag-0001"]), lambda: twin[0])
            await executor.start()
            try:
                yield Rig(bus_a, bus_b, outbox, executor, twin)
            finally:
                await executor.close()
                await outbox.close()


async def test_valve_close_and_open_succeed_with_the_value_read_back(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.executor.submit(command("c-close", "wm-0001", "close"))
        await r.executor.idle()
        assert r.bus_a.value(1, "valve_open") is False
        await r.executor.submit(command("c-open", "wm-0001", "open"))
        await r.executor.idle()
        assert r.bus_a.value(1, "valve_open") is True
        acks = await acks_of(r.outbox, "c-open")
        assert [a.status for a in acks] == [wire.AckStatus.DELIVERED, wire.AckStatus.SUCCEEDED]
        assert acks[1].result == {"point": "valve_open", "written": True, "read_back": True}
        assert (await final(r.outbox, "c-close")).result == {
            "point": "valve_open",
            "written": False,
            "read_back": False,
        }
        assert writes(r.bus_a, 1) == 2
        stats = r.executor.stats.to_json()
        assert stats["executed"] == 2
        assert stats["succeeded"] == 2
        assert stats["running"] == 0


async def test_the_same_command_delivered_again_runs_once(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.bus_a.inject(1, Fault.slow(0.2))
        first = command("c-dup", "wm-0001", "close", key="close-once")
        await r.executor.submit(first)
        await r.executor.submit(first)  # redelivered while it runs: ignored, its final ack follows
        await r.executor.idle()
        await r.executor.submit(first)  # redelivered after it finished: the recorded ack again
        again = command("c-dup-2", "wm-0001", "close", key="close-once")  # an agent resend under a new id
        await r.executor.submit(again)
        await r.executor.idle()
        assert writes(r.bus_a, 1) == 1
        statuses = [a.status for a in await acks_of(r.outbox, "c-dup")]
        assert statuses == [wire.AckStatus.DELIVERED, wire.AckStatus.SUCCEEDED, wire.AckStatus.SUCCEEDED]
        acks = await acks_of(r.outbox, "c-dup")
        assert acks[1] == acks[2], "a duplicate is answered with the recorded ack, unchanged"
        resend = await final(r.outbox, "c-dup-2")
        assert resend.status is wire.AckStatus.SUCCEEDED
        assert resend.result is not None
        assert resend.result["duplicate_of"] == "c-dup"
        assert r.executor.stats.duplicates == 3
        assert r.executor.stats.executed == 1


async def test_an_expired_command_never_executes(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.executor.submit(command("c-late", "wm-0001", "close", deadline_in=-1.0))
        acks = await acks_of(r.outbox, "c-late")
        assert [a.status for a in acks] == [wire.AckStatus.EXPIRED]
        assert acks[0].reason is not None
        assert acks[0].reason.startswith("deadline_passed:")
        assert writes(r.bus_a, 1) == 0
        assert r.bus_a.value(1, "valve_open") is True


async def test_a_deadline_passing_while_queued_behind_another_command_expires_it(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.bus_a.inject(2, Fault.slow(0.3))  # the write and its read-back take 0.6 s
        await r.executor.submit(command("c-first", "wl-0001", "set_mode", {"value": "flood"}))
        await r.executor.submit(command("c-queued", "wl-0001", "set_sample_interval", {"value": 5}, deadline_in=0.3))
        await r.executor.idle()
        assert (await final(r.outbox, "c-first")).status is wire.AckStatus.SUCCEEDED
        queued = await acks_of(r.outbox, "c-queued")
        assert [a.status for a in queued] == [wire.AckStatus.DELIVERED, wire.AckStatus.EXPIRED]
        assert queued[1].reason is not None
        assert "queued behind another command" in queued[1].reason
        assert writes(r.bus_a, 2) == 1
        assert r.bus_a.value(2, "mode") == 1
        assert r.bus_a.value(2, "sample_interval") == 60


async def test_a_device_answering_an_exception_fails_the_command_with_it(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.bus_a.inject(1, Fault.exception(0x04))
        await r.executor.submit(command("c-exc", "wm-0001", "close"))
        await r.executor.idle()
        ack = await final(r.outbox, "c-exc")
        assert ack.status is wire.AckStatus.FAILED
        assert ack.reason is not None
        assert ack.reason.startswith("exception:")
        assert "0x04" in ack.reason
        assert r.executor.stats.reasons["exception"] == 1


async def test_bad_parameters_and_unknown_targets_fail_without_a_write(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        cases = {
            "c-range": (command("c-range", "wl-0001", "set_sample_interval", {"value": 99999}), "bad_value"),
            "c-choice": (command("c-choice", "wl-0001", "set_mode", {"value": "turbo"}), "bad_value"),
            "c-noarg": (command("c-noarg", "wl-0001", "set_flood_threshold"), "bad_value"),
            "c-extra": (command("c-extra", "wm-0001", "open", {"speed": 2}), "bad_value"),
            "c-name": (command("c-name", "wm-0001", "explode"), "unknown_command"),
            "c-who": (command("c-who", "xx-0404", "open"), "unknown_device"),
            "c-lpwa": (command("c-lpwa", "tag-0001", "beep"), "lpwa_downlink_unsupported"),
        }
        for cmd, _ in cases.values():
            await r.executor.submit(cmd)
        await r.executor.idle()
        for cid, (_, reason) in cases.items():
            ack = await final(r.outbox, cid)
            assert ack.status is wire.AckStatus.FAILED, cid
            assert ack.reason is not None
            assert ack.reason.startswith(f"{reason}:"), (cid, ack.reason)
        on_sight = [cid for cid in cases if len(await acks_of(r.outbox, cid)) == 1]
        assert sorted(on_sight) == sorted(set(cases) - {"c-range"}), "refused on arrival: one final ack, no delivered"
        assert writes(r.bus_a, 1) == writes(r.bus_a, 2) == 0
        assert r.executor.stats.refused == len(cases)
        assert r.executor.stats.executed == 0


async def test_a_precondition_that_no_longer_holds_fails_the_command(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.twin[0] = 3
        await r.executor.submit(command("c-stale", "wm-0001", "close", precondition=2))
        ack = await final(r.outbox, "c-stale")
        assert ack.status is wire.AckStatus.FAILED
        assert ack.reason == "precondition_failed: reported version 3, command wants 2"
        await r.executor.submit(command("c-fresh", "wm-0001", "close", precondition=3))
        await r.executor.idle()
        assert (await final(r.outbox, "c-fresh")).status is wire.AckStatus.SUCCEEDED
        assert writes(r.bus_a, 1) == 1


async def test_one_device_is_serialised_and_two_devices_run_concurrently(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.bus_a.inject(2, Fault.slow(0.25))  # each command: write + read-back = 0.5 s
        r.bus_b.inject(1, Fault.slow(0.25))
        await r.executor.submit(command("c-a1", "wl-0001", "set_mode", {"value": "flood"}))
        await r.executor.submit(command("c-a2", "wl-0001", "set_sample_interval", {"value": 10}))
        await r.executor.submit(command("c-b1", "wl-0002", "set_mode", {"value": "flood"}))
        await r.executor.idle()
        a1, a2, b1 = [await final(r.outbox, cid) for cid in ("c-a1", "c-a2", "c-b1")]
        assert all(a.status is wire.AckStatus.SUCCEEDED for a in (a1, a2, b1))
        assert a2.at - a1.at >= 0.45, "the second command on wl-0001 ran only after the first had finished"
        # Run one after another, c-b1 would finish 0.5 s after c-a1 or c-a2; alongside, it finishes with c-a1, and
        # before c-a2 (which waits for c-a1). Relative times, so a loaded machine slows all three alike.
        assert abs(b1.at - a1.at) < 0.3, "wl-0002 (another bus) ran alongside wl-0001"
        assert b1.at < a2.at, "wl-0002's command did not wait behind wl-0001's queue"


async def test_stopping_mid_command_acknowledges_it_interrupted(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.bus_a.inject(1, Fault.slow(0.5))
        await r.executor.submit(command("c-stop", "wm-0001", "close"))
        await asyncio.sleep(0.1)
        await r.executor.stop()
        ack = await final(r.outbox, "c-stop")
        assert ack.status is wire.AckStatus.FAILED
        assert ack.reason is not None
        assert ack.reason.startswith("interrupted:")


_CHILD = """
import asyncio, sys, time
from pathlib import Path
from gateway.commands.assemble import open_executor
from gateway.outbox import Outbox
from gateway.sources.base import SourceHealth
from gateway.sources.modbus import build_modbus_buses
from gateway.sources.modbus_config import ModbusSourceConfig

async def main():
    data, config_json = Path(sys.argv[1]), sys.argv[2]
    bus = build_modbus_buses(ModbusSourceConfig.model_validate_json(config_json))[0]
    health = SourceHealth(bus.name)
    class Sink:
        async def submit(self, readings):
            pass
    task = asyncio.get_running_loop().create_task(bus.run(Sink(), health))
    outbox = await Outbox.open(data / "outbox.db", 16 * 1024 * 1024)
    executor = await open_executor(data, outbox, [bus], [], lambda: 0)
    await executor.start()
    while not (health.state == "ok" and all(d["polls"] for d in health.detail["devices"].values())):
        await asyncio.sleep(0.02)
    print("ready", flush=True)
    order = data / "command.json"
    while not order.exists():
        await asyncio.sleep(0.02)
    await executor.handle(order.read_bytes())
    print("taken", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def _line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(20):
        return (await asyncio.to_thread(process.stdout.readline)).strip()


async def test_a_gateway_killed_mid_command_never_runs_it_again(tmp_path: Path) -> None:
    async with ModbusSimulator({1: "water-meter"}) as sim:
        config = bus_config([(sim, [("wm-0001", 1, "water-meter")])], timeout_s=20)
        child = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-c", _CHILD, str(tmp_path), config.model_dump_json()],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            assert await _line(child) == "ready"
            sim.inject(1, Fault.slow(30))  # the write reaches the meter, the answer never comes back in time
            cmd = command("c-cut", "wm-0001", "close", deadline_in=60)
            (tmp_path / "command.json").write_bytes(wire.encode_command(cmd))
            assert await _line(child) == "taken"
            for _ in range(250):
                if writes(sim, 1):
                    break
                await asyncio.sleep(0.02)
            assert writes(sim, 1) == 1
            child.send_signal(signal.SIGKILL)  # power cut mid-write
            await asyncio.to_thread(child.wait, 10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            assert child.stdout is not None
            child.stdout.close()
        sim.inject(1, None)
        async with running_buses(config) as buses:
            outbox = await Outbox.open(tmp_path / "outbox.db", BUDGET)
            journal = await CommandJournal.open(tmp_path / JOURNAL_FILE)
            executor = CommandExecutor(journal, outbox, actuators_for(buses, []), lambda: 0)
            try:
                await executor.start()
                await executor.submit(cmd)  # the broker redelivers it: answered from the journal
                await executor.idle()
                acks = await acks_of(outbox, "c-cut")
                assert [a.status for a in acks] == [
                    wire.AckStatus.DELIVERED,
                    wire.AckStatus.FAILED,
                    wire.AckStatus.FAILED,
                ]
                assert acks[1].reason is not None
                assert acks[1].reason.startswith("interrupted:")
                assert acks[2] == acks[1]
                assert executor.stats.interrupted == 1
                assert executor.stats.executed == 0
            finally:
                await executor.close()
                await outbox.close()
        assert writes(sim, 1) == 1, "the interrupted command was not written again"


# --- property: any interleaving of deliveries, completions and restarts runs each command at most once -----------


class Recorder:
    """An actuator that counts executions and holds each until the scenario lets it finish."""

    kind = "test"

    def __init__(self, runs: Counter[str]) -> None:
        self.runs = runs
        self.gates: dict[str, asyncio.Event] = {}
        self.released = False

    def owns(self, device_id: str) -> bool:
        return True

    def check(self, cmd: wire.CommandMessage) -> None:
        del cmd

    async def execute(self, cmd: wire.CommandMessage) -> Outcome:
        self.runs[cmd.command_id] += 1
        if not self.released:
            await self.gates.setdefault(cmd.command_id, asyncio.Event()).wait()
        return Outcome(wire.AckStatus.SUCCEEDED, result={"ran": cmd.command_id})


Op = tuple[str, int]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(0, 3)),
        st.tuples(st.just("finish"), st.integers(0, 3)),
        st.tuples(st.sampled_from(["crash", "stop"]), st.just(0)),
    ),
    max_size=16,
)


async def _scenario(directory: Path, ops: list[Op]) -> None:
    runs: Counter[str] = Counter()
    outbox = await Outbox.open(directory / "outbox.db", BUDGET)
    commands = {i: command(f"p-{i}", f"dev-{i % 2}", "go", deadline_in=600) for i in range(4)}
    abandoned: list[tuple[CommandExecutor, JournalStore]] = []

    async def boot() -> tuple[CommandExecutor, Recorder]:
        recorder = Recorder(runs)
        journal = await CommandJournal.open(directory / JOURNAL_FILE)
        executor = CommandExecutor(journal, outbox, [recorder], lambda: 0)
        await executor.start()
        return executor, recorder

    executor, recorder = await boot()
    try:
        for op, i in ops:
            if op == "deliver":
                await executor.submit(commands[i])
            elif op == "finish":
                recorder.gates.setdefault(f"p-{i}", asyncio.Event()).set()
                await asyncio.sleep(0)
                await asyncio.sleep(0.01)
            elif op == "stop":
                await executor.close()
                executor, recorder = await boot()
            else:  # crash: the old process's tasks never finish; a new one opens the same files
                abandoned.append((executor, executor._journal._store))
                executor, recorder = await boot()
        recorder.released = True
        for gate in recorder.gates.values():
            gate.set()
        await executor.idle()
        assert all(count <= 1 for count in runs.values()), runs
        delivered = {f"p-{i}" for op, i in ops if op == "deliver"}
        finals = {a.command_id for a in await all_acks(outbox) if a.status is not wire.AckStatus.DELIVERED}
        assert delivered <= finals, "every command taken on ends with a final ack (interrupted ones too)"
    finally:
        await executor.close()
        for old, _ in abandoned:
            for task in list(old._tasks):
                task.cancel()
            await asyncio.gather(*old._tasks, return_exceptions=True)
            await old._journal.close()
        await outbox.close()


@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_any_interleaving_of_duplicates_and_restarts_runs_each_command_at_most_once(ops: list[Op]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_scenario(Path(directory), ops))
