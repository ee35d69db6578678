"""Per-poll sequence accounting: which polls of each device arrived, and which are missing.

Register 0 of the ``bench-seq`` profile adds one on every read of the device (wrapping at 65536), so each poll
carries its own number. A poll is lost when a number between the first and the last one seen for that device never
arrives; the count of readings is kept separately (a poll of 20 registers is 20 readings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEQ_MODULUS = 1 << 16
"""``seq`` is a uint16 register: it wraps here."""


@dataclass
class DeviceSeries:
    """The unwrapped sequence numbers of one device's polls that arrived."""

    values: set[int] = field(default_factory=set)
    last: int | None = None
    duplicates: int = 0

    def add(self, raw: int) -> None:
        value = self._unwrap(raw % SEQ_MODULUS)
        if value in self.values:
            self.duplicates += 1
            return
        self.values.add(value)
        self.last = value

    def _unwrap(self, raw: int) -> int:
        """The unwrapped number nearest to the last one (tolerates reordering of up to half the modulus)."""
        last = self.last
        if last is None:
            return raw
        base = last - last % SEQ_MODULUS
        candidates = (base - SEQ_MODULUS + raw, base + raw, base + SEQ_MODULUS + raw)
        return min(candidates, key=lambda c: abs(c - last))

    @property
    def polls(self) -> int:
        return len(self.values)

    @property
    def lost(self) -> int:
        """Numbers missing between the first and the last that arrived."""
        if not self.values:
            return 0
        return max(self.values) - min(self.values) + 1 - len(self.values)

    def holes(self, limit: int = 5) -> list[int]:
        """The first ``limit`` missing numbers, counted from the device's first poll that arrived (0)."""
        if not self.lost:
            return []
        first = min(self.values)
        missing: list[int] = []
        for value in range(first, max(self.values)):
            if value not in self.values:
                missing.append(value - first)
                if len(missing) == limit:
                    break
        return missing


class SequenceTally:
    """Readings and per-poll sequence numbers as they arrive at the measuring subscriber, for every device."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceSeries] = {}
        self.readings = 0
        self.messages = 0

    def poll(self, device: str, seq: int, readings: int) -> None:
        """One poll of ``device`` arrived carrying sequence value ``seq`` and ``readings`` register values."""
        series = self.devices.get(device)
        if series is None:
            series = self.devices[device] = DeviceSeries()
        series.add(int(seq))
        self.readings += readings

    def add_readings(self, readings: int) -> None:
        """Readings without a sequence value (e.g. a poll split across messages after its ``seq`` register)."""
        self.readings += readings

    @property
    def polls(self) -> int:
        return sum(series.polls for series in self.devices.values())

    @property
    def lost_polls(self) -> int:
        return sum(series.lost for series in self.devices.values())

    @property
    def duplicate_polls(self) -> int:
        return sum(series.duplicates for series in self.devices.values())

    def lost_by_device(self) -> dict[str, int]:
        """Devices with lost polls, and how many each lost."""
        return {device: series.lost for device, series in sorted(self.devices.items()) if series.lost}

    def first_holes(self, limit: int = 5) -> dict[str, list[int]]:
        """Per device with lost polls, where the first holes are (poll numbers from its first poll that arrived)."""
        return {device: series.holes(limit) for device, series in sorted(self.devices.items()) if series.lost}
