"""``kakehashi bench gateway``: readings/s from a simulated source through the outbox to the broker with PUBACK.

The gateway runs as its own process (``kakehashi gateway run``) pinned to one core, with a synthetic source producing
as fast as the gateway accepts; Mosquitto and the measuring subscriber share the other core. Two phases:

1. sustained: N readings with the broker up; rate = readings acknowledged end to end per second, peak RSS;
2. replay: the broker is down while M readings are accepted into the outbox; then it comes back and the backlog is
   measured draining (first to last arrival).

Loss is checked by sequence numbers (dense per gateway) and by reading counts; duplicates are counted after the
subscriber's dedupe by (gateway, seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.collector import Collector
from bench.harness import BenchFleet, bench_fleet, free_port, peak_rss_mb, pin
from kakehashi.identity import Role
from kakehashi.mqtt import TlsIdentity

TARGET_READINGS_PER_S = 20_000
TARGET_REPLAY_PER_S = 50_000
TARGET_RSS_MB = 64.0


def _config(gateway_id: str, data_dir: Path, port: int, ident: TlsIdentity, limit: int) -> str:
    return f"""
[gateway]
id = "{gateway_id}"
data_dir = "{data_dir}"

[uplink]
host = "127.0.0.1"
port = {port}
ca_file = "{ident.ca_file}"
cert_file = "{ident.cert_file}"
key_file = "{ident.key_file}"
heartbeat_s = 30
window = 64

[outbox]
budget_mb = 1024
max_readings_per_message = 1000

[[sources.synthetic]]
name = "bench"
devices = ["sim-0001", "sim-0002", "sim-0003", "sim-0004"]
rate_per_s = 1000000
batch = 1000
limit = {limit}
"""


def _start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "kakehashi", "gateway", "run", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    pin(process.pid, 0)
    return process


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.terminate()
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _outbox_readings(db: Path) -> int:
    """Readings accepted into a gateway's outbox so far (read-only peek from outside the process)."""
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'accepted_readings'").fetchone()
            return int(row[0]) if row else 0
    except sqlite3.Error:
        return 0


async def _wait(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


def _dense(seqs: list[int]) -> bool:
    return sorted(seqs) == list(range(1, len(seqs) + 1))


async def _phase_sustained(fleet: BenchFleet, agent: TlsIdentity, readings: int, progress: Any) -> dict[str, Any]:
    gw = "gw-bench-0001"
    ident = fleet.identity(Role.GATEWAY, gw)  # enrolled before the broker starts: in its ACL from the first second
    broker = await fleet.start_broker()
    collector = Collector(broker.endpoint, agent, "bench-collector-1", keep_payloads=False)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(collector.run(stop))
    async with asyncio.timeout(10):
        await collector.subscribed.wait()
    config = fleet.root / f"{gw}.toml"
    config.write_text(_config(gw, fleet.root / gw, broker.endpoint.port, ident, readings))
    progress(f"sustained: {readings:,} readings through gateway → outbox → broker")
    process = _start_gateway(config, fleet.root / f"{gw}.log")
    rss = None
    db = fleet.root / gw / "outbox.db"
    try:
        started = time.monotonic()
        await _wait(lambda: collector.readings > 0, 30)
        first = time.monotonic()
        first_latency = first - started
        accepted_at_first = _outbox_readings(db)
        await _wait(lambda: collector.readings >= readings, 120)
        last = collector.last_arrival
        rss = peak_rss_mb(process.pid)
        elapsed = max(last - (first - 0.0), 1e-6) if last else time.monotonic() - first
    finally:
        _stop(process)
        stop.set()
        task.cancel()
        await fleet.stop_broker(broker)
    received = collector.readings
    return {
        "readings": readings,
        "received": received,
        "elapsed_s": round(elapsed, 3),
        "readings_per_s": round(received / elapsed),
        "rss_mb": rss,
        "lost": readings - received,
        "duplicates": collector.duplicates,
        "seq_dense": _dense(collector.seqs(gw)),
        "first_arrival_after_start_s": round(first_latency, 3),
        "accepted_when_first_arrived": accepted_at_first,
    }


async def _phase_replay(fleet: BenchFleet, agent: TlsIdentity, readings: int, progress: Any) -> dict[str, Any]:
    gw = "gw-bench-0002"
    ident = fleet.identity(Role.GATEWAY, gw)
    port = free_port()
    broker = await fleet.start_broker(port, name="broker-replay")
    collector = Collector(broker.endpoint, agent, "bench-collector-2", keep_payloads=False)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(collector.run(stop))
    async with asyncio.timeout(10):
        await collector.subscribed.wait()
    await fleet.stop_broker(broker)  # the collector's session (and its subscription) persists in the broker
    config = fleet.root / f"{gw}.toml"
    config.write_text(_config(gw, fleet.root / gw, port, ident, readings))
    progress(f"replay: {readings:,} readings buffered while the broker is down")
    process = _start_gateway(config, fleet.root / f"{gw}.log")
    db = fleet.root / gw / "outbox.db"
    rss = None
    try:
        await _wait(lambda: _outbox_readings(db) >= readings, 120)
        buffered = _outbox_readings(db)
        progress("replay: broker back, draining the backlog")
        broker = await fleet.start_broker(port, name="broker-replay")
        await _wait(lambda: collector.readings > 0, 60)
        first = time.monotonic()
        await _wait(lambda: collector.readings >= readings, 120)
        last = collector.last_arrival or time.monotonic()
        rss = peak_rss_mb(process.pid)
        elapsed = max(last - first, 1e-6)
    finally:
        _stop(process)
        stop.set()
        task.cancel()
        with contextlib.suppress(Exception):
            await fleet.stop_broker(broker)
    received = collector.readings
    return {
        "readings": readings,
        "buffered": buffered,
        "received": received,
        "elapsed_s": round(elapsed, 3),
        "replay_per_s": round(received / elapsed),
        "rss_mb": rss,
        "lost": readings - received,
        "duplicates": collector.duplicates,
        "seq_dense": _dense(collector.seqs(gw)),
    }


async def run_async(readings: int, replay_readings: int, progress: Any) -> dict[str, Any]:
    async with bench_fleet() as fleet:
        agent = fleet.identity(Role.SERVICE, "bench-agent")
        sustained = await _phase_sustained(fleet, agent, readings, progress)
        replay = await _phase_replay(fleet, agent, replay_readings, progress)
    rss = max(v for v in (sustained["rss_mb"], replay["rss_mb"]) if v is not None) if (
        sustained["rss_mb"] or replay["rss_mb"]) else None  # fmt: skip
    lost = sustained["lost"] + replay["lost"]
    result = {
        "readings_per_s": sustained["readings_per_s"],
        "rss_mb": rss,
        "replay_per_s": replay["replay_per_s"],
        "lost": lost,
        "duplicates": sustained["duplicates"] + replay["duplicates"],
        "targets": {
            "readings_per_s": TARGET_READINGS_PER_S,
            "replay_per_s": TARGET_REPLAY_PER_S,
            "rss_mb": TARGET_RSS_MB,
            "lost": 0,
        },
        "sustained": sustained,
        "replay": replay,
        "machine": {"cpus": os.cpu_count(), "gateway_pinned_to_one_core": (os.cpu_count() or 1) > 1},
    }
    result["met"] = bool(
        result["readings_per_s"] >= TARGET_READINGS_PER_S
        and result["replay_per_s"] >= TARGET_REPLAY_PER_S
        and (rss is not None and rss <= TARGET_RSS_MB)
        and lost == 0
        and sustained["seq_dense"]
        and replay["seq_dense"]
    )
    return result


def run(*, readings: int = 400_000, replay_readings: int = 300_000, progress: Any = None) -> dict[str, Any]:
    return asyncio.run(run_async(readings, replay_readings, progress or (lambda _msg: None)))


QUICK = {"readings": 40_000, "replay_readings": 30_000}
