"""``kakehashi demo``: run the system on this machine with simulated hardware and the embedded defaults.

Today the demo shows the foundation end to end: it creates a fleet PKI, starts the real Mosquitto broker with the
fleet's TLS and ACL policy, enrolls an agent and a gateway (keys made on the "device", only CSRs travel), streams
SenML readings from the gateway through the broker to the agent's shared subscription with per-gateway sequence
numbers, and shows that a foreign certificate and a revoked one are refused. ``--seconds N --json`` runs headless
and prints one JSON summary; the exit status is non-zero if any reading was lost or any check failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import click

from cloud_agent.pki.authority import CertificateAuthority
from kakehashi import keys, ui, wire
from kakehashi.broker.runner import run_broker
from kakehashi.identity import Role
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity, make_client

AGENT_ID = "agent-demo"
GATEWAY_ID = "gw-demo-0001"
REVOKED_ID = "gw-demo-0002"
DEVICES = ("wl-0001", "wl-0002", "em-0001")
READINGS_PER_MESSAGE = 50
MESSAGES_PER_SECOND = 40
DRAIN_SECONDS = 5.0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Flow:
    """What went through the broker: readings sent by the gateway and received once by the agent."""

    sent_seqs: set[int] = field(default_factory=set)
    readings_forwarded: int = 0
    received_seqs: set[int] = field(default_factory=set)
    readings_received: int = 0
    duplicates: int = 0
    rejected: int = 0

    @property
    def lost_messages(self) -> int:
        return len(self.sent_seqs - self.received_seqs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _enroll(ca: CertificateAuthority, role: Role, identity: str, device_dir: Path) -> TlsIdentity:
    """What a device does: make its key locally, send only the CSR, store the certificate it gets back."""
    device_dir.mkdir(parents=True, exist_ok=True)
    key = keys.generate_private_key()
    keys.write_private_key(device_dir / "device.key", key)
    record = ca.issue(keys.make_csr(key, identity), role, identity)
    keys.write_public_file(device_dir / "device.crt", Path(record.certificate_path).read_bytes())
    return TlsIdentity(ca.trust_bundle_path, device_dir / "device.crt", device_dir / "device.key")


async def _refused(endpoint: BrokerEndpoint, identity: TlsIdentity, client_id: str) -> tuple[bool, str]:
    try:
        async with make_client(endpoint, identity, client_id=client_id, timeout=5.0):
            return False, "connected"
    except aiomqtt.MqttError as exc:
        return True, str(exc)


def _readings(seq: int, now: float) -> wire.ReadingsMessage:
    readings = []
    for i in range(READINGS_PER_MESSAGE):
        device = DEVICES[i % len(DEVICES)]
        quantity, unit, value = (
            ("energy", "Wh", 1000.0 + seq + i) if device.startswith("em") else ("level", "m", 1.2 + (seq % 7) * 0.01)
        )
        readings.append(
            wire.Reading(
                device,
                quantity,
                value,
                unit,
                round(now - (READINGS_PER_MESSAGE - i) * 0.001, 3),
                wire.ClockQuality.SYNCED,
            )
        )
    return wire.ReadingsMessage(seq=seq, sent_at=now, readings=tuple(readings))


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    raise wire.WireError(f"payload is {type(payload).__name__}, not bytes", reason="malformed_json")


async def _agent(
    endpoint: BrokerEndpoint, identity: TlsIdentity, flow: Flow, ready: asyncio.Event, done: asyncio.Event
) -> None:
    async with make_client(endpoint, identity, client_id=f"{AGENT_ID}-1") as mqtt:
        for topic in wire.uplink_subscriptions("agents"):
            await mqtt.subscribe(topic, qos=1)
        ready.set()
        async for message in mqtt.messages:
            gateway, channel = wire.parse_topic(str(message.topic))
            if channel is not wire.Channel.READINGS or gateway != GATEWAY_ID:
                continue
            try:
                decoded = wire.decode_readings(_payload_bytes(message.payload))
            except wire.WireError:
                flow.rejected += 1
                continue
            if decoded.seq in flow.received_seqs:
                flow.duplicates += 1
            else:
                flow.received_seqs.add(decoded.seq)
                flow.readings_received += len(decoded.readings)
            if done.is_set() and flow.received_seqs >= flow.sent_seqs:
                return


async def _gateway(endpoint: BrokerEndpoint, identity: TlsIdentity, flow: Flow, seconds: float) -> None:
    status_topic = wire.topic_for(GATEWAY_ID, wire.Channel.STATUS)
    will = aiomqtt.Will(
        status_topic,
        wire.encode_status(wire.StatusMessage(wire.StatusState.OFFLINE, wire.StatusReason.WILL, time.time())),
        qos=1,
        retain=True,
    )
    topic = wire.topic_for(GATEWAY_ID, wire.Channel.READINGS)
    async with make_client(endpoint, identity, client_id=GATEWAY_ID, will=will) as mqtt:
        online = wire.StatusMessage(wire.StatusState.ONLINE, wire.StatusReason.CONNECTED, time.time())
        await mqtt.publish(status_topic, wire.encode_status(online), qos=1, retain=True)
        loop = asyncio.get_running_loop()
        start = loop.time()
        seq = 0
        interval = 1.0 / MESSAGES_PER_SECOND
        while loop.time() - start < seconds:
            seq += 1
            message = _readings(seq, time.time())
            await mqtt.publish(topic, wire.encode_readings(message), qos=1)
            flow.sent_seqs.add(seq)
            flow.readings_forwarded += len(message.readings)
            await asyncio.sleep(max(0.0, start + seq * interval - loop.time()))
        offline = wire.StatusMessage(wire.StatusState.OFFLINE, wire.StatusReason.SHUTDOWN, time.time())
        await mqtt.publish(status_topic, wire.encode_status(offline), qos=1, retain=True)


async def run_demo(workdir: Path, seconds: float, *, progress: bool = True) -> dict[str, Any]:
    """Run the demo in ``workdir`` for ``seconds``; returns the summary document."""

    def say(text: str) -> None:
        if progress:
            ui.progress(text)

    checks: list[Check] = []
    say(f"creating the fleet PKI in {workdir / 'pki'}")
    ca = CertificateAuthority.init(workdir / "pki")
    say("enrolling an agent and two gateways (keys made on each device, only CSRs sent)")
    agent = _enroll(ca, Role.SERVICE, AGENT_ID, workdir / "devices" / AGENT_ID)
    gateway = _enroll(ca, Role.GATEWAY, GATEWAY_ID, workdir / "devices" / GATEWAY_ID)
    revoked = _enroll(ca, Role.GATEWAY, REVOKED_ID, workdir / "devices" / REVOKED_ID)
    ca.revoke(REVOKED_ID, "key_compromise")
    foreign_ca = CertificateAuthority.init(workdir / "foreign-pki")
    foreign = _enroll(foreign_ca, Role.GATEWAY, GATEWAY_ID, workdir / "devices" / "impostor")
    impostor = TlsIdentity(ca.trust_bundle_path, foreign.cert_file, foreign.key_file)

    port = _free_port()
    endpoint = BrokerEndpoint("127.0.0.1", port)
    stop_broker = asyncio.Event()
    broker_ready = asyncio.Event()
    flow = Flow()
    say(f"starting Mosquitto on mqtts://127.0.0.1:{port} (TLS, client certificates, ACL)")
    async with asyncio.TaskGroup() as tg:
        broker = tg.create_task(
            run_broker(
                ca.path,
                workdir / "broker",
                "127.0.0.1",
                port,
                stop=stop_broker,
                on_ready=lambda *_: broker_ready.set(),
            )
        )
        ready_wait = tg.create_task(broker_ready.wait())
        await asyncio.wait({broker, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        if broker.done():
            ready_wait.cancel()
            broker.result()  # raises the broker's error

        refused, detail = await _refused(endpoint, impostor, GATEWAY_ID)
        checks.append(Check("foreign certificate refused", refused, detail))
        refused, detail = await _refused(endpoint, revoked, REVOKED_ID)
        checks.append(Check("revoked certificate refused", refused, detail))

        agent_ready = asyncio.Event()
        gateway_done = asyncio.Event()
        agent_task = tg.create_task(_agent(endpoint, agent, flow, agent_ready, gateway_done))
        await agent_ready.wait()
        say(f"gateway {GATEWAY_ID} streaming readings for {seconds:g} s")
        started = time.monotonic()
        try:
            await _gateway(endpoint, gateway, flow, seconds)
            checks.append(Check("enrolled gateway connected and published", True, f"{len(flow.sent_seqs)} messages"))
        except aiomqtt.MqttError as exc:
            checks.append(Check("enrolled gateway connected and published", False, str(exc)))
        elapsed = time.monotonic() - started
        gateway_done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(agent_task), DRAIN_SECONDS)
        agent_task.cancel()
        stop_broker.set()

    lost = flow.lost_messages
    checks.append(
        Check(
            "every reading delivered exactly once",
            lost == 0 and flow.duplicates == 0,
            f"{lost} messages lost, {flow.duplicates} duplicates",
        )
    )
    return {
        "seconds": round(elapsed, 2),
        "broker": {"host": "127.0.0.1", "port": port, "tls": "1.2 with client certificates"},
        "identities": {
            "enrolled_connected": next(c.passed for c in checks if c.name.startswith("enrolled")),
            "foreign_refused": next(c.passed for c in checks if c.name.startswith("foreign")),
            "revoked_refused": next(c.passed for c in checks if c.name.startswith("revoked")),
        },
        "readings": {
            "forwarded": flow.readings_forwarded,
            "received": flow.readings_received,
            "duplicates": flow.duplicates,
            "rejected": flow.rejected,
            "lost": flow.readings_forwarded - flow.readings_received,
        },
        "messages": {"sent": len(flow.sent_seqs), "received": len(flow.received_seqs), "lost": lost},
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks],
        "ok": all(c.passed for c in checks),
    }


def _print_human(summary: dict[str, Any]) -> None:
    rows = [
        {"check": c["name"], "result": "PASS" if c["passed"] else "FAIL", "detail": c["detail"]}
        for c in summary["checks"]
    ]
    ui.print_table(rows, ["check", "result", "detail"])
    readings = summary["readings"]
    click.echo("")
    ui.print_kv(
        [
            ("readings forwarded", readings["forwarded"]),
            ("readings received", readings["received"]),
            ("duplicates", readings["duplicates"]),
            ("lost", readings["lost"]),
            ("rate", f"{readings['received'] / max(summary['seconds'], 0.001):,.0f} readings/s"),
        ]
    )
    click.echo("")
    click.echo("demo OK" if summary["ok"] else "demo FAILED: see the checks above")


@click.command()
@click.option(
    "--seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=1.0, max=86400.0),
    help="How long readings flow.",
)
@click.option("--json", "as_json", is_flag=True, help="Run headless and print one JSON summary.")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the demo's PKI, broker and device files here (default: a temporary directory).",
)
def demo(seconds: float, as_json: bool, workdir: Path | None) -> None:
    """Run the whole system on this machine with simulated hardware and embedded defaults."""
    keep = workdir is not None
    root = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="kakehashi-demo-"))
    if keep and root.exists() and any(root.iterdir()):
        ui.fail(f"{root} is not empty: pass an empty or new --dir (the demo creates a fresh PKI there)")
    try:
        summary = asyncio.run(run_demo(root, seconds, progress=not as_json))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    if as_json:
        ui.print_json(summary)
    else:
        _print_human(summary)
    if not summary["ok"]:
        raise SystemExit(1)
