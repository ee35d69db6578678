"""A synthetic source: readings at a set rate from simulated devices, for benchmarks, soak tests and the demo.

It exercises the whole path after the hardware (intake, outbox, uplink) without any radio or bus, and numbers its
values so a receiver can check that none went missing: each reading of quantity ``counter`` carries the running
count for its device.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.live_settings import apply_settings, in_range
from gateway.model import ClockQuality, Reading
from gateway.sources.base import ReadingSink, SourceHealth
from kakehashi.fields import Identifier


class SyntheticSourceConfig(BaseModel):
    """``[[sources.synthetic]]``: simulated devices producing readings at ``rate_per_s`` in batches."""

    model_config = ConfigDict(extra="forbid")

    name: str = "synthetic"
    devices: list[Identifier] = Field(min_length=1, description="device ids, e.g. ['sim-0001']")
    rate_per_s: float = Field(default=10.0, gt=0, le=1_000_000, description="readings per second over all devices")
    batch: int = Field(default=100, ge=1, le=10_000, description="readings per submit")
    limit: int | None = Field(default=None, ge=1, description="stop after this many readings (benchmarks)")


class SyntheticSource:
    """Produces ``counter`` and ``level`` readings for its devices."""

    def __init__(self, config: SyntheticSourceConfig) -> None:
        self.config = config
        self._counts = dict.fromkeys(config.devices, 0)
        self.produced = 0
        self.finished = asyncio.Event()

    @property
    def name(self) -> str:
        return self.config.name

    def reconfigure(self, settings: Mapping[str, Any]) -> dict[str, str]:
        """Live setting from the twin: ``rate_per_s``."""

        def rate(value: Any) -> str:
            self.config = self.config.model_copy(update={"rate_per_s": in_range(value, 0.001, 1_000_000, "rate_per_s")})
            return "applied"

        return apply_settings(settings, {"rate_per_s": rate})

    def _batch(self, size: int, now: float) -> list[Reading]:
        readings: list[Reading] = []
        devices = self.config.devices
        for i in range(size):
            device = devices[(self.produced + i) % len(devices)]
            self._counts[device] += 1
            count = self._counts[device]
            if count % 2:
                readings.append(Reading(device, "counter", float(count), None, now, ClockQuality.SYNCED))
            else:
                level = 1.5 + 0.5 * math.sin(count / 600.0)
                readings.append(Reading(device, "level", round(level, 4), "m", now, ClockQuality.SYNCED))
        return readings

    async def run(self, sink: ReadingSink, health: SourceHealth) -> None:
        health.state = "ok"
        loop = asyncio.get_running_loop()
        start = loop.time()
        batches = 0
        rate = self.config.rate_per_s
        while self.config.limit is None or self.produced < self.config.limit:
            size = self.config.batch
            if self.config.limit is not None:
                size = min(size, self.config.limit - self.produced)
            readings = self._batch(size, time.time())
            await sink.submit(readings)
            self.produced += size
            health.readings += size
            batches += 1
            if self.config.rate_per_s != rate:  # changed through the twin: pace from now on
                rate, start, batches = self.config.rate_per_s, loop.time(), 0
            delay = start + batches * self.config.batch / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif batches % 64 == 0:
                await asyncio.sleep(0)  # stay fair to other tasks when running flat out
        self.finished.set()
        await asyncio.Event().wait()  # a finished source idles until the gateway stops
