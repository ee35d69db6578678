"""The gateway as a real process (``kakehashi gateway run``): config errors, kill -9 mid-backlog, clean SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import subprocess
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.collector import Collector
from kakehashi import wire
from kakehashi.mqtt import TlsIdentity
from tests.conftest import Fleet
from tests.fleet import KAKEHASHI, RunningBroker, free_port, start_broker

GW = "gw-test-0001"


def write_config(path: Path, port: int, ident: TlsIdentity, *, rate: float, limit: int, budget_mb: float = 64) -> Path:
    path.write_text(
        f"""
[gateway]
id = "{GW}"
data_dir = "data"

[uplink]
host = "127.0.0.1"
port = {port}
ca_file = "{ident.ca_file}"
cert_file = "{ident.cert_file}"
key_file = "{ident.key_file}"
heartbeat_s = 5

[outbox]
budget_mb = {budget_mb}
max_readings_per_message = 100

[[sources.synthetic]]
devices = ["sim-0001", "sim-0002"]
rate_per_s = {rate}
batch = 50
limit = {limit}
"""
    )
    return path


def accepted(data_dir: Path) -> int:
    """Readings the gateway has accepted so far (0 while its outbox is still being created)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{data_dir / 'outbox.db'}?mode=ro", uri=True)) as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'accepted_readings'").fetchone()
    except sqlite3.OperationalError:  # no tables yet
        return 0
    return int(row[0]) if row else 0


def gateway(config: Path, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``kakehashi gateway run``; its log goes to the file ``log`` if given (read it when a test fails)."""
    command = [*KAKEHASHI, "gateway", "run", "--config", str(config)]
    if log is None:
        return subprocess.Popen(command, stderr=subprocess.PIPE)
    with log.open("ab") as err:  # the child has its own copy of the descriptor
        return subprocess.Popen(command, stderr=err)


async def until(predicate, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def collecting(broker: RunningBroker, ident: TlsIdentity) -> AsyncIterator[Collector]:
    collector = Collector(broker.endpoint, ident, "collector-proc")
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(collector.run(stop))
    async with asyncio.timeout(10):
        await collector.subscribed.wait()
    try:
        yield collector
    finally:
        stop.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_config_error_is_one_line_naming_the_key(tmp_path: Path, fleet: Fleet) -> None:
    config = write_config(tmp_path / "gateway.toml", 8883, fleet.gw1, rate=10, limit=10)
    config.write_text(config.read_text().replace("port = 8883", "port = 70000"))
    result = subprocess.run([*KAKEHASHI, "gateway", "run", "--config", str(config)], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert result.returncode == 2
    assert len(lines) == 1
    assert "uplink.port" in lines[0]
    assert "8883" in lines[0], "the fix is suggested"


async def test_kill_9_mid_backlog_then_restart_loses_nothing(fleet: Fleet, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "gateway.toml", port, fleet.gw1, rate=10_000, limit=30_000)
    data = tmp_path / "data"
    # The cloud side's persistent session exists before the gateway can reach the broker, as the agent's does in a
    # deployment: the broker keeps what arrives while the collector reconnects (else the first publishes go nowhere).
    broker = start_broker(fleet.ca.path, tmp_path / "broker", port=port)
    first: subprocess.Popen[bytes] | None = None
    try:
        async with collecting(broker, fleet.agent) as collector:
            broker.stop()  # the uplink is down: everything piles up in the outbox
            first = gateway(config, tmp_path / "first.log")
            await until(lambda: data.joinpath("outbox.db").exists() and accepted(data) >= 8_000, 30, "a backlog")
            broker = start_broker(fleet.ca.path, tmp_path / "broker", port=port)
            await until(lambda: collector.readings > 0, 60, "the replay to begin")
            first.send_signal(signal.SIGKILL)  # mid-backlog, publishes in flight
            first.wait()
            in_outbox = accepted(data)
            assert collector.readings < in_outbox, "killed while a backlog was still waiting"
            config.write_text(config.read_text().replace("limit = 30000", "limit = 500"))
            second = gateway(config, tmp_path / "second.log")
            try:
                await until(lambda: collector.readings >= in_outbox + 500, 60, "everything after the restart")
                await asyncio.sleep(0.5)
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(30) == 0
            seqs = collector.seqs(GW)
            assert sorted(seqs) == list(range(1, len(seqs) + 1)), "dense sequence numbers: nothing lost"
            assert collector.readings == in_outbox + 500 == accepted(data), "every accepted reading, once"
    finally:
        broker.stop()
        if first is not None and first.poll() is None:
            first.kill()
            first.wait()


async def test_sigterm_stops_cleanly_with_offline_status(fleet: Fleet, broker: RunningBroker, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.toml", broker.endpoint.port, fleet.gw1, rate=2_000, limit=100_000)
    async with collecting(broker, fleet.agent) as collector:
        process = gateway(config)
        await until(lambda: collector.readings > 1_000, 30, "readings flowing")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert process.stderr is not None
        assert b"stopped cleanly" in process.stderr.read()
        await asyncio.sleep(0.5)
        last = wire.decode_status(collector.statuses[-1])
        assert (last.state, last.reason) == (wire.StatusState.OFFLINE, wire.StatusReason.SHUTDOWN)
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "outbox.db")) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        left = con.execute("SELECT COALESCE(SUM(readings), 0) FROM outbox").fetchone()[0]
    assert collector.readings + left == accepted(tmp_path / "data"), "delivered + still stored = accepted"


def test_missing_certificate_file_is_one_line_at_start(tmp_path: Path, fleet: Fleet) -> None:
    missing = TlsIdentity(fleet.gw1.ca_file, tmp_path / "nope.crt", fleet.gw1.key_file)
    config = write_config(tmp_path / "gateway.toml", 8883, missing, rate=10, limit=10)
    result = subprocess.run([*KAKEHASHI, "gateway", "run", "--config", str(config)], capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert result.returncode == 2
    assert lines == [
        f"error: certificate {tmp_path / 'nope.crt'} does not exist: check the path or re-run provisioning"
    ]


def test_invalid_gateway_id_names_the_file_and_key(tmp_path: Path, fleet: Fleet) -> None:
    from gateway.config import parse_config
    from kakehashi.errors import ConfigError

    doc = tomllib.loads(write_config(tmp_path / "gateway.toml", 8883, fleet.gw1, rate=10, limit=10).read_text())
    doc["gateway"]["id"] = "GW_Bad"
    with pytest.raises(ConfigError, match=r"gateway\.toml: gateway\.id: .*invalid id 'GW_Bad'"):
        parse_config(doc, tmp_path / "gateway.toml")
    doc["gateway"]["id"] = "gw-ok"
    doc["sources"]["synthetic"][0]["devices"] = ["Sim 1"]
    with pytest.raises(ConfigError, match=r"sources\.synthetic\[0\]\.devices\[0\]: .*invalid id"):
        parse_config(doc, tmp_path / "gateway.toml")
