"""The side-by-side run behind ``python bench/vs_thingsboard.py``: same scenario, one gateway after the other.

Scenario: one pymodbus TCP server (``python -m hw.modbus.simulator``, its own process) with 20 units of the
``bench-seq`` profile (20 holding registers; register 0 counts the reads of its unit), one Mosquitto for both
gateways, each gateway polling as fast as it keeps up with one block read per device poll. Each gateway gets a
freshly started simulator and runs alone (they would otherwise compete for the machine's two cores); with two or
more CPUs the gateway under test is pinned to CPU 0 and everything else (simulator, Mosquitto, the measuring
subscribers) to CPU 1.

Measured per gateway, at the subscriber: readings delivered per second over the steady window (from the first
delivery for ``seconds``), the per-poll sequence values (a poll is lost when a value between the first and the last
of its device never arrives), peak resident memory of the gateway's process tree, and its CPU use in the window.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bench.harness import enroll
from bench.tb_support import ours, thingsboard
from bench.tb_support.broker import SharedBroker, start_shared_broker
from bench.tb_support.procs import (
    SimulatorProcess,
    cpu_seconds,
    log_tail,
    machine_busy_seconds,
    peak_rss_mb,
    start_simulator,
    stop_process,
)
from bench.tb_support.tally import SequenceTally
from cloud_agent.pki.authority import CertificateAuthority
from kakehashi.identity import Role
from kakehashi.mqtt import TlsIdentity

TARGET_RATIO = 10.0
DEVICES = 20
REGISTERS = 20
DEFAULT_SECONDS = 60.0
FIRST_DELIVERY_TIMEOUT_S = 120.0
DRAIN_S = 2.0
TB_POLL_LADDER_MS = (1, 50, 75, 100, 125, 150, 200, 300, 500, 1000)
"""pollPeriods tried for thingsboard-gateway, fastest first; the first without loss is measured."""
DEFAULT_TB_TRIAL_SECONDS = 10.0
REPO = Path(__file__).resolve().parents[2]
DEFAULT_TB_VENV = REPO / ".bench" / "tb-venv"
GATEWAYS = ("kakehashi", "thingsboard")

Progress = Callable[[str], None]


class RunError(RuntimeError):
    """One gateway's run could not be measured (it did not start, deliver, or stay up)."""


async def _measure(
    name: str, process: subprocess.Popen[bytes], tally: SequenceTally, seconds: float, log: Path, progress: Progress,
    sim_pid: int, broker_pid: int,
) -> dict[str, Any]:  # fmt: skip
    """Wait for the first delivery, then count for ``seconds``; the process is left running."""
    started = time.monotonic()
    while tally.readings == 0:
        if process.poll() is not None:
            raise RunError(f"{name} exited with status {process.returncode} before delivering ({log_tail(log)})")
        if time.monotonic() - started > FIRST_DELIVERY_TIMEOUT_S:
            raise RunError(f"{name} delivered nothing within {FIRST_DELIVERY_TIMEOUT_S:.0f} s ({log_tail(log)})")
        await asyncio.sleep(0.005)
    t0, readings0, polls0 = time.monotonic(), tally.readings, tally.polls
    cpu0, sim_cpu0 = cpu_seconds(process.pid), cpu_seconds(sim_pid)
    ours0, busy0 = cpu_seconds(broker_pid) + cpu_seconds(os.getpid(), tree=False), machine_busy_seconds()
    progress(f"{name}: first delivery after {t0 - started:.1f} s; measuring {seconds:g} s")
    end = t0 + seconds
    while (now := time.monotonic()) < end:
        if process.poll() is not None:
            raise RunError(f"{name} exited with status {process.returncode} while measured ({log_tail(log)})")
        await asyncio.sleep(min(1.0, end - now))
    t1, readings1, polls1 = time.monotonic(), tally.readings, tally.polls
    cpu1, sim_cpu1 = cpu_seconds(process.pid), cpu_seconds(sim_pid)
    ours1, busy1 = cpu_seconds(broker_pid) + cpu_seconds(os.getpid(), tree=False), machine_busy_seconds()
    window = t1 - t0
    return {
        "readings_per_s": round((readings1 - readings0) / window),
        "delivered": readings1 - readings0,
        "polls_per_s": round((polls1 - polls0) / window, 1),
        "window_s": round(window, 3),
        "first_delivery_after_start_s": round(t0 - started, 2),
        "rss_mb": peak_rss_mb(process.pid),
        "cpu_percent": round(100 * (cpu1 - cpu0) / window, 1),
        "simulator_cpu_percent": round(100 * (sim_cpu1 - sim_cpu0) / window, 1),
        # CPU the rest of the machine used meanwhile (not this benchmark's processes): high values mean the figures
        # were taken on a busy machine and should be re-measured.
        "other_processes_cpu_percent": round(
            100 * ((busy1 - busy0) - (cpu1 - cpu0) - (sim_cpu1 - sim_cpu0) - (ours1 - ours0)) / window, 1
        ),
    }


def _loss(tally: SequenceTally, devices: int) -> dict[str, Any]:
    """Loss over everything that arrived (window and drain): holes in each device's sequence values."""
    return {
        "lost_polls": tally.lost_polls,
        "lost_by_device": tally.lost_by_device(),
        "first_holes": tally.first_holes(),
        "duplicate_polls": tally.duplicate_polls,
        "polls_received": tally.polls,
        "devices_delivering": len(tally.devices),
        "zero_loss": tally.lost_polls == 0 and len(tally.devices) == devices,
    }


async def _background(
    coro_run: Callable[[asyncio.Event], Coroutine[Any, Any, None]], ready: asyncio.Event
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """Start a measuring subscriber and wait (15 s at most) until it has subscribed."""
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(coro_run(stop))
    waiter = asyncio.get_running_loop().create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        task.cancel()
        raise RunError("the measuring subscriber could not subscribe within 15 s")
    return stop, task


async def _finish(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def run_kakehashi(
    root: Path, identities: tuple[TlsIdentity, TlsIdentity], broker: SharedBroker, seconds: float,
    cpus: tuple[int | None, int | None], progress: Progress,
) -> dict[str, Any]:  # fmt: skip
    gw_cpu, rest_cpu = cpus
    gw_ident, agent = identities
    work = root / "kakehashi"
    work.mkdir()
    counter = ours.ReadingsCounter(broker.tls, agent)
    stop, task = await _background(counter.run, counter.subscribed)
    sim: SimulatorProcess | None = None
    process: subprocess.Popen[bytes] | None = None
    log = work / "gateway.log"
    try:
        sim = await start_simulator(DEVICES, work / "sim", seconds + 600, rest_cpu)
        config = work / "gateway.toml"
        config.write_text(ours.gateway_config(work / "data", broker.tls, gw_ident, sim.host, sim.port, DEVICES))
        progress(f"kakehashi: gateway → modbus tcp {sim.host}:{sim.port} ({DEVICES} devices) → mosquitto (mTLS)")
        process = ours.start_gateway(config, log, gw_cpu)
        result = await _measure(
            "kakehashi", process, counter.tally, seconds, log, progress, sim.process.pid, broker.process.pid
        )
        stop_process(process, signal.SIGTERM, 30)
        await asyncio.sleep(DRAIN_S)
    finally:
        if process is not None:
            stop_process(process, signal.SIGTERM, 30)
        if sim is not None:
            sim.stop()
        await _finish(stop, task)
    result.update(_loss(counter.tally, DEVICES))
    result["duplicate_messages"] = counter.duplicate_messages
    result["setup"] = (
        "kakehashi gateway run: [sources.modbus] one TCP bus, 20 devices, profile bench-seq (one 20-register read "
        f"per poll), poll_interval_s {ours.POLL_INTERVAL_S}; outbox SQLite WAL synchronous=FULL; MQTT 5 QoS 1 "
        "over mutual TLS with the broker's ACL"
    )
    return result


async def _thingsboard_once(
    work: Path, venv: Path, versions: dict[str, str], broker: SharedBroker, seconds: float,
    cpus: tuple[int | None, int | None], poll_ms: int, log_level: str, progress: Progress,
) -> dict[str, Any]:  # fmt: skip
    """One run of thingsboard-gateway at ``poll_ms`` against a fresh simulator: measured window, then loss."""
    gw_cpu, rest_cpu = cpus
    server = thingsboard.ServerStandIn(broker.plain)
    stop, task = await _background(server.run, server.subscribed)
    sim: SimulatorProcess | None = None
    process: subprocess.Popen[bytes] | None = None
    log = work / "thingsboard-gateway.log"
    try:
        sim = await start_simulator(DEVICES, work / "sim", seconds + 600, rest_cpu)
        config_dir = thingsboard.write_config_dir(
            work / "config", broker.plain, sim.host, sim.port, DEVICES, REGISTERS, poll_ms, log_level
        )
        progress(
            f"thingsboard: thingsboard-gateway {versions.get('thingsboard-gateway')} → modbus tcp "
            f"{sim.host}:{sim.port} ({DEVICES} devices, pollPeriod {poll_ms} ms) → mosquitto (plain listener)"
        )
        process = thingsboard.start_gateway(venv, config_dir, work, gw_cpu)
        result = await _measure(
            "thingsboard", process, server.tally, seconds, log, progress, sim.process.pid, broker.process.pid
        )
        stop_process(process, signal.SIGINT, 20)
        await asyncio.sleep(DRAIN_S)
    finally:
        if process is not None:
            stop_process(process, signal.SIGINT, 20)
        if sim is not None:
            sim.stop()
        await _finish(stop, task)
    result.update(_loss(server.tally, DEVICES))
    result["poll_period_ms"] = poll_ms
    result["session_limits_answered"] = server.session_limits_answered
    result["unanswered_rpcs"] = server.other_rpcs
    return result


async def run_thingsboard(
    root: Path, venv: Path, versions: dict[str, str], broker: SharedBroker, seconds: float,
    cpus: tuple[int | None, int | None], poll_ms: int | None, trial_seconds: float, log_level: str,
    progress: Progress,
) -> dict[str, Any]:  # fmt: skip
    """thingsboard-gateway at ``poll_ms``, or (``None``) at the shortest pollPeriod of :data:`TB_POLL_LADDER_MS` at
    which a ``trial_seconds`` trial loses no poll: "as fast as it keeps up" without loss."""
    calibration: list[dict[str, Any]] = []
    if poll_ms is None:
        for candidate in TB_POLL_LADDER_MS:
            progress(f"thingsboard: calibration trial, pollPeriod {candidate} ms for {trial_seconds:g} s")
            trial = await _thingsboard_once(
                root / "thingsboard" / f"trial-{candidate}ms", venv, versions, broker, trial_seconds, cpus,
                candidate, log_level, lambda _msg: None,
            )  # fmt: skip
            calibration.append({k: trial[k] for k in ("poll_period_ms", "readings_per_s", "lost_polls", "rss_mb")})
            poll_ms = candidate
            if trial["zero_loss"]:
                break
        assert poll_ms is not None
        progress(f"thingsboard: shortest pollPeriod without loss: {poll_ms} ms")
    result = await _thingsboard_once(
        root / "thingsboard" / "measured", venv, versions, broker, seconds, cpus, poll_ms, log_level, progress
    )
    result["calibration"] = calibration
    result["version"] = versions.get("thingsboard-gateway")
    result["pymodbus"] = versions.get("pymodbus")
    result["setup"] = (
        f"thingsboard-gateway {versions.get('thingsboard-gateway')} (own venv, pymodbus {versions.get('pymodbus')}): "
        'Modbus connector, 20 TCP slaves on one connection, one timeseries key per slave over address "0-19" '
        f"(maxRegistersPerRequest 20: one 20-register read per poll), pollPeriod {poll_ms} ms "
        f"({'the shortest without loss in the calibration trials' if calibration else 'as given'}), memory storage, "
        "report strategy ON_RECEIVED, QoS 1, statistics/remote configuration/remote shell off, log level "
        f"{log_level}"
    )
    return result


def _broker_lifetime(seconds: float, only: str | None, tb_poll_ms: int | None, trial_seconds: float) -> float:
    """An upper bound of how long the benchmark can need the broker (it is stopped after that in any case)."""
    one_run = FIRST_DELIVERY_TIMEOUT_S + 60
    total = 300.0
    if only in (None, "kakehashi"):
        total += seconds + one_run
    if only in (None, "thingsboard"):
        total += seconds + one_run
        if tb_poll_ms is None:
            total += len(TB_POLL_LADDER_MS) * (trial_seconds + one_run)
    return total


def _cpus(pin: bool) -> tuple[int | None, int | None]:
    """(CPU of the gateway under test, CPU of everything else), or no pinning on one CPU or when asked."""
    if not pin or (os.cpu_count() or 1) < 2:
        return None, None
    return 0, 1


async def run_async(
    *, seconds: float = DEFAULT_SECONDS, only: str | None = None, tb_venv: Path = DEFAULT_TB_VENV,
    tb_poll_ms: int | None = None, tb_trial_seconds: float = DEFAULT_TB_TRIAL_SECONDS, tb_log_level: str = "WARNING",
    pin: bool = True,
    progress: Progress | None = None, keep_dir: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    say: Progress = progress or (lambda _msg: None)
    cpus = _cpus(pin)
    if cpus[1] is not None:
        os.sched_setaffinity(0, {cpus[1]})  # this process (subscribers) and the children it starts: the other CPU
    result: dict[str, Any] = {
        "seconds": seconds,
        "scenario": {
            "devices": DEVICES,
            "registers_per_device": REGISTERS,
            "modbus_server": "one pymodbus TCP server: python -m hw.modbus.simulator, bench-seq profile, own process",
            "reading": "one register value delivered to the broker subscriber (20 per poll)",
        },
        "machine": {"cpus": os.cpu_count(), "gateway_cpu": cpus[0], "others_cpu": cpus[1]},
    }
    with tempfile.TemporaryDirectory(prefix="kakehashi-vs-tb-") as tmp:
        root = keep_dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority.init(root / "pki")
        # Enrolled before the broker starts, so that both are in the ACL it reads at start.
        identities = (
            enroll(ca, Role.GATEWAY, ours.GATEWAY_ID, root / "devices" / ours.GATEWAY_ID),
            enroll(ca, Role.SERVICE, "bench-vs-tb-agent", root / "devices" / "bench-vs-tb-agent"),
        )
        tb_versions: dict[str, str] | None = None
        if only in (None, "thingsboard"):
            try:
                tb_versions = await asyncio.to_thread(thingsboard.ensure_venv, tb_venv, say)
            except thingsboard.TbInstallError as exc:
                result["thingsboard"] = {"error": f"thingsboard-gateway could not be installed: {exc}"}
        say("one mosquitto: the fleet's mutual-TLS listener (kakehashi) + a plain loopback listener (thingsboard)")
        lifetime = _broker_lifetime(seconds, only, tb_poll_ms, tb_trial_seconds)
        broker = await start_shared_broker(root / "pki", root / "broker", lifetime)
        result["broker"] = {"mosquitto": broker.version, "tls_port": broker.tls.port, "plain_port": broker.plain.port}
        try:
            if only in (None, "kakehashi"):
                try:
                    result["kakehashi"] = await run_kakehashi(root, identities, broker, seconds, cpus, say)
                except (RuntimeError, OSError) as exc:
                    result["kakehashi"] = {"error": str(exc)}
            if tb_versions is not None:
                try:
                    result["thingsboard"] = await run_thingsboard(
                        root, tb_venv, tb_versions, broker, seconds, cpus, tb_poll_ms, tb_trial_seconds,
                        tb_log_level, say,
                    )  # fmt: skip
                except (RuntimeError, OSError) as exc:
                    result["thingsboard"] = {"error": str(exc)}
        finally:
            broker.stop()
    ours_rate = result.get("kakehashi", {}).get("readings_per_s")
    theirs_rate = result.get("thingsboard", {}).get("readings_per_s")
    result["ratio"] = round(ours_rate / theirs_rate, 1) if ours_rate and theirs_rate else None
    result["target_ratio"] = TARGET_RATIO
    result["met"] = bool(
        result["ratio"] is not None
        and result["ratio"] >= TARGET_RATIO
        and result.get("kakehashi", {}).get("zero_loss", False)
    )
    return result


def run(**kwargs: Any) -> dict[str, Any]:
    """Synchronous entry (``kakehashi bench`` style): see :func:`run_async` for the keywords."""
    return asyncio.run(run_async(**kwargs))


def _table(result: dict[str, Any]) -> str:
    rows = [("", "readings/s", "delivered", "lost polls", "rss MB", "cpu %")]
    for name in GATEWAYS:
        doc = result.get(name)
        if doc is None:
            continue
        if "error" in doc:
            rows.append((name, "error: " + doc["error"], "", "", "", ""))
            continue
        rows.append((
            name, str(doc["readings_per_s"]), str(doc["delivered"]), str(doc["lost_polls"]),
            str(doc["rss_mb"]), str(doc["cpu_percent"]),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    target = f"target ≥ {result['target_ratio']:g}×"
    if result["ratio"] is None:
        lines.append(f"no ratio ({target}): both gateways must be measured; {result['seconds']:g} s each")
    else:
        verdict = "met" if result["met"] else "not met"
        lines.append(f"ratio {result['ratio']} ({target}): {verdict}; {result['seconds']:g} s each")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/vs_thingsboard.py",
        description="Delivered Modbus readings/s: this gateway vs thingsboard-gateway, same scenario, one run.",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="measured window per gateway")
    parser.add_argument("--only", choices=GATEWAYS, help="measure one gateway only (the tests use kakehashi)")
    parser.add_argument("--tb-venv", type=Path, default=DEFAULT_TB_VENV, help="thingsboard-gateway's own venv")
    parser.add_argument(
        "--tb-poll-ms",
        type=int,
        help="thingsboard-gateway pollPeriod in ms (default: the shortest without loss in short calibration trials)",
    )
    parser.add_argument(
        "--tb-trial-seconds", type=float, default=DEFAULT_TB_TRIAL_SECONDS, help="length of each calibration trial"
    )
    parser.add_argument("--tb-log-level", default="WARNING", help="thingsboard-gateway log level")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the gateway under test to CPU 0")
    parser.add_argument("--keep-dir", type=Path, help="keep configs and logs here instead of a temporary directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command: 0 when our gateway was measured (whatever the verdict), 1 when it could not be."""
    args = _parser().parse_args(argv)
    if args.seconds <= 0:
        print("error: --seconds must be above 0", file=sys.stderr)
        return 2

    def progress(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    result = run(
        seconds=args.seconds, only=args.only, tb_venv=args.tb_venv, tb_poll_ms=args.tb_poll_ms,
        tb_trial_seconds=args.tb_trial_seconds, tb_log_level=args.tb_log_level, pin=not args.no_pin,
        progress=progress, keep_dir=args.keep_dir,
    )  # fmt: skip
    print(json.dumps(result, indent=2, sort_keys=False) if args.json else _table(result))
    ours_doc = result.get("kakehashi")
    return 1 if ours_doc is not None and "error" in ours_doc else 0
