"""The BLE format table (``formats.toml``) loaded once into typed constants for the decoders and the simulator.

The table holds what is data rather than logic: company ids, service UUIDs, Eddystone frame types and lengths, the
BTHome v2 object table (id, size, sign, scale, SenML unit) and the patterns a passive BlueZ scan filters on.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal, cast

ObjectKind = Literal["number", "binary", "event", "info", "packet_id", "text", "raw"]
_KINDS: Final = frozenset({"number", "binary", "event", "info", "packet_id", "text", "raw"})


@dataclass(frozen=True, slots=True)
class BTHomeObjectSpec:
    """One BTHome v2 object id: how many bytes its value takes (0 = length-prefixed) and how to scale it."""

    object_id: int
    name: str
    kind: ObjectKind
    size: int
    signed: bool
    factor: float
    digits: int  # decimal places implied by factor, to round away binary floating-point noise
    unit: str | None


@dataclass(frozen=True, slots=True)
class PassivePattern:
    """A BlueZ advertisement-monitor "or pattern": ``content`` at ``start`` in the data of an AD structure."""

    format: str
    start: int
    ad_type: int
    content: bytes


def _digits(factor: float) -> int:
    text = repr(factor)
    return len(text.partition(".")[2]) if "." in text and factor != int(factor) else 0


def _object(raw: dict[str, Any]) -> BTHomeObjectSpec:
    kind = raw["kind"]
    if kind not in _KINDS:
        raise ValueError(f"formats.toml: BTHome object {raw['id']:#04x} has unknown kind {kind!r}")
    factor = float(raw.get("factor", 1))
    return BTHomeObjectSpec(
        object_id=int(raw["id"]),
        name=str(raw["name"]),
        kind=cast(ObjectKind, kind),
        size=int(raw["size"]),
        signed=bool(raw.get("signed", False)),
        factor=factor,
        digits=_digits(factor),
        unit=raw.get("unit"),
    )


def _codes(table: dict[str, str]) -> dict[int, str]:
    return {int(code, 16): name for code, name in table.items()}


def _load() -> dict[str, Any]:
    text = resources.files(__package__ or "hw.ble").joinpath("formats.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


_TABLE: Final = _load()

IBEACON_COMPANY_ID: Final[int] = _TABLE["ibeacon"]["company_id"]
IBEACON_TYPE: Final[int] = _TABLE["ibeacon"]["type"]
IBEACON_LENGTH: Final[int] = _TABLE["ibeacon"]["length"]

ALTBEACON_CODE: Final[bytes] = int(_TABLE["altbeacon"]["beacon_code"]).to_bytes(2, "big")
ALTBEACON_LENGTH: Final[int] = _TABLE["altbeacon"]["length"]

_E: Final = _TABLE["eddystone"]
EDDYSTONE_UUID: Final[str] = _E["service_uuid"]
EDDYSTONE_UID: Final[int] = _E["uid"]
EDDYSTONE_URL: Final[int] = _E["url"]
EDDYSTONE_TLM: Final[int] = _E["tlm"]
EDDYSTONE_EID: Final[int] = _E["eid"]
EDDYSTONE_UID_LENGTHS: Final[frozenset[int]] = frozenset(_E["uid_lengths"])
EDDYSTONE_URL_LENGTHS: Final[range] = range(_E["url_min_length"], _E["url_max_length"] + 1)
EDDYSTONE_EID_LENGTH: Final[int] = _E["eid_length"]
EDDYSTONE_TLM_PLAIN: Final[tuple[int, int]] = (_E["tlm_plain_version"], _E["tlm_plain_length"])
EDDYSTONE_TLM_ENCRYPTED: Final[tuple[int, int]] = (_E["tlm_encrypted_version"], _E["tlm_encrypted_length"])

_B: Final = _TABLE["bthome"]
BTHOME_UUID: Final[str] = _B["service_uuid"]
BTHOME_VERSION: Final[int] = _B["version"]
BTHOME_ENCRYPTION_FLAG: Final[int] = _B["encryption_flag"]
BTHOME_TRIGGER_FLAG: Final[int] = _B["trigger_flag"]
BTHOME_ENCRYPTED_MIN_LENGTH: Final[int] = _B["encrypted_min_length"]
BTHOME_OBJECTS: Final[dict[int, BTHomeObjectSpec]] = {spec.object_id: spec for spec in map(_object, _B["objects"])}
BTHOME_BUTTON_EVENTS: Final[dict[int, str]] = _codes(_B["button_events"])
BTHOME_DIMMER_EVENTS: Final[dict[int, str]] = _codes(_B["dimmer_events"])

PASSIVE_PATTERNS: Final[tuple[PassivePattern, ...]] = tuple(
    PassivePattern(p["format"], int(p["start"]), int(p["ad_type"]), bytes.fromhex(p["content"]))
    for p in _TABLE["passive_scan"]
)

SIG_BASE_UUID_SUFFIX: Final = "-0000-1000-8000-00805f9b34fb"
"""A 16-bit SIG UUID ``xxxx`` is ``0000xxxx`` + this suffix in bleak's 128-bit string form."""
