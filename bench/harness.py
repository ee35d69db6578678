"""Shared benchmark plumbing: a throw-away fleet (PKI, identities, broker) and process measurements."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_agent.pki.authority import CertificateAuthority
from kakehashi import keys
from kakehashi.broker.runner import run_broker
from kakehashi.identity import Role
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity

KAKEHASHI = (sys.executable, "-m", "kakehashi", "--log-level", "INFO")
"""The CLI as a child process, with the INFO logs benchmarks read back."""


def spawn_kakehashi(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``kakehashi <args>`` with stdout and stderr in ``log``."""
    with log.open("wb") as sink:
        return subprocess.Popen([*KAKEHASHI, *args], stdout=sink, stderr=subprocess.STDOUT)


def terminate(process: subprocess.Popen[bytes], within: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if it is still there after ``within`` seconds; returns the exit code."""
    process.terminate()
    try:
        return process.wait(within)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


async def until(predicate: Callable[[], Any], seconds: float, what: str, *, every: float = 0.1) -> None:
    """Poll ``predicate`` (plain or async) until it is true; raise saying ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark: timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(every)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agent_toml(
    name: str, ident: TlsIdentity, broker: BrokerEndpoint, db_url: str, sections: str, *, agent_keys: str = ""
) -> str:
    """An agent.toml for ``kakehashi agent run``: its id (and ``agent_keys``, more TOML lines of ``[agent]``), broker
    identity and database, then ``sections`` (TOML text: the benchmark's own ``[api]``, ``[northbound]`` ...)."""
    return f"""
[agent]
id = "{name}"
{agent_keys}
[broker]
host = "{broker.host}"
port = {broker.port}
ca_file = "{ident.ca_file}"
cert_file = "{ident.cert_file}"
key_file = "{ident.key_file}"
[database]
url = "{db_url}"
{sections}"""


def enroll(ca: CertificateAuthority, role: Role, identity: str, directory: Path) -> TlsIdentity:
    directory.mkdir(parents=True, exist_ok=True)
    key = keys.generate_private_key()
    keys.write_private_key(directory / "device.key", key)
    record = ca.issue(keys.make_csr(key, identity), role, identity)
    keys.write_public_file(directory / "device.crt", Path(record.certificate_path).read_bytes())
    return TlsIdentity(ca.trust_bundle_path, directory / "device.crt", directory / "device.key")


def peak_rss_mb(pid: int) -> float | None:
    """The high-water mark of a live process's resident memory (VmHWM), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def pin(pid: int, cpu: int) -> bool:
    """Pin a process to one CPU when the machine has more than one; returns whether it did."""
    if (os.cpu_count() or 1) < 2:
        return False
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, {cpu})
        return True
    return False


@dataclass
class BenchBroker:
    endpoint: BrokerEndpoint
    stop: asyncio.Event
    task: asyncio.Task[int]


@dataclass
class BenchFleet:
    root: Path
    ca: CertificateAuthority

    def identity(self, role: Role, identity: str) -> TlsIdentity:
        return enroll(self.ca, role, identity, self.root / "devices" / identity)

    async def start_broker(self, port: int | None = None, name: str = "broker") -> BenchBroker:
        port = port or free_port()
        ready = asyncio.Event()
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(
            run_broker(self.ca.path, self.root / name, "127.0.0.1", port, stop=stop, on_ready=lambda *_: ready.set())
        )
        waiter = asyncio.get_running_loop().create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()
        return BenchBroker(BrokerEndpoint("127.0.0.1", port), stop, task)

    @staticmethod
    async def stop_broker(broker: BenchBroker) -> None:
        broker.stop.set()
        await broker.task


@contextlib.asynccontextmanager
async def bench_fleet() -> AsyncIterator[BenchFleet]:
    with tempfile.TemporaryDirectory(prefix="kakehashi-bench-") as tmp:
        root = Path(tmp)
        yield BenchFleet(root, CertificateAuthority.init(root / "pki"))
