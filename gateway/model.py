"""The gateway's one reading model: what every source produces and the outbox stores.

A :class:`Reading` is a wire reading (device, quantity, value, unit, observed time, clock quality) plus the
``priority`` the outbox uses when its disk budget runs out: telemetry is thinned first, alarms and safety events are
never dropped.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from kakehashi import wire
from kakehashi.wire import ClockQuality

__all__ = ["ClockQuality", "Priority", "Reading", "now"]


class Priority(enum.IntEnum):
    """Lower value = more important. The outbox evicts only ``TELEMETRY`` when its disk budget is exhausted."""

    ALARM = 0  # threshold crossings, flood levels, tamper: never dropped
    EVENT = 1  # state changes, detections of registered watch tags: never dropped
    TELEMETRY = 2  # periodic measurements: thinned first when the disk budget is exhausted


@dataclass(frozen=True, slots=True)
class Reading:
    """One normalised measurement or detection from any source."""

    device_id: str
    quantity: str
    value: float | str | bool | bytes
    unit: str | None
    observed_at: float
    clock: ClockQuality = ClockQuality.SYNCED
    priority: Priority = Priority.TELEMETRY

    def to_wire(self) -> wire.Reading:
        return wire.Reading(self.device_id, self.quantity, self.value, self.unit, self.observed_at, self.clock)


def now() -> float:
    """The gateway's wall clock, in epoch seconds (one place, so tests and clock-quality checks can hook it)."""
    return time.time()
