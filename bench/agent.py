"""``kakehashi bench agent``: readings ingested per second per agent process, and publish-to-stored latency.

The real parts, on loopback: Mosquitto with the fleet's TLS and ACL, ``kakehashi agent run`` as separate processes
(a shared subscription splits the load when there are several), and the registry on SQLite (a file, WAL,
``synchronous=FULL``) or on a throw-away PostgreSQL cluster with its default durability (fsync on).

1. **Setup.** Gateways and their devices are registered (each message carries 50 readings of 10 devices); each
   agent connects once so that the broker keeps a persistent session for it, and stops.
2. **Throughput.** A backlog is published while the agents are away, including 2 % replayed sequence numbers (the
   at-least-once redeliveries a gateway makes after a lost PUBACK). The agents start, and the time from 5 % to 95 %
   of the backlog stored gives ``readings_per_s`` (summed over the agents).
3. **Latency.** The agents restart, and the gateways publish at half that rate for a few seconds; each agent
   measures commit time minus the time the message was published, and ``p99_ms`` is the worst agent's p99.
4. **Checks.** ``lost``: published messages with no stored readings; ``duplicates_stored``: readings stored more
   than once. Both must be 0.

With ``agents`` > 1 a one-agent run on the same database comes first, and ``speedup_vs_one`` compares them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from bench.harness import (
    BenchBroker,
    BenchFleet,
    agent_toml,
    enroll,
    free_port,
    peak_rss_mb,
    pin,
    spawn_kakehashi,
    terminate,
    until,
)
from bench.pg_cluster import PostgresCluster
from cloud_agent.pki.authority import CertificateAuthority
from device_registry import Registry
from device_registry.schema import readings as readings_table
from device_registry.schema import received_messages
from kakehashi import wire
from kakehashi.identity import Role
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity
from kakehashi.mqtt_link import MqttLink

ORG = "bench-city"
DEVICES_PER_GATEWAY = 10
READINGS_PER_MESSAGE = 50
REPLAY_FRACTION = 0.02
BATCH_MESSAGES = int(os.environ.get("KAKEHASHI_BENCH_BATCH", "32"))
QUICK = {"messages": 1000, "latency_s": 2.0}

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class Setup:
    root: Path
    fleet: BenchFleet
    broker: BenchBroker
    url: str
    gateways: dict[str, TlsIdentity]
    agent_identities: list[TlsIdentity] = field(default_factory=list)
    next_seq: dict[str, int] = field(default_factory=dict)
    published: int = 0
    """Distinct readings messages published so far."""


def _agent_toml(name: str, ident: TlsIdentity, endpoint: BrokerEndpoint, url: str) -> str:
    sections = f"[api]\nenabled = false\n[ingest]\nbatch_messages = {BATCH_MESSAGES}\n"
    return agent_toml(name, ident, endpoint, url, sections, agent_keys='share_group = "bench"')


class AgentProcess:
    """One ``kakehashi agent run`` child process, its log, and its final metrics."""

    def __init__(self, root: Path, index: int, ident: TlsIdentity, endpoint: BrokerEndpoint, url: str) -> None:
        self.name = f"agent-bench-{index}"
        self.index = index
        self.config = root / f"{self.name}.toml"
        self.config.write_text(_agent_toml(self.name, ident, endpoint, url))
        self.log = root / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.rss_mb: float | None = None

    def start(self) -> None:
        self.process = spawn_kakehashi(["agent", "run", "--config", str(self.config)], self.log)
        pin(self.process.pid, self.index % (os.cpu_count() or 1))

    def _events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                doc = orjson.loads(line)
                if isinstance(doc, dict):
                    events.append(doc)
        return events

    def connected(self) -> bool:
        return any(event.get("event") == "broker_connected" for event in self._events())

    def stop(self) -> dict[str, Any]:
        """SIGTERM, wait, and return the metrics the agent logged on its way out."""
        assert self.process is not None
        self.rss_mb = peak_rss_mb(self.process.pid)
        code = terminate(self.process, within=60)
        if code != 0:
            raise RuntimeError(f"{self.name} exited with {code}: {self.log.read_text(errors='replace')[-2000:]}")
        for event in reversed(self._events()):
            if event.get("event") == "agent_stopped":
                metrics = event.get("metrics")
                return metrics if isinstance(metrics, dict) else {}
        raise RuntimeError(f"{self.name} logged no metrics: {self.log.read_text(errors='replace')[-2000:]}")


async def _count(registry: Registry) -> tuple[int, int]:
    """(readings messages stored, readings rows stored)."""
    async with registry.engine.connect() as conn:
        messages = (await conn.execute(sa.select(sa.func.count()).select_from(received_messages))).scalar_one()
        rows = (await conn.execute(sa.select(sa.func.count()).select_from(readings_table))).scalar_one()
    return int(messages), int(rows)


def _message(seq: int, devices: list[str], sent_at: float) -> bytes:
    per_device = READINGS_PER_MESSAGE // len(devices)
    return wire.encode_readings(
        wire.ReadingsMessage(
            seq=seq,
            sent_at=sent_at,
            readings=tuple(
                wire.Reading(
                    device, f"q{q}", float(seq % 1000) + q, "m", sent_at - 1 + q * 0.01, wire.ClockQuality.SYNCED
                )
                for device in devices
                for q in range(per_device)
            ),
        )
    )


def _devices(gateway: str) -> list[str]:
    suffix = gateway.rsplit("-", 1)[-1]
    return [f"wl-{suffix}-{d:02d}" for d in range(DEVICES_PER_GATEWAY)]


async def _publish(setup: Setup, messages: int, *, rate: float | None = None, replays: bool = False) -> None:
    """Publish ``messages`` new readings messages spread over the gateways (paced at ``rate`` messages/s if given),
    plus, with ``replays``, a copy of every 50th one."""
    names = sorted(setup.gateways)
    per_gateway = [messages // len(names) + (1 if i < messages % len(names) else 0) for i in range(len(names))]

    async def one_gateway(name: str, count: int) -> None:
        ident = setup.gateways[name]
        devices = _devices(name)
        share = (rate / len(names)) if rate else None
        async with MqttLink(setup.broker.endpoint, ident, client_id=name, max_inflight=64) as link:
            topic = wire.topic_for(name, wire.Channel.READINGS)
            window = asyncio.Semaphore(64)
            pending: set[asyncio.Task[None]] = set()
            started = time.monotonic()

            async def send(payload: bytes) -> None:
                try:
                    await link.publish(topic, payload)
                finally:
                    window.release()

            for i in range(count):
                if share:
                    delay = started + i / share - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                seq = setup.next_seq.get(name, 0) + 1
                setup.next_seq[name] = seq
                payload = _message(seq, devices, time.time())
                for copy in range(2 if replays and seq % int(1 / REPLAY_FRACTION) == 0 else 1):
                    del copy
                    await window.acquire()
                    task = asyncio.ensure_future(send(payload))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)

    await asyncio.gather(*(one_gateway(name, count) for name, count in zip(names, per_gateway, strict=True)))
    setup.published += messages


@contextlib.asynccontextmanager
async def _database(kind: str, root: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{root / 'registry.db'}"
        return
    cluster = await asyncio.to_thread(PostgresCluster.start, durable=True, scratch=str(root))
    try:
        name = await cluster.create_database("bench")
        yield cluster.url(name)
    finally:
        await asyncio.to_thread(cluster.stop)


async def _register(registry: Registry, ca: CertificateAuthority, gateways: list[str]) -> None:
    await registry.create_organisation(ORG, "Benchmark City", actor="bench")
    for gateway in gateways:
        await registry.create_gateway(gateway, ORG, actor="bench")
        for record in ca.records_for(gateway):
            await registry.record_certificate(gateway, record.serial_hex, record.not_after, actor="bench")
        for device in _devices(gateway):
            await registry.create_device(device, ORG, "water_level", actor="bench", gateway_id=gateway)


async def _run_once(
    db: str, agents: int, messages: int, gateways: int, latency_s: float, progress: Progress
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kakehashi-bench-agent-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o711)  # the broker (and PostgreSQL) may run as other users below this directory
        fleet = BenchFleet(root, CertificateAuthority.init(root / "pki"))
        names = [f"gw-bench-{i:04d}" for i in range(1, gateways + 1)]
        gateway_ids = {name: fleet.identity(Role.GATEWAY, name) for name in names}
        agent_ids = [enroll(fleet.ca, Role.SERVICE, f"agent-bench-{i}", root / f"agent-{i}") for i in range(agents)]
        broker = await fleet.start_broker(free_port())
        try:
            async with _database(db, root) as url:
                registry = await Registry.open(url)
                try:
                    setup = Setup(root, fleet, broker, url, gateway_ids, agent_ids)
                    await _register(registry, fleet.ca, names)
                    return await _measure(setup, registry, agents, messages, latency_s, progress)
                finally:
                    await registry.close()
        finally:
            await BenchFleet.stop_broker(broker)


async def _start(procs: list[AgentProcess]) -> None:
    for proc in procs:
        proc.start()

    async def all_connected() -> bool:
        return all(proc.connected() for proc in procs)

    await until(all_connected, 60, "the agents to connect")


async def _measure(
    setup: Setup, registry: Registry, agents: int, messages: int, latency_s: float, progress: Progress
) -> dict[str, Any]:
    procs = [
        AgentProcess(setup.root, i, ident, setup.broker.endpoint, setup.url)
        for i, ident in enumerate(setup.agent_identities)
    ]
    progress(f"starting {agents} agent(s) once to create their persistent sessions")
    await _start(procs)
    for proc in procs:
        proc.stop()

    progress(f"publishing a backlog of {messages} messages ({messages * READINGS_PER_MESSAGE} readings) + 2 % replays")
    await _publish(setup, messages, replays=True)
    progress("draining the backlog")
    await _start(procs)

    # the rate between 5 % and 95 % of the backlog: leaves out start-up (the first readings activate every device,
    # one audited transition each) and the tail, where one agent may finish before the other
    low, high = setup.published * 0.05, setup.published * 0.95
    marks: dict[str, tuple[float, int]] = {}

    async def passed(name: str, threshold: float) -> bool:
        count = (await _count(registry))[0]
        if count >= threshold and name not in marks:
            marks[name] = (time.monotonic(), count)
        return count >= threshold

    await until(lambda: passed("low", low), 120, "5 % of the backlog stored")
    await until(lambda: passed("high", high), 600, "95 % of the backlog stored")
    (t0, c0), (t1, c1) = marks["low"], marks["high"]
    throughput = (c1 - c0) * READINGS_PER_MESSAGE / (t1 - t0) if t1 > t0 else 0.0

    async def drained() -> bool:
        return (await _count(registry))[0] >= setup.published

    await until(drained, 600, "the backlog to be stored")
    drain_metrics = [proc.stop() for proc in procs]
    rss = max((proc.rss_mb or 0.0) for proc in procs)

    rate = throughput / 2 / READINGS_PER_MESSAGE
    latency_messages = max(1, int(rate * latency_s))
    progress(f"latency at half load: {rate:.0f} messages/s for {latency_s:.0f} s")
    await _start(procs)
    await _publish(setup, latency_messages, rate=rate)
    await until(drained, 120, "the half-load messages to be stored")
    latency_metrics = [proc.stop() for proc in procs]

    stored_messages, rows = await _count(registry)
    async with registry.engine.connect() as conn:
        distinct = (
            await conn.execute(
                sa.select(sa.func.count()).select_from(
                    sa.select(readings_table.c.gateway_id, readings_table.c.seq).distinct().subquery()
                )
            )
        ).scalar_one()
    p99 = max(float(m.get("stored_latency", {}).get("p99_ms", 0.0)) for m in latency_metrics)
    p50 = max(float(m.get("stored_latency", {}).get("p50_ms", 0.0)) for m in latency_metrics)
    return {
        "readings_per_s": round(throughput),
        "p99_ms": round(p99, 1),
        "p50_ms": round(p50, 1),
        "lost": setup.published - int(distinct),
        "duplicates_stored": rows - int(distinct) * READINGS_PER_MESSAGE,
        "messages": setup.published,
        "readings": setup.published * READINGS_PER_MESSAGE,
        "stored_messages": stored_messages,
        "redeliveries_recognised": sum(int(m.get("duplicates", 0)) for m in drain_metrics),
        "half_load_readings_per_s": round(rate * READINGS_PER_MESSAGE),
        "per_agent_readings": [int(m.get("readings_stored", 0)) for m in drain_metrics],
        "agent_rss_mb": rss,
    }


async def run_async(
    db: str, agents: int, messages: int, gateways: int, latency_s: float, progress: Progress
) -> dict[str, Any]:
    result: dict[str, Any] = {"db": db, "agents": agents}
    if agents > 1:
        progress("baseline: one agent")
        one = await _run_once(db, 1, messages, gateways, latency_s, progress)
        progress(f"{agents} agents")
        many = await _run_once(db, agents, messages, gateways, latency_s, progress)
        result.update(many)
        result["one_agent_readings_per_s"] = one["readings_per_s"]
        result["speedup_vs_one"] = round(many["readings_per_s"] / max(1, one["readings_per_s"]), 2)
    else:
        result.update(await _run_once(db, 1, messages, gateways, latency_s, progress))
    result["targets"] = {
        "readings_per_s": 20_000,
        "p99_ms": 250,
        "lost": 0,
        "duplicates_stored": 0,
        **({"speedup_vs_one": 1.7} if agents > 1 else {}),
    }
    return result


def run(
    *,
    db: str = "sqlite",
    agents: int = 1,
    messages: int = 12000,
    gateways: int = 20,
    latency_s: float = 8.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    if db not in ("sqlite", "postgresql"):
        raise ValueError(f"--db must be sqlite or postgresql, not {db!r}")
    if not 1 <= agents <= 8:
        raise ValueError(f"--agents must be 1 to 8, not {agents}")
    return asyncio.run(run_async(db, agents, messages, gateways, latency_s, progress or _quiet))
