"""BLE throughput benchmark: advertisements parsed and aggregated per second through the real callback path.

A :class:`~hw.ble.simulator.SimulatedAir` in high-rate mode replays pre-built ``BLEDevice`` / ``AdvertisementData``
objects (registered watch tags of every format with rotating addresses, strangers' tags, phones, malformed frames)
through bleak's ``BleakScanner`` → backend → ``call_detection_callbacks`` into the BLE source built by
:func:`~gateway.sources.ble.build_ble_source`, whose windows are flushed to a counting sink. The design target is
≥ 50,000 advertisements/s on one core.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import Any

from gateway.model import Reading
from gateway.sources.base import SourceHealth
from gateway.sources.ble import BleSource, build_ble_source
from gateway.sources.ble_config import BleSourceConfig, RegisteredTag
from hw.ble.population import population
from hw.ble.simulator import SimulatedAir, attached

TARGET_PER_S = 50_000
_RUN = itertools.count()


class _CountingSink:
    def __init__(self) -> None:
        self.readings = 0
        self.batches = 0

    async def submit(self, readings: Sequence[Reading]) -> None:
        self.readings += len(readings)
        self.batches += 1


async def measure_ble_throughput_async(
    seconds: float = 3.0, *, registered: int = 200, strangers: int = 600, noise: int = 150, malformed: int = 50
) -> dict[str, Any]:
    """Run the BLE source against a high-rate simulated air for ``seconds`` and report its throughput."""
    tags = population(registered, strangers, noise, malformed, seed=7)
    adapter = f"bench{next(_RUN)}"
    config = BleSourceConfig(
        adapter=adapter,
        scanning_mode="active",  # every advertisement reaches the callback (passive would filter the phones out)
        window_s=max(0.1, min(1.0, seconds / 3)),
        watchdog_s=60,
        backend="hw.ble.simulator:SimulatedScannerBackend",
        tags=tuple(
            RegisteredTag(id=f"tag-{i:04d}", key=str(t.key), consent=True) for i, t in enumerate(tags[:registered])
        ),
    )
    source = build_ble_source(config)
    assert isinstance(source, BleSource)
    counters = source.aggregator.counters
    sink = _CountingSink()
    health = SourceHealth(config.name)
    air = SimulatedAir(tags, high_rate=True)
    with attached(adapter, air):
        task = asyncio.get_running_loop().create_task(source.run(sink, health))
        try:
            await asyncio.sleep(0.2)  # warm-up: the scanner starts and pre-builds its objects
            start_adv, start_wall, start_cpu = counters.advertisements, time.perf_counter(), time.process_time()
            await asyncio.sleep(seconds)
            count = counters.advertisements - start_adv
            wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return {
        "advertisements_per_s": round(count / wall),
        "advertisements_per_cpu_s": round(count / cpu) if cpu > 0 else None,
        "target_per_s": TARGET_PER_S,
        "target_met": count / wall >= TARGET_PER_S,
        "advertisements": count,
        "seconds": round(wall, 3),
        "scanning_mode": health.detail.get("scanning_mode"),
        "population": len(tags),
        "registered_tags": registered,
        "readings": sink.readings,
        "windows": sink.batches,
        "unknown_tags_dropped": counters.unknown,
        "malformed_frames": counters.malformed,
        "callback_errors": air.callback_errors,
    }


def measure_ble_throughput(seconds: float = 3.0, **population_sizes: int) -> dict[str, Any]:
    """Synchronous wrapper of :func:`measure_ble_throughput_async` (for ``kakehashi bench ble``)."""
    return asyncio.run(measure_ble_throughput_async(seconds, **population_sizes))
