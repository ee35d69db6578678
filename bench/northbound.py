"""``kakehashi bench northbound``: entity updates per second from the agent to a City OS, and readings-to-city latency.

Real parts on loopback: Mosquitto (fleet TLS and ACL), ``kakehashi agent run`` as its own process with ``[northbound]``
pointing at a City OS stand-in served from this process (``hw/cityos``: the NGSI-LD broker, then the Orion NGSI v2
broker, each checking what a real broker checks). 20 gateways with 10 water-level gauges each (with locations, so
each sample becomes ``Device`` + ``WaterObserved`` + ``FloodMonitoring`` updates).

1. **Throughput.** A backlog of stored readings messages is put in the registry's northbound outbox (ingested
   directly into the registry, as the agent's ingest does), the agent starts, and the rate of entity updates the
   City OS accepts between 5 % and 95 % of the backlog is ``entities_per_s``.
2. **Latency.** With the backlog drained, the gateways publish one reading per gauge per second over MQTT; for each
   ``WaterObserved`` update the City OS accepts, the time from the gateway's publish to the acceptance gives
   ``p99_ms``. **Loss:** ``lost`` counts published samples the City OS never got.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import BenchFleet, agent_toml, enroll, free_port, spawn_kakehashi, terminate, until
from cloud_agent.northbound.mapping import CONTEXTS
from cloud_agent.pki.authority import CertificateAuthority
from device_registry import Location, Received, Registry
from hw.cityos import NgsiLdBroker, OrionBroker, StandInServer
from kakehashi import wire
from kakehashi.identity import Role
from kakehashi.mqtt import TlsIdentity
from kakehashi.mqtt_link import MqttLink

ORG = "bench-city"
GATEWAYS = 20
GAUGES = 10
ENTITIES_PER_SAMPLE = 3  # Device, WaterObserved, FloodMonitoring
QUICK = {"messages": 300, "latency_s": 3.0}
TARGET_ENTITIES_PER_S = 10_000
TARGET_P99_MS = 2_000

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def _gauges(gateway: str) -> list[str]:
    suffix = gateway.rsplit("-", 1)[-1]
    return [f"wl-{suffix}-{g:02d}" for g in range(GAUGES)]


def _level(seq: int) -> float:
    return round(1.0 + (seq % 100_000) / 100_000, 6)


def _readings(gateway: str, seq: int, at: float) -> tuple[wire.Reading, ...]:
    return tuple(wire.Reading(g, "level", _level(seq), "m", at, wire.ClockQuality.SYNCED) for g in _gauges(gateway))


class Watcher:
    """Notes when each WaterObserved update arrives at the stand-in (polled every 2 ms in this event loop)."""

    def __init__(self, updates: list[Any], entity_of: Callable[[Any], tuple[str, dict[str, Any]]]) -> None:
        self.updates = updates
        self.entity_of = entity_of
        self.seen = 0
        self.arrivals: dict[tuple[str, float], float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        frozen_at = time.monotonic()
        while not stop.is_set():
            now = time.time()
            if time.monotonic() - frozen_at >= 1.0:
                # The stand-in keeps every update it received (tens of thousands of dicts, for the checks); Python's
                # full collections would walk them again and again and measure this process, not the agent. What
                # lived through a second is moved out of the collector's way (a real City OS broker has no such cost).
                gc.freeze()
                frozen_at = time.monotonic()
            while self.seen < len(self.updates):
                entity_id, entity = self.entity_of(self.updates[self.seen])
                self.seen += 1
                if ":WaterObserved:" in entity_id and "height" in entity:
                    height = entity["height"]
                    value = height["value"] if isinstance(height, dict) else height
                    self.arrivals.setdefault((entity_id.rsplit(":", 1)[-1], round(float(value), 6)), now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.002):
                    await stop.wait()


async def _fill(registry: Registry, gateways: list[str], messages: int) -> int:
    """Queue ``messages`` stored readings messages for the City OS; returns the sequence number used last."""
    per_gateway = max(1, messages // len(gateways))
    at = time.time() - 600
    for start in range(1, per_gateway + 1, 50):
        batch = [
            (
                gw,
                [
                    Received(seq, at, _readings(gw, seq, at + seq))
                    for seq in range(start, min(per_gateway, start + 49) + 1)
                ],
            )
            for gw in gateways
        ]
        await registry.ingest_many(batch)
    return per_gateway


async def _one_kind(kind: str, messages: int, latency_s: float, progress: Progress) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kakehashi-bench-nb-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o711)
        fleet = BenchFleet(root, CertificateAuthority.init(root / "pki"))
        names = [f"gw-nb-{i:04d}" for i in range(1, GATEWAYS + 1)]
        idents = {name: fleet.identity(Role.GATEWAY, name) for name in names}
        agent_id = enroll(fleet.ca, Role.SERVICE, "agent-nb", root / "agent")
        url = f"sqlite+aiosqlite:///{root / 'registry.db'}"
        registry = await Registry.open(url, northbound=True)
        try:
            await registry.create_organisation(ORG, "Benchmark City", actor="bench")
            for index, gw in enumerate(names):
                where = Location(latitude=34.70 + index / 1000, longitude=134.80, place=f"gauge site {index}")
                await registry.create_gateway(gw, ORG, actor="bench", location=where)
                for record in fleet.ca.records_for(gw):
                    await registry.record_certificate(gw, record.serial_hex, record.not_after, actor="bench")
                for gauge in _gauges(gw):
                    await registry.create_device(gauge, ORG, "water_level", actor="bench", gateway_id=gw,
                                                 profile="water-level", location=where)  # fmt: skip
            progress(f"{kind}: queueing {messages} stored messages ({messages * GAUGES * ENTITIES_PER_SAMPLE} updates)")
            last_seq = await _fill(registry, names, messages)
        finally:
            await registry.close()
        expected = last_seq * len(names) * GAUGES * ENTITIES_PER_SAMPLE
        broker = await fleet.start_broker(free_port())
        if kind == "ngsi-ld":
            city: NgsiLdBroker | OrionBroker = NgsiLdBroker(allowed_contexts=set(CONTEXTS.values()))
            northbound = 'kind = "ngsi-ld"\ntenant = "bench"'

            def entity_of(update: Any) -> tuple[str, dict[str, Any]]:
                return str(update[1]), update[2]
        else:
            city = OrionBroker()
            northbound = 'kind = "ngsi-v2"\nservice = "bench"\nservice_path = "/kakehashi"'

            def entity_of(update: Any) -> tuple[str, dict[str, Any]]:
                return str(update[2]), update[3]

        try:
            async with StandInServer(city.app()) as server:
                sections = f'[api]\nenabled = false\n[northbound]\nurl = "{server.url}"\n{northbound}\n'
                sections += "batch_size = 200\nmax_in_flight = 4\n"
                (root / "agent.toml").write_text(agent_toml("agent-nb", agent_id, broker.endpoint, url, sections))
                stop = asyncio.Event()
                watcher = Watcher(city.updates, entity_of)
                watching = asyncio.create_task(watcher.run(stop))
                agent = spawn_kakehashi(["agent", "run", "--config", str(root / "agent.toml")], root / "agent.log")
                try:
                    result = await _measure(kind, city, watcher, expected, names, idents, broker.endpoint,
                                            last_seq, latency_s, progress)  # fmt: skip
                finally:
                    terminate(agent)
                    stop.set()
                    await watching
                    gc.unfreeze()
                return result
        finally:
            await BenchFleet.stop_broker(broker)


async def _measure(
    kind: str,
    city: NgsiLdBroker | OrionBroker,
    watcher: Watcher,
    expected: int,
    names: list[str],
    idents: dict[str, TlsIdentity],
    endpoint: Any,
    last_seq: int,
    latency_s: float,
    progress: Progress,
) -> dict[str, Any]:
    marks: dict[str, tuple[float, int]] = {}

    def passed(name: str, fraction: float) -> bool:
        count = len(city.updates)
        if count >= expected * fraction and name not in marks:
            marks[name] = (time.monotonic(), count)
        return name in marks

    progress(f"{kind}: draining the backlog to the City OS")
    await until(lambda: passed("low", 0.05), 180, "5 % of the backlog at the City OS", every=0.01)
    await until(lambda: passed("high", 0.95), 600, "95 % of the backlog at the City OS", every=0.01)
    (t0, c0), (t1, c1) = marks["low"], marks["high"]
    rate = (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
    await until(lambda: len(city.updates) >= expected, 120, "the whole backlog at the City OS", every=0.01)

    progress(f"{kind}: latency, {len(names) * GAUGES} gauges reporting once a second for {latency_s:g} s")
    published: dict[tuple[str, float], float] = {}

    async def gateway(name: str) -> None:
        async with MqttLink(endpoint, idents[name], client_id=name) as link:
            topic = wire.topic_for(name, wire.Channel.READINGS)
            seq = last_seq
            started = time.monotonic()
            while time.monotonic() - started < latency_s:
                seq += 1
                now = time.time()
                payload = wire.encode_readings(wire.ReadingsMessage(seq, now, _readings(name, seq, now)))
                for gauge in _gauges(name):
                    published[(gauge, _level(seq))] = now
                await link.publish(topic, payload)
                await asyncio.sleep(1.0)

    await asyncio.gather(*(gateway(name) for name in names))
    await until(
        lambda: all(key in watcher.arrivals for key in published), 30, "every sample at the City OS", every=0.01
    )
    latencies = sorted((watcher.arrivals[key] - at) * 1000 for key, at in published.items())
    lost = sum(1 for key in published if key not in watcher.arrivals)
    return {
        "entities_per_s": round(rate),
        "p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else 0.0,
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1) if latencies else 0.0,
        "lost": lost,
        "backlog_updates": expected,
        "latency_samples": len(published),
    }


async def run_async(messages: int, latency_s: float, progress: Progress) -> dict[str, Any]:
    ld = await _one_kind("ngsi-ld", messages, latency_s, progress)
    v2 = await _one_kind("ngsi-v2", messages, latency_s, progress)
    return {
        "entities_per_s": min(ld["entities_per_s"], v2["entities_per_s"]),
        "p99_ms": max(ld["p99_ms"], v2["p99_ms"]),
        "lost": ld["lost"] + v2["lost"],
        "ngsi_ld": ld,
        "ngsi_v2": v2,
        "targets": {"entities_per_s": TARGET_ENTITIES_PER_S, "p99_ms": TARGET_P99_MS, "lost": 0},
        "comparison": {"fiware_iot_agent_json_measures_per_s": 470},
    }


def run(*, messages: int = 6000, latency_s: float = 8.0, progress: Progress | None = None) -> dict[str, Any]:
    return asyncio.run(run_async(messages, latency_s, progress or _quiet))
