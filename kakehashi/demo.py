"""``kakehashi demo``: the whole system on this machine, with simulated hardware and the embedded defaults.

What runs (everything real except the hardware, which is simulated at its own interface):

* the fleet PKI; an agent, a gateway and an edge node enrolled (keys made on each "device", only CSRs travel);
* the fleet broker (Mosquitto, TLS with client certificates, per-identity ACL) and the gateway's local broker for its
  nodes (``--profile local``);
* hardware simulators: a pymodbus TCP server with an SDM120 energy meter, a water meter and a water-level gauge; an
  IM920 920 MHz module on a socat PTY receiving from watch tags and a gauge; BLE watch tags (with rotating MACs, plus
  strangers' tags that must be dropped) through a simulated bleak backend; a sensor node publishing water levels
  to the local broker (host Python standing in for the MicroPython firmware);
* the real gateway service (``gateway.service``) reading all of them into its outbox and forwarding to the broker;
* on the cloud side, a subscriber that deduplicates by (gateway, seq) as the agent does.

It also shows that a foreign certificate and a revoked one are refused. ``--seconds N --json`` runs headless and
prints one JSON summary; the exit status is non-zero if any accepted reading was lost or any check failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from bench.collector import Collector
from bench.harness import enroll, free_port
from cloud_agent.pki.authority import CertificateAuthority
from gateway.config import parse_config
from gateway.service import Gateway, run_gateway
from hw.ble.population import population as ble_population
from hw.ble.simulator import SimulatedAir, attached
from hw.lpwa.simulator import LpwaModuleSimulator, default_population, gateway_toml
from hw.modbus.simulator import ModbusSimulator
from kakehashi import ui, wire
from kakehashi.broker.runner import AccessProfile, run_broker
from kakehashi.identity import Role
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity
from kakehashi.mqtt_link import LinkError, MqttLink

AGENT_ID = "agent-demo"
GATEWAY_ID = "gw-demo-0001"
REVOKED_ID = "gw-demo-0002"
NODE_ID = "wl-0201"
BLE_ADAPTER = "hci-demo"
MODBUS_DEVICES = {1: ("em-0001", "sdm120"), 2: ("wm-0001", "water-meter"), 3: ("wl-0101", "water-level")}
DRAIN_SECONDS = 10.0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class NodeStats:
    sent: int = 0
    acked: set[int] = field(default_factory=set)


async def _refused(endpoint: BrokerEndpoint, identity: TlsIdentity, client_id: str) -> tuple[bool, str]:
    try:
        async with MqttLink(endpoint, identity, client_id=client_id, connect_timeout_s=5.0):
            return False, "connected"
    except LinkError as exc:
        return True, exc.message


@contextlib.asynccontextmanager
async def _broker(ca: CertificateAuthority, rundir: Path, profile: AccessProfile) -> AsyncIterator[BrokerEndpoint]:
    port = free_port()
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        run_broker(ca.path, rundir, "127.0.0.1", port, stop=stop, profile=profile, on_ready=lambda *_: ready.set())
    )
    waiter = asyncio.get_running_loop().create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()
    try:
        yield BrokerEndpoint("127.0.0.1", port)
    finally:
        stop.set()
        await task


async def _node(endpoint: BrokerEndpoint, identity: TlsIdentity, stats: NodeStats, stop: asyncio.Event) -> None:
    """A water-level node: one reading a second on up/readings, kept until the gateway's relay ack arrives."""
    pending: dict[int, bytes] = {}
    seq = 0
    level = 1.20
    topic = wire.node_topic_for(NODE_ID, wire.NodeChannel.READINGS)
    while not stop.is_set():
        try:
            async with MqttLink(
                endpoint, identity, client_id=NODE_ID, clean_start=False, session_expiry_s=3600
            ) as link:
                await link.subscribe([wire.node_topic_for(NODE_ID, wire.NodeChannel.RELAY_ACK)])
                for old_seq in sorted(pending):  # ring buffer replay after a link loss, in order
                    await link.publish(topic, pending[old_seq])
                while not stop.is_set():
                    seq += 1
                    level = round(level + 0.01 * ((seq % 7) - 3), 3)
                    reading = wire.Reading(NODE_ID, "water_level", level, "m", round(time.time(), 3),
                                           wire.ClockQuality.SYNCED)  # fmt: skip
                    pending[seq] = wire.encode_readings(wire.ReadingsMessage(seq, time.time(), (reading,)))
                    await link.publish(topic, pending[seq])
                    stats.sent += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    while not link.messages.empty():
                        acked = wire.decode_relay_ack(link.messages.get_nowait().payload)
                        stats.acked.add(acked)
                        pending.pop(acked, None)
        except LinkError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


def _gateway_config(workdir: Path, fleet: BrokerEndpoint, local: BrokerEndpoint, gateway: TlsIdentity,
                    modbus_port: int, lpwa_link: Path, lpwa_devices: list[Any], ble_tags: list[dict[str, Any]],
                    ) -> dict[str, Any]:  # fmt: skip
    lpwa_section = gateway_toml(str(lpwa_link), "im920", lpwa_devices)
    import tomllib

    lpwa = tomllib.loads(lpwa_section)["sources"]["lpwa"]
    return {
        "gateway": {"id": GATEWAY_ID, "data_dir": str(workdir / "gateway-data")},
        "uplink": {
            "host": fleet.host,
            "port": fleet.port,
            "ca_file": str(gateway.ca_file),
            "cert_file": str(gateway.cert_file),
            "key_file": str(gateway.key_file),
            "heartbeat_s": 5,
        },
        "outbox": {"budget_mb": 64},
        "sources": {
            "modbus": {
                "buses": [
                    {
                        "name": "meters",
                        "host": "127.0.0.1",
                        "port": modbus_port,
                        "devices": [
                            {"id": dev, "unit": unit, "profile": profile, "poll_interval_s": 1.0}
                            for unit, (dev, profile) in MODBUS_DEVICES.items()
                        ],
                    }
                ]
            },
            "ble": {
                "adapter": BLE_ADAPTER,
                "window_s": 2.0,
                "tags": ble_tags,
                "backend": "hw.ble.simulator:SimulatedScannerBackend",
            },
            "lpwa": lpwa,
            "nodes": {"host": local.host, "port": local.port, "nodes": [{"id": NODE_ID}]},
        },
    }


async def run_demo(workdir: Path, seconds: float, *, progress: bool = True) -> dict[str, Any]:
    """Run the demo in ``workdir`` for ``seconds``; returns the summary document."""

    def say(text: str) -> None:
        if progress:
            ui.progress(text)

    checks: list[Check] = []
    say(f"fleet PKI in {workdir / 'pki'}; enrolling an agent, a gateway and a node (keys made on each device)")
    ca = CertificateAuthority.init(workdir / "pki")
    devices = workdir / "devices"
    agent = enroll(ca, Role.SERVICE, AGENT_ID, devices / AGENT_ID)
    gateway_identity = enroll(ca, Role.GATEWAY, GATEWAY_ID, devices / GATEWAY_ID)
    node_identity = enroll(ca, Role.NODE, NODE_ID, devices / NODE_ID)
    revoked = enroll(ca, Role.GATEWAY, REVOKED_ID, devices / REVOKED_ID)
    ca.revoke(REVOKED_ID, "key_compromise")
    foreign_ca = CertificateAuthority.init(workdir / "foreign-pki")
    foreign = enroll(foreign_ca, Role.GATEWAY, GATEWAY_ID, devices / "impostor")
    impostor = TlsIdentity(ca.trust_bundle_path, foreign.cert_file, foreign.key_file)

    lpwa_devices = default_population("im920", tags=3, gauges=1, sos_probability=0.05)
    tags = ble_population(registered=6, strangers=12, noise=4, malformed=1, seed=7, interval_s=0.5, rotate_s=5.0)
    ble_tags = [
        {"id": f"bt-{i + 1:04d}", "key": tag.key, "consent": True}
        for i, tag in enumerate(t for t in tags if t.label.startswith("tag-"))
    ]
    air = SimulatedAir(tags, seed=7)

    say("starting Mosquitto (fleet, and the gateway's local broker for nodes) and the hardware simulators")
    async with (
        _broker(ca, workdir / "broker", AccessProfile()) as fleet_endpoint,
        _broker(ca, workdir / "local-broker", AccessProfile("local", GATEWAY_ID)) as local_endpoint,
        ModbusSimulator({unit: profile for unit, (_, profile) in MODBUS_DEVICES.items()}) as modbus,
        LpwaModuleSimulator("im920", link_path=workdir / "lpwa0", devices=lpwa_devices, interval_s=0.4) as _lpwa,
    ):
        with attached(BLE_ADAPTER, air):
            refused, detail = await _refused(fleet_endpoint, impostor, GATEWAY_ID)
            checks.append(Check("foreign certificate refused", refused, detail))
            refused, detail = await _refused(fleet_endpoint, revoked, REVOKED_ID)
            checks.append(Check("revoked certificate refused", refused, detail))

            doc = _gateway_config(workdir, fleet_endpoint, local_endpoint, gateway_identity, modbus.port,
                                  workdir / "lpwa0", lpwa_devices, ble_tags)  # fmt: skip
            config = parse_config(doc, workdir / "gateway.toml")
            collector = Collector(fleet_endpoint, agent, f"{AGENT_ID}-1")
            stop_collector, stop_gateway, stop_node = asyncio.Event(), asyncio.Event(), asyncio.Event()
            node_stats = NodeStats()
            started: list[Gateway] = []
            async with asyncio.TaskGroup() as tg:
                collector_task = tg.create_task(collector.run(stop_collector))
                await asyncio.wait_for(collector.subscribed.wait(), 10)
                say(f"gateway {GATEWAY_ID} running for {seconds:g} s: Modbus, BLE, LPWA and a node → outbox → broker")
                gateway_task = tg.create_task(run_gateway(config, stop=stop_gateway, on_started=started.append))
                node_task = tg.create_task(_node(local_endpoint, node_identity, node_stats, stop_node))
                await asyncio.sleep(seconds)
                stop_node.set()
                await node_task
                stop_gateway.set()
                gw = await gateway_task
                stats = await _final_outbox_stats(config.outbox_path, config.outbox.budget_bytes)
                deadline = time.monotonic() + DRAIN_SECONDS
                while collector.readings < stats["accepted"] - stats["stored"] and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)  # polling another task's counter, bounded by the deadline
                stop_collector.set()
                collector_task.cancel()

    return _summary(gw, collector, stats, node_stats, checks, seconds)


async def _final_outbox_stats(path: Path, budget: int) -> dict[str, int]:
    from gateway.outbox_store import OutboxStore

    store = await asyncio.to_thread(OutboxStore, path, budget)
    try:
        stats = store.stats()
    finally:
        store.close()
    return {"accepted": stats.accepted_readings, "stored": stats.depth_readings, "dropped": stats.dropped_readings}


def _summary(gw: Gateway, collector: Collector, stats: dict[str, int], node: NodeStats, checks: list[Check],
             seconds: float) -> dict[str, Any]:  # fmt: skip
    by_source = {name: health.readings for name, health in gw.health.items()}
    received_devices: dict[str, int] = {}
    for payload in collector.payloads.values():
        with contextlib.suppress(wire.WireError):
            for reading in wire.decode_readings(payload).readings:
                received_devices[reading.device_id] = received_devices.get(reading.device_id, 0) + 1
    lost = stats["accepted"] - stats["stored"] - stats["dropped"] - collector.readings
    seqs = collector.seqs(GATEWAY_ID)
    for name, count in sorted(by_source.items()):
        checks.append(Check(f"source {name} produced readings", count > 0, f"{count} readings"))
    checks.append(Check("node readings acknowledged end to end", len(node.acked) > 0,
                        f"{len(node.acked)} of {node.sent} acknowledged by the gateway"))  # fmt: skip
    checks.append(Check("every accepted reading delivered exactly once", lost == 0 and sorted(seqs) == list(
        range(1, len(seqs) + 1)), f"{lost} lost, {collector.duplicates} duplicates deduplicated"))  # fmt: skip
    return {
        "seconds": seconds,
        "identities": {
            "foreign_refused": checks[0].passed,
            "revoked_refused": checks[1].passed,
        },
        "readings": {
            "accepted": stats["accepted"],
            "forwarded": gw.uplink.stats.published_readings,
            "received": collector.readings,
            "stored_at_exit": stats["stored"],
            "dropped_by_budget": stats["dropped"],
            "duplicates": collector.duplicates,
            "lost": lost,
        },
        "by_source": by_source,
        "devices": dict(sorted(received_devices.items())),
        "messages": {"received": len(seqs), "by_channel": collector.by_channel},
        "commands": {"rejected_by_this_release": gw.commands_rejected},
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks],
        "ok": all(c.passed for c in checks),
    }


def _print_human(summary: dict[str, Any]) -> None:
    rows = [{"check": c["name"], "result": "PASS" if c["passed"] else "FAIL", "detail": c["detail"][:70]}
            for c in summary["checks"]]  # fmt: skip
    ui.print_table(rows, ["check", "result", "detail"])
    click.echo("")
    ui.print_table([{"device": d, "readings": n} for d, n in summary["devices"].items()], ["device", "readings"])
    click.echo("")
    ui.print_kv(summary["readings"].items())
    click.echo("")
    click.echo("demo OK" if summary["ok"] else "demo FAILED: see the checks above")


@click.command()
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(min=3.0, max=86400.0),
              help="How long the gateway runs.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Run headless and print one JSON summary.")
@click.option("--dir", "workdir", type=click.Path(path_type=Path), default=None,
              help="Keep the demo's PKI, brokers and gateway files here (default: a temporary directory).")  # fmt: skip
def demo(seconds: float, as_json: bool, workdir: Path | None) -> None:
    """Run the whole system on this machine with simulated hardware and embedded defaults."""
    keep = workdir is not None
    root = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="kakehashi-demo-"))
    if not keep:
        root.chmod(0o711)  # let Mosquitto, started as root, drop to its own user and still reach its run directory
    if keep and root.exists() and any(root.iterdir()):
        ui.fail(f"{root} is not empty: pass an empty or new --dir (the demo creates a fresh PKI there)")
    try:
        summary = asyncio.run(run_demo(root.resolve(), seconds, progress=not as_json))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    if as_json:
        ui.print_json(summary)
    else:
        _print_human(summary)
    if not summary["ok"]:
        raise SystemExit(1)
