"""Payload profiles: how a device's radio payload bytes become named values, described as data in TOML.

A profile is a fixed-length struct: fields at byte offsets with a type (int8 … uint32, float32), byte order, scale and
unit; integer fields may carry bit flags. Optional keys: ``match`` (bytes the payload must carry, to tell message types
apart), ``id_field`` (the field that identifies the device, for devices keyed by payload rather than radio sender),
``time_field`` (epoch seconds from the device's own clock) and alarm thresholds. ``docs/lpwa.md`` has the full format;
``hw/lpwa/profiles/`` has the shipped ones. A new device needs only a new TOML file.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "BUILTIN_PROFILE_DIR",
    "FIELD_TYPES",
    "Field",
    "Flag",
    "Profile",
    "ProfileError",
    "builtin_profiles",
    "load_profile",
    "load_profile_dir",
    "parse_profile",
]

BUILTIN_PROFILE_DIR: Final = Path(__file__).with_name("profiles")

FieldType = Literal["int8", "uint8", "int16", "uint16", "int32", "uint32", "float32"]
Endian = Literal["big", "little"]
Priority = Literal["telemetry", "event", "alarm"]

FIELD_TYPES: Final[dict[str, tuple[str, int]]] = {
    "int8": ("b", 1),
    "uint8": ("B", 1),
    "int16": ("h", 2),
    "uint16": ("H", 2),
    "int32": ("i", 4),
    "uint32": ("I", 4),
    "float32": ("f", 4),
}
"""Field type → (struct format character, size in bytes)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9./_-]{0,63}")  # the wire contract's quantity syntax
_PROFILE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_LENGTH: Final = 255


class ProfileError(ValueError):
    """A profile description is invalid; the message names the key and the fix."""


@dataclass(frozen=True, slots=True)
class Flag:
    """One bit of an integer field; ``priority`` applies to its reading while the bit is set."""

    name: str
    bit: int
    priority: Priority | None = None


@dataclass(frozen=True, slots=True)
class Field:
    """One value at a byte offset of the payload."""

    name: str
    offset: int
    type: FieldType
    endian: Endian = "big"
    scale: float = 1.0
    unit: str | None = None
    quantity: str | None = None
    reading: bool = True
    alarm_above: float | None = None
    alarm_below: float | None = None
    flags: tuple[Flag, ...] = ()

    @property
    def size(self) -> int:
        return FIELD_TYPES[self.type][1]

    @property
    def struct_format(self) -> str:
        return (">" if self.endian == "big" else "<") + FIELD_TYPES[self.type][0]

    @property
    def is_integer(self) -> bool:
        return self.type != "float32"


@dataclass(frozen=True, slots=True)
class Profile:
    """A device payload format."""

    name: str
    length: int
    fields: tuple[Field, ...]
    description: str = ""
    priority: Priority = "telemetry"
    match_offset: int = 0
    match_bytes: bytes = b""
    id_field: str | None = None
    time_field: str | None = None

    def field(self, name: str) -> Field:
        for candidate in self.fields:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    def identifies(self, payload: bytes) -> bool:
        """Whether ``payload`` looks like this profile's message: its match bytes if it has some, else its length."""
        if self.match_bytes:
            end = self.match_offset + len(self.match_bytes)
            return payload[self.match_offset : end] == self.match_bytes
        return len(payload) == self.length

    def format_id(self, value: int) -> str:
        """The device key for an ``id_field`` value: upper-case hex, zero-padded to the field's width."""
        if self.id_field is None:
            raise ProfileError(f"profile {self.name} has no id_field")
        return f"{value:0{2 * self.field(self.id_field).size}X}"


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in doc:
        if default is ...:
            raise ProfileError(f"{where}: missing key {key!r}")
        return default
    value = doc[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ProfileError(f"{where}.{key}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        wanted = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProfileError(f"{where}.{key}: expected {wanted}, got {value!r}")
    return value


def _check_keys(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ProfileError(f"{where}: unknown key {unknown[0]!r}: use one of {', '.join(sorted(allowed))}")


def _name(doc: Mapping[str, Any], key: str, where: str) -> str:
    value: str = _get(doc, key, str, where)
    if not _NAME.fullmatch(value):
        raise ProfileError(f"{where}.{key}: {value!r} must be 1-64 of A-Z a-z 0-9 . / _ - starting with a letter/digit")
    return value


def _priority(doc: Mapping[str, Any], key: str, where: str, allowed: tuple[str, ...]) -> Any:
    value = _get(doc, key, str, where, None)
    if value is not None and value not in allowed:
        raise ProfileError(f"{where}.{key}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _flag(doc: Any, where: str, field_bits: int) -> Flag:
    if not isinstance(doc, dict):
        raise ProfileError(f"{where}: expected a table with name and bit")
    _check_keys(doc, {"name", "bit", "priority"}, where)
    bit: int = _get(doc, "bit", int, where)
    if not 0 <= bit < field_bits:
        raise ProfileError(f"{where}.bit: {bit} is outside 0..{field_bits - 1} for this field's type")
    return Flag(_name(doc, "name", where), bit, _priority(doc, "priority", where, ("event", "alarm")))


_FIELD_KEYS = {
    "name",
    "offset",
    "type",
    "endian",
    "scale",
    "unit",
    "quantity",
    "reading",
    "alarm_above",
    "alarm_below",
    "flags",
}


def _field(doc: Any, where: str, default_endian: Endian) -> Field:
    if not isinstance(doc, dict):
        raise ProfileError(f"{where}: expected a table with name, offset and type")
    _check_keys(doc, _FIELD_KEYS, where)
    type_: str = _get(doc, "type", str, where)
    if type_ not in FIELD_TYPES:
        raise ProfileError(f"{where}.type: {type_!r} is not one of {', '.join(FIELD_TYPES)}")
    endian: str = _get(doc, "endian", str, where, default_endian)
    if endian not in ("big", "little"):
        raise ProfileError(f"{where}.endian: {endian!r} must be big or little")
    scale = float(_get(doc, "scale", (int, float), where, 1.0))
    if not math.isfinite(scale) or scale == 0:
        raise ProfileError(f"{where}.scale: must be a finite non-zero number")
    offset: int = _get(doc, "offset", int, where)
    if offset < 0:
        raise ProfileError(f"{where}.offset: must be 0 or more")
    flags_doc = _get(doc, "flags", list, where, [])
    if flags_doc and type_ == "float32":
        raise ProfileError(f"{where}.flags: only integer fields carry bit flags")
    bits = FIELD_TYPES[type_][1] * 8
    thresholds = {key: _get(doc, key, (int, float), where, None) for key in ("alarm_above", "alarm_below")}
    unit = _get(doc, "unit", str, where, None)
    if unit is not None and not 1 <= len(unit) <= 64:
        raise ProfileError(f"{where}.unit: must be 1-64 characters")
    return Field(
        name=_name(doc, "name", where),
        offset=offset,
        type=type_,  # type: ignore[arg-type]
        endian=endian,  # type: ignore[arg-type]
        scale=scale,
        unit=unit,
        quantity=_name(doc, "quantity", where) if "quantity" in doc else None,
        reading=_get(doc, "reading", bool, where, True),
        alarm_above=None if thresholds["alarm_above"] is None else float(thresholds["alarm_above"]),
        alarm_below=None if thresholds["alarm_below"] is None else float(thresholds["alarm_below"]),
        flags=tuple(_flag(flag, f"{where}.flags[{i}]", bits) for i, flag in enumerate(flags_doc)),
    )


def _role_field(
    doc: Mapping[str, Any], key: str, fields: tuple[Field, ...], types: tuple[str, ...], where: str
) -> str | None:
    """Check that ``doc[key]`` (if set) names an unscaled field of one of ``types``."""
    name: str | None = _get(doc, key, str, where, None)
    if name is not None:
        field = next((f for f in fields if f.name == name), None)
        if field is None or field.type not in types or field.scale != 1.0:
            raise ProfileError(f"{where}.{key}: {name!r} must name an unscaled {'/'.join(types)} field")
    return name


_PROFILE_KEYS = {"name", "description", "length", "endian", "priority", "match", "id_field", "time_field", "fields"}


def parse_profile(doc: Mapping[str, Any], where: str = "profile") -> Profile:
    """Build a :class:`Profile` from a parsed TOML document, checking every key."""
    _check_keys(doc, _PROFILE_KEYS, where)
    name: str = _get(doc, "name", str, where)
    if not _PROFILE_NAME.fullmatch(name):
        raise ProfileError(f"{where}.name: {name!r} must be lowercase letters, digits and '-' (like watch-tag-v1)")
    where = f"profile {name}"
    length: int = _get(doc, "length", int, where)
    if not 1 <= length <= _MAX_LENGTH:
        raise ProfileError(f"{where}.length: {length} is outside 1..{_MAX_LENGTH} bytes")
    endian = _get(doc, "endian", str, where, "big")
    if endian not in ("big", "little"):
        raise ProfileError(f"{where}.endian: {endian!r} must be big or little")
    fields_doc = _get(doc, "fields", list, where)
    if not fields_doc:
        raise ProfileError(f"{where}.fields: a profile needs at least one [[fields]] table")
    fields = tuple(_field(f, f"{where}.fields[{i}]", endian) for i, f in enumerate(fields_doc))
    names: set[str] = set()
    for index, field in enumerate(fields):
        if field.offset + field.size > length:
            raise ProfileError(
                f"{where}.fields[{index}] ({field.name}): bytes {field.offset}..{field.offset + field.size - 1} "
                f"run past the payload length {length}: fix offset or length"
            )
        for name_ in (field.name, *(flag.name for flag in field.flags)):
            if name_ in names:
                raise ProfileError(f"{where}: name {name_!r} is used twice: give each field and flag its own name")
            names.add(name_)
    match_offset, match_bytes = 0, b""
    if "match" in doc:
        match = _get(doc, "match", dict, where)
        _check_keys(match, {"offset", "hex"}, f"{where}.match")
        match_offset = _get(match, "offset", int, f"{where}.match", 0)
        match_hex: str = _get(match, "hex", str, f"{where}.match")
        try:
            match_bytes = bytes.fromhex(match_hex)
        except ValueError:
            raise ProfileError(f'{where}.match.hex: must be hex bytes such as "01"') from None
        if not match_bytes or match_offset < 0 or match_offset + len(match_bytes) > length:
            raise ProfileError(f"{where}.match: bytes must be non-empty and inside the payload length {length}")
    id_field = _role_field(doc, "id_field", fields, ("uint8", "uint16", "uint32"), where)
    time_field = _role_field(doc, "time_field", fields, ("uint32", "int32"), where)
    return Profile(
        name=name,
        length=length,
        fields=fields,
        description=_get(doc, "description", str, where, ""),
        priority=_priority(doc, "priority", where, ("telemetry", "event")) or "telemetry",
        match_offset=match_offset,
        match_bytes=match_bytes,
        id_field=id_field,
        time_field=time_field,
    )


def load_profile(path: Path) -> Profile:
    """Load one profile TOML file; its ``name`` must equal the file name without ``.toml``."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"cannot read profile {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {path} is not valid TOML: {exc}") from None
    profile = parse_profile(doc, where=str(path))
    if profile.name != path.stem:
        raise ProfileError(f"{path}: name {profile.name!r} must match the file name: rename one of them")
    return profile


def load_profile_dir(directory: Path) -> dict[str, Profile]:
    """Load every ``*.toml`` profile in ``directory``, by name."""
    if not directory.is_dir():
        raise ProfileError(f"profile directory {directory} does not exist: create it or fix the path")
    return {profile.name: profile for profile in map(load_profile, sorted(directory.glob("*.toml")))}


@functools.cache
def _builtin() -> dict[str, Profile]:
    return load_profile_dir(BUILTIN_PROFILE_DIR)


def builtin_profiles() -> dict[str, Profile]:
    """The profiles shipped in ``hw/lpwa/profiles/`` (read once), by name."""
    return dict(_builtin())
