"""The poll state of one device on a bus: when it is next due, how it is failing, and its health entry.

A healthy device is polled every ``interval`` seconds on a fixed cadence (a late poll does not shift the ones after
it, and a device that fell behind is polled once, not in a burst). A failing device is retried after an
exponential backoff (``backoff_initial_s`` doubling up to ``backoff_max_s``, never sooner than its interval) and,
after ``quarantine_after`` consecutive failures, is marked quarantined; one good answer ends both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.sources.modbus_config import ModbusDeviceConfig
from gateway.sources.modbus_plan import ReadBlock, plan_reads
from hw.modbus.model import DeviceProfile, Point, PointValue

__all__ = ["BackoffPolicy", "DeviceState"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_s: float = 1.0
    max_s: float = 60.0
    quarantine_after: int = 3

    def delay(self, failures: int) -> float:
        """The retry delay after ``failures`` consecutive failures (1, 2, 3, ...)."""
        return min(self.max_s, self.initial_s * 2.0 ** min(failures - 1, 60))


@dataclass(slots=True)
class DeviceState:
    """One device's profile, read plan, schedule and failure record; ``detail`` is its live health entry."""

    config: ModbusDeviceConfig
    profile: DeviceProfile
    blocks: tuple[ReadBlock, ...]
    interval: float
    due: float = 0.0
    failures: int = 0
    quarantined: bool = False
    detail: dict[str, Any] = field(default_factory=dict)
    # alarm thresholds set through the twin: point name -> (above, below), replacing the profile's for that point
    thresholds: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def is_alarm(self, point: Point, value: PointValue) -> bool:
        """Whether ``value`` crosses the point's alarm thresholds (the twin's, else the profile's)."""
        override = self.thresholds.get(point.name)
        if override is None or isinstance(value, bool):
            return point.is_alarm(value)
        above, below = override
        return (above is not None and value > above) or (below is not None and value < below)

    @classmethod
    def build(cls, config: ModbusDeviceConfig) -> DeviceState:
        profile = config.load_profile()
        wanted = set(config.points) if config.points is not None else None
        points = [p for p in profile.points if wanted is None or p.name in wanted]
        blocks = plan_reads(points, max_gap=profile.max_gap, max_registers=profile.max_read)
        interval = config.poll_interval_s or profile.poll_interval_s
        detail: dict[str, Any] = {
            "unit": config.unit,
            "profile": profile.name,
            "state": "ok",
            "polls": 0,
            "failures": 0,
            "reads_per_poll": len(blocks),
            "last_ok_at": None,
            "last_error": None,
            "retry_in_s": None,
        }
        return cls(config, profile, blocks, interval, detail=detail)

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def unit(self) -> int:
        return self.config.unit

    def succeeded(self, now: float, wall: float) -> bool:
        """Record a good poll at monotonic ``now``; True if the device was quarantined until now."""
        recovered = self.quarantined
        self.failures = 0
        self.quarantined = False
        self.due = max(self.due + self.interval, now)
        detail = self.detail
        detail["polls"] += 1
        detail["last_ok_at"] = wall
        if detail["state"] != "ok":
            detail.update(state="ok", failures=0, retry_in_s=None)
        return recovered

    def failed(self, now: float, message: str, policy: BackoffPolicy) -> bool:
        """Record a failed poll and schedule the retry; True if this failure quarantines the device."""
        self.failures += 1
        delay = max(self.interval, policy.delay(self.failures))
        self.due = now + delay
        newly = not self.quarantined and self.failures >= policy.quarantine_after
        self.quarantined = self.quarantined or newly
        self.detail.update(
            state="quarantined" if self.quarantined else "backoff",
            failures=self.failures,
            last_error=message,
            retry_in_s=round(delay, 3),
        )
        return newly
