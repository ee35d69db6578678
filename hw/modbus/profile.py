"""Load and validate Modbus device profiles: TOML files in ``hw/modbus/profiles/`` (or anywhere, by path).

``load_profile("sdm120")`` returns the frozen :class:`~hw.modbus.model.DeviceProfile` of the shipped profile,
``load_profile("/etc/kakehashi/my-meter.toml")`` loads a site's own. Every mistake is reported as one
:class:`ProfileError` line naming the file, the point (or key) and the fix, e.g. ``sdm120.toml: point 'voltage':
unknown type 'float'; use one of int16, uint16, int32, uint32, float32, bool``. See ``docs/modbus.md`` for the format.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from hw.modbus.model import (
    MAX_READ_REGISTERS,
    Command,
    DataType,
    DeviceProfile,
    Function,
    Point,
    PointValue,
    SimSpec,
    WordOrder,
)

__all__ = ["PROFILES_DIR", "SENML_UNITS", "ProfileError", "list_profiles", "load_profile", "parse_profile"]

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
"""Where the shipped profiles live; a profile's name is its file name without ``.toml``."""

SENML_UNITS = frozenset(
    {
        # RFC 8428 primary units
        *("m", "kg", "g", "s", "A", "K", "cd", "mol", "Hz", "rad", "sr", "N", "Pa", "J", "W", "C", "V", "F", "Ohm"),
        *("S", "Wb", "T", "H", "Cel", "lm", "lx", "Bq", "Gy", "Sv", "kat", "m2", "m3", "l", "m/s", "m/s2", "m3/s"),
        *("l/s", "W/m2", "cd/m2", "bit", "bit/s", "lat", "lon", "pH", "dB", "dBW", "count", "/", "%", "%RH"),
        *("%EL", "EL", "1/s", "1/min", "S/m"),
        # RFC 8798 primary additions
        *("B", "VA", "VAs", "var", "vars", "J/m", "kg/m3", "deg"),
        # RFC 8798 secondary units (linear transforms of primary ones)
        *("ms", "min", "h", "kW", "kVA", "kvar", "Ah", "Wh", "kWh", "varh", "kvarh", "kVAh", "mV", "mA", "hPa"),
        *("mm", "cm", "km", "mm/h", "m/h", "ppm"),
    }
)
"""Unit symbols a point may use: SenML-registered units (RFC 8428, RFC 8798). Convert others with ``scale``."""

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PROFILE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_TOP_KEYS = frozenset(
    {"manufacturer", "model", "description", "poll_interval_s", "max_gap", "max_read", "defaults", "points"}
    | {"commands"}
)
_DEFAULT_KEYS = frozenset({"function", "type", "order"})
_POINT_KEYS = frozenset(
    {"name", "function", "address", "type", "order", "scale", "offset", "unit", "description", "writable"}
    | {"min", "max", "verify_readback", "alarm_above", "alarm_below", "alarm_when", "sim"}
)
_COMMAND_KEYS = frozenset({"point", "value", "choices", "description", "confirm"})
_SIM_KEYS: dict[str, frozenset[str]] = {
    "constant": frozenset({"value"}),
    "wave": frozenset({"mean", "amplitude", "period_s", "noise"}),
    "counter": frozenset({"value", "rate", "amplitude", "period_s"}),
    "tide": frozenset({"mean", "amplitude", "period_s", "noise", "rain", "rain_every_s"}),
    "sequence": frozenset({"value"}),
    "random": frozenset({"low", "high"}),
}


class ProfileError(ValueError):
    """A profile cannot be found or is invalid; the message is one line naming the file, the place and the fix."""


def _one_of(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def _decimals(number: float) -> int:
    exponent = Decimal(repr(float(number))).normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


class _Reader:
    """Validates one parsed TOML document; every error names ``where`` and says how to fix it."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, where: str, problem: str) -> ProfileError:
        return ProfileError(f"{self.file}: {where}: {problem}" if where else f"{self.file}: {problem}")

    def unknown_keys(self, where: str, table: Mapping[str, Any], allowed: frozenset[str]) -> None:
        extra = sorted(set(table) - allowed)
        if extra:
            raise self.fail(where, f"unknown key {extra[0]!r}; use only {_one_of(sorted(allowed))}")

    def text(self, where: str, table: Mapping[str, Any], key: str, default: str | None = None) -> str:
        value = table.get(key, default)
        if not isinstance(value, str) or (default is None and not value.strip()):
            raise self.fail(where, f"{key} must be a non-empty string")
        return value

    def number(self, where: str, table: Mapping[str, Any], key: str, default: float | None = None) -> float | None:
        value = table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(where, f"{key} must be a finite number, not {value!r}")
        return float(value)

    def flag(self, where: str, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(where, f"{key} must be true or false, not {value!r}")
        return value

    def choice(self, where: str, value: object, key: str, allowed: type[Function | DataType | WordOrder]) -> Any:
        try:
            return allowed(value if isinstance(value, str) else "")
        except ValueError:
            raise self.fail(where, f"unknown {key} {value!r}; use one of {_one_of(m.value for m in allowed)}") from None

    def profile(self, name: str, doc: Mapping[str, Any], path: Path | None) -> DeviceProfile:
        self.unknown_keys("", doc, _TOP_KEYS)
        poll = self.number("", doc, "poll_interval_s", 10.0)
        if poll is None or poll <= 0:
            raise self.fail("", f"poll_interval_s must be above 0 seconds, not {poll!r}")
        max_gap = doc.get("max_gap", 8)
        if isinstance(max_gap, bool) or not isinstance(max_gap, int) or not 0 <= max_gap <= 64:
            raise self.fail("", f"max_gap must be a whole number of registers from 0 to 64, not {max_gap!r}")
        max_read = doc.get("max_read", MAX_READ_REGISTERS)
        if isinstance(max_read, bool) or not isinstance(max_read, int) or not 2 <= max_read <= MAX_READ_REGISTERS:
            raise self.fail("", f"max_read must be 2..{MAX_READ_REGISTERS} registers per request, not {max_read!r}")
        defaults = doc.get("defaults", {})
        if not isinstance(defaults, dict):
            raise self.fail("defaults", "must be a table such as defaults = { function = 'input', type = 'float32' }")
        self.unknown_keys("defaults", defaults, _DEFAULT_KEYS)
        raw_points = doc.get("points")
        if not isinstance(raw_points, list) or not raw_points:
            raise self.fail("", "no points; add at least one [[points]] table with name, function, address, type")
        points = tuple(self.point(i, raw, defaults) for i, raw in enumerate(raw_points))
        self.check_layout(points)
        raw_commands = doc.get("commands", {})
        if not isinstance(raw_commands, dict):
            raise self.fail("commands", "must be a table of [commands.<name>] tables")
        by_name = {p.name: p for p in points}
        commands = {cname: self.command(cname, raw, by_name) for cname, raw in raw_commands.items()}
        return DeviceProfile(
            name=name,
            manufacturer=self.text("", doc, "manufacturer"),
            model=self.text("", doc, "model"),
            description=self.text("", doc, "description", ""),
            poll_interval_s=poll,
            points=points,
            commands=commands,
            max_gap=max_gap,
            max_read=max_read,
            path=path,
        )

    def point(self, index: int, raw: object, defaults: Mapping[str, Any]) -> Point:
        if not isinstance(raw, dict):
            raise self.fail(f"points[{index}]", "must be a table ([[points]])")
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise self.fail(
                f"points[{index}]", f"name {name!r} must be 1-64 of a-z, 0-9, '_' starting with a letter (a quantity)"
            )
        where = f"point {name!r}"
        self.unknown_keys(where, raw, _POINT_KEYS)
        merged = {**defaults, **raw}
        if "function" not in merged:
            raise self.fail(where, "no function; set function = holding, input, coil or discrete")
        function: Function = self.choice(where, merged["function"], "function", Function)
        if "type" not in merged and function.is_bits:
            merged["type"] = "bool"
        if "type" not in merged:
            raise self.fail(where, f"no type; set type to one of {_one_of(t.value for t in DataType)}")
        data_type: DataType = self.choice(where, merged["type"], "type", DataType)
        if function.is_bits != (data_type is DataType.BOOL):
            fix = "use type = 'bool'" if function.is_bits else "use a coil or discrete function for a bool"
            raise self.fail(where, f"type {data_type.value} does not fit the {function.value} table; {fix}")
        order: WordOrder = self.choice(where, merged.get("order", "ABCD"), "order", WordOrder)
        address = raw.get("address")
        if isinstance(address, bool) or not isinstance(address, int):
            raise self.fail(
                where, f"address must be a whole number 0..65535 (0-based protocol address), not {address!r}"
            )
        if not 0 <= address <= 0xFFFF - data_type.width + 1:
            raise self.fail(
                where,
                f"address {address} is out of range; type {data_type.value} needs {data_type.width} register(s) within "
                "0..65535 (0-based protocol address: register 40001 is holding address 0)",
            )
        scale = self.number(where, raw, "scale", 1.0) or 0.0
        offset = self.number(where, raw, "offset", 0.0) or 0.0
        if scale == 0:
            raise self.fail(where, "scale must not be 0; use a multiplier such as 0.01 or 1000")
        if data_type is DataType.BOOL and (scale != 1 or offset != 0):
            raise self.fail(where, "a bool point takes no scale or offset; remove them")
        unit = raw.get("unit")
        if unit is not None and unit not in SENML_UNITS:
            raise self.fail(
                where,
                f"unit {unit!r} is not a SenML unit; use one of {_one_of(sorted(SENML_UNITS))} and convert with "
                "scale (kWh -> Wh: scale = 1000; m3/h -> l/s: scale = 0.2777777777777778)",
            )
        writable = self.flag(where, raw, "writable", False)
        if writable and not function.is_writable_table:
            raise self.fail(
                where, f"the {function.value} table is read-only; only holding and coil points can be written"
            )
        minimum = self.number(where, raw, "min")
        maximum = self.number(where, raw, "max")
        if (minimum is not None or maximum is not None) and not writable:
            raise self.fail(where, "min/max bound writes; set writable = true or remove them")
        if (minimum is not None or maximum is not None) and data_type is DataType.BOOL:
            raise self.fail(where, "a bool point takes no min/max; remove them")
        if minimum is not None and maximum is not None and minimum > maximum:
            raise self.fail(where, f"min {minimum} is above max {maximum}; swap them")
        alarm_above = self.number(where, raw, "alarm_above")
        alarm_below = self.number(where, raw, "alarm_below")
        alarm_when = raw.get("alarm_when")
        if data_type is DataType.BOOL and (alarm_above is not None or alarm_below is not None):
            raise self.fail(where, "a bool point alarms with alarm_when = true|false, not alarm_above/alarm_below")
        if alarm_when is not None and (data_type is not DataType.BOOL or not isinstance(alarm_when, bool)):
            raise self.fail(where, "alarm_when is for bool points and must be true or false; use alarm_above/below")
        decimals = None
        if data_type.is_integer and (scale != 1 or offset != 0):
            decimals = max(_decimals(scale), _decimals(offset))
        return Point(
            name=name,
            function=function,
            address=address,
            type=data_type,
            order=order,
            scale=scale,
            offset=offset,
            unit=unit,
            description=self.text(where, raw, "description", ""),
            writable=writable,
            minimum=minimum,
            maximum=maximum,
            verify_readback=self.flag(where, raw, "verify_readback", True),
            alarm_above=alarm_above,
            alarm_below=alarm_below,
            alarm_when=alarm_when,
            sim=self.sim(where, raw.get("sim")),
            decimals=decimals,
        )

    def sim(self, where: str, raw: object) -> SimSpec | None:
        if raw is None:
            return None
        if not isinstance(raw, dict) or raw.get("kind") not in _SIM_KEYS:
            raise self.fail(where, f"sim must be a table with kind = one of {_one_of(_SIM_KEYS)}")
        kind = raw["kind"]
        self.unknown_keys(f"{where} sim", raw, _SIM_KEYS[kind] | {"kind"})
        values = {key: self.number(f"{where} sim", raw, key) for key in raw if key != "kind"}
        spec = SimSpec(kind=kind, **{k: v for k, v in values.items() if v is not None})
        if spec.period_s <= 0 or (kind == "random" and spec.low > spec.high):
            raise self.fail(f"{where} sim", "period_s must be above 0 and low must not exceed high")
        return spec

    def check_layout(self, points: tuple[Point, ...]) -> None:
        seen: set[str] = set()
        for point in points:
            if point.name in seen:
                raise self.fail(f"point {point.name!r}", "is defined twice; give each point its own name")
            seen.add(point.name)
        for function in Function:
            table = sorted((p for p in points if p.function is function), key=lambda p: p.address)
            for before, after in itertools.pairwise(table):
                if after.address < before.end:
                    raise self.fail(
                        f"point {after.name!r}",
                        f"{function.value} address {after.address} overlaps point {before.name!r} "
                        f"({before.address}..{before.end - 1}); move one of them",
                    )

    def command(self, name: str, raw: object, points: Mapping[str, Point]) -> Command:
        where = f"command {name!r}"
        if not _NAME.fullmatch(name):
            raise self.fail(where, "command names are 1-64 of a-z, 0-9, '_' starting with a letter")
        if not isinstance(raw, dict):
            raise self.fail(where, "must be a table with point and optionally value or choices")
        self.unknown_keys(where, raw, _COMMAND_KEYS)
        point_name = raw.get("point")
        point = points.get(point_name) if isinstance(point_name, str) else None
        if point is None:
            raise self.fail(where, f"point {point_name!r} is not a point of this profile; use one of {_one_of(points)}")
        if not point.writable:
            raise self.fail(where, f"point {point.name!r} is not writable; set writable = true on it")
        description = self.text(where, raw, "description", "")
        confirm = self.flag(where, raw, "confirm", False)
        if "value" in raw and "choices" in raw:
            raise self.fail(where, "give value = <v> or choices = { <argument> = <v>, ... }, not both")
        if "value" in raw:
            value = self.command_value(where, point, raw["value"])
            return Command(name, point.name, value, description=description, confirm=confirm)
        if "choices" not in raw:
            return Command(name, point.name, description=description, confirm=confirm)
        choices = raw["choices"]
        if not isinstance(choices, dict) or not choices:
            raise self.fail(where, "choices must be a non-empty table such as { normal = 0, flood = 1 }")
        resolved = {arg: self.command_value(f"{where} choice {arg!r}", point, v) for arg, v in choices.items()}
        return Command(name, point.name, None, resolved, description=description, confirm=confirm)

    def command_value(self, where: str, point: Point, value: object) -> PointValue:
        if point.type is DataType.BOOL:
            if not isinstance(value, bool):
                raise self.fail(where, f"point {point.name!r} is a bool; use true or false, not {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, f"point {point.name!r} is {point.type.value}; use a number, not {value!r}")
        if (point.minimum is not None and value < point.minimum) or (
            point.maximum is not None and value > point.maximum
        ):
            bounds = f"{point.minimum}..{point.maximum}"
            raise self.fail(where, f"value {value} is outside the min..max of {point.name!r} ({bounds})")
        return value


def parse_profile(name: str, text: str, path: Path | None = None) -> DeviceProfile:
    """Validate the TOML ``text`` of a profile called ``name`` (errors name ``path`` or ``<name>.toml``)."""
    file = path.name if path is not None else f"{name}.toml"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{file}: not valid TOML: {exc}; fix the syntax at that line") from None
    return _Reader(file).profile(name, doc, path)


def list_profiles() -> list[str]:
    """The names of the shipped profiles, sorted."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """The profile called ``name_or_path`` (a shipped profile) or stored at that path (anything with ``/`` or
    ``.toml``). Shipped profiles are parsed once and cached."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith(".toml"):
        path = Path(name_or_path)
        try:
            content = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"{path}: cannot read the profile ({exc.strerror}); check the path") from None
        return parse_profile(path.stem, content, path)
    return _shipped(text)


@functools.lru_cache(maxsize=64)
def _shipped(name: str) -> DeviceProfile:
    path = PROFILES_DIR / f"{name}.toml"
    if not _PROFILE_NAME.fullmatch(name) or not path.is_file():
        known = _one_of(list_profiles())
        raise ProfileError(f"no Modbus profile {name!r}; use one of {known} or a path to a .toml file")
    return parse_profile(name, path.read_text(encoding="utf-8"), path)
