"""One Mosquitto for both gateways: the fleet's mutual-TLS listener plus a plain loopback listener for
thingsboard-gateway.

Our gateway keeps its normal security: the TLS listener and its ACL are the ones ``kakehashi broker`` generates
(``kakehashi.broker.runner.prepare`` lays out the server certificate, trust bundle, CRL and ACL from the PKI, and
``render_config`` writes the listener). The only change to that configuration is ``per_listener_settings true``,
with the TLS listener's ``allow_anonymous false`` and ``acl_file`` moved under it, so that a second listener on
127.0.0.1 can admit thingsboard-gateway (which speaks ThingsBoard's ``v1/...`` topics with an access token, not our
certificate identities) with its own ACL: anonymous clients there may touch only ``v1/#`` and ``v2/#``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import free_port
from bench.tb_support.procs import child_setup, log_tail, stop_process
from kakehashi.broker.config import BrokerLayout
from kakehashi.broker.runner import find_mosquitto, prepare
from kakehashi.mqtt import BrokerEndpoint

TB_TOPICS = ("v1/#", "v2/#")
"""What anonymous clients on the plain listener may publish and subscribe to (ThingsBoard's MQTT API)."""


def two_listener_config(fleet_config: str, layout: BrokerLayout, plain_port: int, plain_acl: Path) -> str:
    """Turn the fleet broker's generated ``mosquitto.conf`` into the same TLS listener plus a plain one.

    Raises ``ValueError`` if the generated configuration no longer has the lines this relies on.
    """
    lines = fleet_config.splitlines()
    required = ("per_listener_settings false", "allow_anonymous false", f"acl_file {layout.acl}")
    missing = [line for line in required if line not in lines]
    if missing:
        raise ValueError(f"the fleet broker's configuration changed shape (missing {missing}); update {__name__}")
    out: list[str] = []
    for line in lines:
        if line == "per_listener_settings false":
            out.append("per_listener_settings true")
        elif line in required[1:]:
            continue  # moved under the TLS listener below
        else:
            out.append(line)
    out += [
        "allow_anonymous false",
        f"acl_file {layout.acl}",
        "",
        "# thingsboard-gateway (benchmark peer): plain MQTT on loopback, ThingsBoard topics only",
        f"listener {plain_port} 127.0.0.1",
        "protocol mqtt",
        "allow_anonymous true",
        f"acl_file {plain_acl}",
    ]
    return "\n".join(out) + "\n"


def _user_of(config: str) -> str:
    for line in config.splitlines():
        if line.startswith("user "):
            return line.split(maxsplit=1)[1]
    return "root"


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@dataclass
class SharedBroker:
    """A running Mosquitto with the fleet TLS listener (``tls``) and the plain loopback listener (``plain``)."""

    process: subprocess.Popen[bytes]
    tls: BrokerEndpoint
    plain: BrokerEndpoint
    log: Path

    @property
    def version(self) -> str:
        for line in self.log.read_text(errors="replace").splitlines():
            if "mosquitto version" in line:
                return line.split("mosquitto version", 1)[1].split()[0]
        return "unknown"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM, 10.0)


def _spawn_mosquitto(config: Path, log: Path, lifetime_s: float) -> subprocess.Popen[bytes]:
    # Under coreutils ``timeout``: Mosquitto drops the parent-death signal when it sets its user, so ``timeout``
    # (which keeps it, and passes SIGTERM on) bounds its life even if this process is killed.
    with log.open("wb") as sink:
        return subprocess.Popen(
            ["timeout", "-k", "10", f"{lifetime_s:.0f}", find_mosquitto(), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=child_setup(None),  # inherits this process's CPU
        )


def _write_config(pki_dir: Path, rundir: Path, tls_port: int, plain_port: int) -> Path:
    """Lay out the fleet broker's run directory from the PKI and write the two-listener configuration next to it."""
    _, layout = prepare(pki_dir, rundir, "127.0.0.1", tls_port)
    fleet_config = layout.config.read_text()
    plain_acl = layout.rundir / "acl-thingsboard.conf"
    plain_acl.write_text(
        "# Clients on the plain benchmark listener (any username, or none): ThingsBoard's MQTT API only.\n"
        + "".join(f"pattern readwrite {topic}\n" for topic in TB_TOPICS)
    )
    config = layout.rundir / "mosquitto-two-listeners.conf"
    config.write_text(two_listener_config(fleet_config, layout, plain_port, plain_acl))
    user = _user_of(fleet_config)
    if os.geteuid() == 0 and user != "root":
        entry = pwd.getpwnam(user)
        for path in (plain_acl, config):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return config


async def start_shared_broker(pki_dir: Path, rundir: Path, lifetime_s: float) -> SharedBroker:
    """Start Mosquitto with the fleet TLS listener and the plain listener; wait until both accept connections. It
    stops after ``lifetime_s`` at the latest."""
    tls_port, plain_port = free_port(), free_port()
    while plain_port == tls_port:
        plain_port = free_port()
    config = _write_config(pki_dir, rundir, tls_port, plain_port)
    log = config.parent / "mosquitto-bench.log"
    process = _spawn_mosquitto(config, log, lifetime_s)
    tls, plain = BrokerEndpoint("127.0.0.1", tls_port), BrokerEndpoint("127.0.0.1", plain_port)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and process.poll() is None:
        if await _listening(tls_port) and await _listening(plain_port):
            return SharedBroker(process, tls, plain, log)
        await asyncio.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"mosquitto did not start with both listeners (its log: {log_tail(log)})")
