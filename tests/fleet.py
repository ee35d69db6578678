"""Test helpers for a fleet on this machine: identities made the way devices make them, and a real broker.

Identities follow the production path: the key is generated on the "device" (here a temp directory), only the CSR
goes to the PKI. The broker is started through the real ``kakehashi broker run`` command on an OS-chosen port.
"""

from __future__ import annotations

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

from bench.collector import Collector
from cloud_agent.pki.authority import CertificateAuthority
from kakehashi import keys
from kakehashi.identity import Role
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity

__all__ = ["Collector", "RunningBroker", "free_port", "make_identity", "start_broker", "start_local_broker"]

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


def _spawn_until_ready(args: list[str], output: Path, ready_timeout: float) -> subprocess.Popen[bytes] | None:
    """Run ``kakehashi <args>`` with its output in ``output``; the process once it printed its ready line, else
    None (it was killed; its output says why)."""
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [*KAKEHASHI, "--log-level", "INFO", *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline and process.poll() is None:
        if b"broker ready on" in output.read_bytes():
            return process
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()
    return None


def start_broker(
    pki_dir: Path,
    rundir: Path,
    *,
    port: int | None = None,
    attempts: int = 3,
    ready_timeout: float = 20.0,
    extra: tuple[str, ...] = (),
) -> RunningBroker:
    """Start ``kakehashi broker run`` (on ``port``, or a free one) and wait for its ready line."""
    last_error = ""
    fixed = port
    for _ in range(attempts if fixed is None else 1):
        port = fixed or free_port()
        output = rundir.parent / f"{rundir.name}-{port}.out"
        args = ["broker", "run", "--pki", str(pki_dir), "--dir", str(rundir), "--port", str(port), *extra]
        process = _spawn_until_ready(args, output, ready_timeout)
        if process is not None:
            return RunningBroker(process, BrokerEndpoint("127.0.0.1", port), rundir, pki_dir, output)
        last_error = output.read_text(errors="replace")
        if "already in use" not in last_error:
            break
    raise RuntimeError(f"broker did not start: {last_error}")


def start_local_broker(config: Path, output: Path, *, ready_timeout: float = 20.0) -> RunningBroker:
    """Start ``kakehashi broker run --config gateway.toml`` (a gateway's local broker from its enrollment material,
    its address and run directory from ``[local_broker]``) and wait for its ready line."""
    from gateway.config import load_config

    section = load_config(config).local_broker
    assert section is not None, "the config has no [local_broker]"
    process = _spawn_until_ready(["broker", "run", "--config", str(config)], output, ready_timeout)
    if process is None:
        raise RuntimeError(f"local broker did not start: {output.read_text(errors='replace')}")
    return RunningBroker(process, BrokerEndpoint(section.host, section.port), section.run_dir, Path(), output)
