"""Which registered device sent a radio frame, and what its payload says.

Devices whose profile has an ``id_field`` are found by that payload id (watch tags: never by radio address); the
others by the radio sender id the module prints. Frames from anyone else are not ours (a neighbour's tag, a device
not yet registered or without consent) and are dropped by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hw.lpwa.frames import RadioFrame
from hw.lpwa.payload import Value, decode_payload
from hw.lpwa.profile import Profile

__all__ = ["DeviceMap", "LpwaDevice", "Match"]


@dataclass(frozen=True, slots=True)
class LpwaDevice:
    """A registered radio device."""

    device_id: str
    profile: Profile
    key: str  # radio sender id, or payload id in hex, normalised


@dataclass(frozen=True, slots=True)
class Match:
    """A frame resolved to its device, with the decoded payload values."""

    device: LpwaDevice
    values: dict[str, Value]


class DeviceMap:
    """Resolves frames to registered devices; ``resolve`` raises ``PayloadError`` for a payload that is unusable."""

    __slots__ = ("_by_payload", "_by_sender")

    def __init__(self, devices: Iterable[tuple[str, str, Profile]]) -> None:
        self._by_sender: dict[str, LpwaDevice] = {}
        self._by_payload: dict[str, tuple[Profile, dict[str, LpwaDevice]]] = {}
        for device_id, sender, profile in devices:
            if profile.id_field is None:
                key = sender.upper().zfill(4)
                self._by_sender[key] = LpwaDevice(device_id, profile, key)
            else:
                key = sender.upper().zfill(2 * profile.field(profile.id_field).size)
                _, ids = self._by_payload.setdefault(profile.name, (profile, {}))
                ids[key] = LpwaDevice(device_id, profile, key)

    def resolve(self, frame: RadioFrame) -> Match | None:
        """The device that sent ``frame`` and its payload values, or ``None`` if it is not registered here."""
        if frame.sender is not None:
            device = self._by_sender.get(frame.sender.upper().zfill(4))
            if device is not None:
                return Match(device, decode_payload(device.profile, frame.payload))
        for profile, ids in self._by_payload.values():
            if not profile.identifies(frame.payload):
                continue
            values = decode_payload(profile, frame.payload)
            id_value = values[profile.id_field or ""]
            device = ids.get(profile.format_id(int(id_value)))
            return Match(device, values) if device is not None else None
        return None

    @staticmethod
    def describe_sender(frame: RadioFrame) -> str:
        """How to name an unknown frame's origin in logs and health: its radio sender or payload length."""
        if frame.sender is not None:
            return f"sender {frame.sender}"
        return f"a {len(frame.payload)}-byte payload without a registered id"
