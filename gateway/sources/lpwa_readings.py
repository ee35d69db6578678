"""Turning one decoded LPWA frame into gateway :class:`~gateway.model.Reading` objects.

Every field marked ``reading`` and every flag becomes a reading of the device, plus ``rssi`` (dBm) and, when the
module reports it, ``snr`` (dB). Priorities: the profile's default (telemetry for gauges, event for tag detections);
ALARM for a set flag whose priority is ``alarm`` (SOS, flood) and for a value beyond ``alarm_above``/``alarm_below``;
link quality is always telemetry. Time: the reception time with clock quality ESTIMATED, unless the profile has a
``time_field`` carrying a plausible epoch time from the device's own clock (UNSYNCED).
"""

from __future__ import annotations

from typing import Final

from gateway.model import ClockQuality, Priority, Reading
from hw.lpwa.frames import RadioFrame
from hw.lpwa.payload import Value
from hw.lpwa.profile import Field, Profile

__all__ = ["frame_readings"]

_PRIORITY: Final = {"telemetry": Priority.TELEMETRY, "event": Priority.EVENT, "alarm": Priority.ALARM}
_MIN_EPOCH: Final = 2**28  # the wire contract's plausible epoch range
_MAX_EPOCH: Final = 2**33


def _field_priority(field: Field, value: float, default: Priority) -> Priority:
    if (field.alarm_above is not None and value >= field.alarm_above) or (
        field.alarm_below is not None and value <= field.alarm_below
    ):
        return Priority.ALARM
    return default


def _observed(profile: Profile, values: dict[str, Value], received_at: float) -> tuple[float, ClockQuality]:
    if profile.time_field is not None:
        stamp = float(values[profile.time_field])
        if _MIN_EPOCH <= stamp < _MAX_EPOCH:
            return stamp, ClockQuality.UNSYNCED
    return received_at, ClockQuality.ESTIMATED


def frame_readings(
    device_id: str, profile: Profile, values: dict[str, Value], frame: RadioFrame, received_at: float
) -> list[Reading]:
    """The readings of one frame from ``device_id`` decoded with ``profile``."""
    default = _PRIORITY[profile.priority]
    observed_at, clock = _observed(profile, values, received_at)
    readings: list[Reading] = []
    for field in profile.fields:
        if field.reading and field.name != profile.time_field:
            value = float(values[field.name])
            readings.append(
                Reading(
                    device_id,
                    field.quantity or field.name,
                    value,
                    field.unit,
                    observed_at,
                    clock,
                    _field_priority(field, value, default),
                )
            )
        for flag in field.flags:
            is_set = bool(values[flag.name])
            priority = _PRIORITY[flag.priority] if is_set and flag.priority is not None else default
            readings.append(Reading(device_id, flag.name, is_set, None, observed_at, clock, priority))
    readings.append(Reading(device_id, "rssi", float(frame.rssi_dbm), "dBm", received_at, ClockQuality.ESTIMATED))
    if frame.snr_db is not None:
        readings.append(Reading(device_id, "snr", frame.snr_db, "dB", received_at, ClockQuality.ESTIMATED))
    return readings
