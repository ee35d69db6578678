"""Decoding a radio payload with its :class:`~hw.lpwa.profile.Profile`: bytes in, named values out.

``decode_payload`` is pure: it returns every field (scaled; ``int`` when the field is an unscaled integer, else
``float``) and every flag (``bool``) by name, and raises :class:`PayloadError` for a payload of the wrong length, one
that lacks the profile's match bytes, or a float field that is not a finite number.
"""

from __future__ import annotations

import math
import struct

from hw.lpwa.profile import Field, Profile

__all__ = ["PayloadError", "Value", "decode_payload", "field_value"]

Value = int | float | bool


class PayloadError(ValueError):
    """A payload does not fit its profile."""


def field_value(field: Field, raw: int | float) -> int | float:
    """Apply the field's scale to a raw struct value."""
    if field.scale == 1.0 and isinstance(raw, int):
        return raw
    return raw * field.scale


def decode_payload(profile: Profile, payload: bytes) -> dict[str, Value]:
    """Decode ``payload`` into ``{field or flag name: value}`` following ``profile``."""
    if len(payload) != profile.length:
        raise PayloadError(f"{profile.name}: payload is {len(payload)} bytes, expected {profile.length}")
    if profile.match_bytes:
        end = profile.match_offset + len(profile.match_bytes)
        found = payload[profile.match_offset : end]
        if found != profile.match_bytes:
            raise PayloadError(
                f"{profile.name}: bytes {profile.match_offset}..{end - 1} are {found.hex()}, "
                f"expected {profile.match_bytes.hex()}"
            )
    values: dict[str, Value] = {}
    for field in profile.fields:
        (raw,) = struct.unpack_from(field.struct_format, payload, field.offset)
        value = field_value(field, raw)
        if isinstance(value, float) and not math.isfinite(value):
            raise PayloadError(f"{profile.name}: field {field.name} is {value}, not a finite number")
        values[field.name] = value
        for flag in field.flags:
            values[flag.name] = bool((raw >> flag.bit) & 1)
    return values
