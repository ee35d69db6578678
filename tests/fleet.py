"""Test helpers for a fleet on this machine: identities made the way devices make them, and a real broker.

Identities follow the production path: the key is generated on the "device" (here a temp directory), only the CSR
goes to the PKI. The broker is started through the real ``kakehashi broker run`` command on an OS-chosen port.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from cloud_agent.pki.authority import CertificateAuthority
from kakehashi import keys
from kakehashi.identity import Role
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity

KAKEHASHI = [sys.executable, "-m", "kakehashi"]


def make_identity(
    ca: CertificateAuthority,
    role: Role,
    identity: str,
    directory: Path,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> TlsIdentity:
    """Make a key "on the device" in ``directory``, have ``ca`` issue a certificate from its CSR, return the files."""
    directory.mkdir(parents=True, exist_ok=True)
    key = keys.generate_private_key()
    key_path = directory / f"{identity}.key"
    keys.write_private_key(key_path, key)
    record = ca.issue(keys.make_csr(key, identity), role, identity, not_before=not_before, not_after=not_after)
    cert_path = directory / f"{identity}.crt"
    cert_path.write_bytes(Path(record.certificate_path).read_bytes())
    return TlsIdentity(ca_file=ca.trust_bundle_path, cert_file=cert_path, key_file=key_path)


def free_port() -> int:
    """A TCP port the OS says is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningBroker:
    """A ``kakehashi broker run`` child process and how to reach it."""

    process: subprocess.Popen[bytes]
    endpoint: BrokerEndpoint
    rundir: Path
    pki_dir: Path
    output: Path

    def state(self) -> dict[str, object]:
        return dict(orjson.loads((self.rundir / "broker.json").read_bytes()))

    def reloads(self) -> int:
        value = self.state()["reloads"]
        assert isinstance(value, int)
        return value

    def reload(self) -> subprocess.CompletedProcess[str]:
        """Run ``kakehashi broker reload`` and wait until the broker has applied it."""
        result = subprocess.run(
            [*KAKEHASHI, "broker", "reload", "--dir", str(self.rundir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        time.sleep(0.3)  # Mosquitto applies SIGHUP on its next loop iteration.
        return result

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_text(self) -> str:
        return self.output.read_text(errors="replace")


def start_broker(
    pki_dir: Path, rundir: Path, *, port: int | None = None, attempts: int = 3, ready_timeout: float = 20.0
) -> RunningBroker:
    """Start ``kakehashi broker run`` (on ``port``, or a free one) and wait for its ready line."""
    last_error = ""
    fixed = port
    for _ in range(attempts if fixed is None else 1):
        port = fixed or free_port()
        output = rundir.parent / f"{rundir.name}-{port}.out"
        with output.open("wb") as sink:
            process = subprocess.Popen(
                [
                    *KAKEHASHI,
                    "--log-level",
                    "INFO",
                    "broker",
                    "run",
                    "--pki",
                    str(pki_dir),
                    "--dir",
                    str(rundir),
                    "--port",
                    str(port),
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and process.poll() is None:
            if b"broker ready on" in output.read_bytes():
                return RunningBroker(process, BrokerEndpoint("127.0.0.1", port), rundir, pki_dir, output)
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
        last_error = output.read_text(errors="replace")
        if "already in use" not in last_error:
            break
    raise RuntimeError(f"broker did not start: {last_error}")


class Collector:
    """The cloud side of a test: a service identity subscribed to all uplinks with a persistent session, which
    reconnects across broker restarts and deduplicates readings messages by (gateway, seq) like the agent will."""

    def __init__(self, endpoint: BrokerEndpoint, identity: TlsIdentity, client_id: str = "collector") -> None:
        self.endpoint = endpoint
        self.identity = identity
        self.client_id = client_id
        self.first_arrivals: list[tuple[str, int]] = []
        self.seen: set[tuple[str, int]] = set()
        self.duplicates = 0
        self.readings = 0
        self.by_channel: dict[str, int] = {}
        self.payloads: dict[tuple[str, int], bytes] = {}
        self.statuses: list[bytes] = []
        self.subscribed = asyncio.Event()

    def seqs(self, gateway: str) -> list[int]:
        return [seq for gw, seq in self.first_arrivals if gw == gateway]

    async def run(self, stop: asyncio.Event) -> None:
        from kakehashi import wire
        from kakehashi.mqtt import make_client

        while not stop.is_set():
            try:
                client = make_client(
                    self.endpoint, self.identity, client_id=self.client_id, clean_start=False,
                    session_expiry_s=3600, timeout=5.0,
                )  # fmt: skip
                async with client:
                    for topic in wire.uplink_subscriptions(None):
                        await client.subscribe(topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        payload = bytes(message.payload)  # type: ignore[arg-type]
                        gateway, channel = wire.parse_topic(str(message.topic))
                        if channel is wire.Channel.STATUS:
                            self.statuses.append(payload)
                            continue
                        seq = wire.decode_uplink(channel, payload).seq
                        key = (gateway, seq)
                        if key in self.seen:
                            self.duplicates += 1
                            continue
                        self.seen.add(key)
                        self.first_arrivals.append(key)
                        self.payloads[key] = payload
                        self.by_channel[channel.value] = self.by_channel.get(channel.value, 0) + 1
                        if channel is wire.Channel.READINGS:
                            self.readings += len(wire.decode_readings(payload).readings)
            except Exception:  # broker restarting: try again shortly
                self.subscribed.clear()
                await asyncio.sleep(0.3)
