"""Frame and payload builders: the inverse of the decoders, used by the module simulator and by tests.

``build_lines(frame)`` prints a :class:`~hw.lpwa.frames.RadioFrame` the way its module would (one line, or two for
the old RAK3172 firmware); ``encode_payload(profile, values)`` packs named values into payload bytes;
``malformed_lines(module)`` gives one broken receive line per kind of damage the decoders must reject.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from hw.lpwa.frames import RadioFrame
from hw.lpwa.payload import PayloadError, Value
from hw.lpwa.profile import Field, Profile

__all__ = [
    "MALFORMED_KINDS",
    "build_es920lr",
    "build_im920",
    "build_lines",
    "build_rak3172_p2p",
    "build_rak3172_p2p_legacy",
    "encode_payload",
    "malformed_lines",
]


def build_im920(sender: str, payload: bytes, rssi_dbm: int, *, node: str = "00") -> str:
    """An IM920 hex-mode receive line: ``NN,SSSS,RR:D1,D2,...``."""
    if not -128 <= rssi_dbm <= 127:
        raise ValueError(f"IM920 RSSI {rssi_dbm} does not fit a signed byte")
    data = ",".join(f"{byte:02X}" for byte in payload)
    return f"{node},{sender.upper()},{rssi_dbm & 0xFF:02X}:{data}"


def build_es920lr(sender: str, payload: bytes, rssi_dbm: int, *, pan_id: str = "0001") -> str:
    """An ES920LR receive line with RSSI and ID output on, payload as hex text: ``-087 0001 SSSS <hex>``."""
    if not -999 <= rssi_dbm <= 9999:
        raise ValueError(f"ES920LR RSSI {rssi_dbm} does not fit four characters")
    return f"{rssi_dbm:04d}{pan_id.upper()}{sender.upper()}{payload.hex().upper()}"


def build_rak3172_p2p(payload: bytes, rssi_dbm: int, snr_db: int) -> str:
    """A RAK3172 RUI3 receive event: ``+EVT:RXP2P:<rssi>:<snr>:<hex>``."""
    return f"+EVT:RXP2P:{rssi_dbm}:{snr_db}:{payload.hex().upper()}"


def build_rak3172_p2p_legacy(payload: bytes, rssi_dbm: int, snr_db: int) -> tuple[str, str]:
    """The old RAK3172 firmware's receive event: ``+EVT:RXP2P, RSSI <rssi>, SNR <snr>`` then ``+EVT:<hex>``."""
    return f"+EVT:RXP2P, RSSI {rssi_dbm}, SNR {snr_db}", f"+EVT:{payload.hex().upper()}"


def build_lines(frame: RadioFrame, *, legacy: bool = False) -> list[str]:
    """The line(s) ``frame``'s module prints for it; ``legacy`` picks the old RAK3172 two-line format."""
    if frame.module == "rak3172":
        snr = round(frame.snr_db if frame.snr_db is not None else 0.0)
        if legacy:
            return list(build_rak3172_p2p_legacy(frame.payload, frame.rssi_dbm, snr))
        return [build_rak3172_p2p(frame.payload, frame.rssi_dbm, snr)]
    if frame.sender is None:
        raise ValueError(f"{frame.module} frames carry a sender id")
    if frame.module == "im920":
        return [build_im920(frame.sender, frame.payload, frame.rssi_dbm)]
    return [build_es920lr(frame.sender, frame.payload, frame.rssi_dbm)]


def _pack(field: Field, value: Value, into: bytearray) -> None:
    raw: int | float = value / field.scale if field.scale != 1.0 else value
    if field.is_integer:
        raw = round(raw)
    try:
        struct.pack_into(field.struct_format, into, field.offset, raw)
    except (struct.error, OverflowError) as exc:
        raise PayloadError(f"field {field.name}: {value!r} does not fit {field.type} ({exc})") from None


def encode_payload(profile: Profile, values: Mapping[str, Value]) -> bytes:
    """Pack ``values`` (by field or flag name) into a payload; the match bytes are filled in by themselves."""
    out = bytearray(profile.length)
    match_end = profile.match_offset + len(profile.match_bytes)
    out[profile.match_offset : match_end] = profile.match_bytes
    for field in profile.fields:
        if field.name in values:
            _pack(field, values[field.name], out)
        elif field.flags:
            raw = sum(1 << flag.bit for flag in field.flags if values.get(flag.name))
            _pack(field, raw, out)
        elif not (profile.match_offset <= field.offset < match_end):
            raise PayloadError(f"{profile.name}: no value for field {field.name}")
    return bytes(out)


MALFORMED_KINDS = ("bad_hex", "odd_length", "truncated", "rssi_range")


def malformed_lines(module: str) -> dict[str, str]:
    """One damaged receive line per kind in :data:`MALFORMED_KINDS`, in ``module``'s format."""
    if module == "im920":
        return {
            "bad_hex": "00,0001,C4:1G,22",
            "odd_length": "00,0001,C4:123,22",
            "truncated": "00,0001,C4",
            "rssi_range": "00,0001,7F:11,22",
        }
    if module == "es920lr":
        return {
            "bad_hex": "-08700010002ZZ",
            "odd_length": "-08700010002ABC",
            "truncated": "-087000100",
            "rssi_range": "009900010002AB",
        }
    if module == "rak3172":
        return {
            "bad_hex": "+EVT:RXP2P:-80:7:ZZ",
            "odd_length": "+EVT:RXP2P:-80:7:ABC",
            "truncated": "+EVT:RXP2P:-80",
            "rssi_range": "+EVT:RXP2P:-300:7:AB",
        }
    raise ValueError(f"unknown module {module!r}")
