"""The command catalogue: which commands a device's hardware profile declares, and what parameters they take.

``commands_for(kind, profile)`` answers for any device of the registry; ``validate_command(kind, profile, name,
params)`` checks a command before it is queued and returns its parameters normalised (defaults filled in, whole
numbers as integers), or raises :class:`CatalogError` whose ``reason`` is ``unknown_command``, ``bad_params`` or
``out_of_range``. Sources, read from the packaged TOML files only:

* **Modbus profiles** (``hw/modbus/profiles``): each ``[commands.<name>]``. A fixed ``value`` takes no parameters;
  ``choices`` takes ``{"value": "<choice>"}``; a command without either takes ``{"value": <number or bool>}``, typed
  by its point (``bool`` for coils, whole numbers for unscaled integer registers) and ranged by the point's
  ``min``/``max`` and what its register can hold. These are the parameters the gateway's Modbus actuator reads.
* **Node profiles** (``hw/node/<name>.toml``, e.g. ``khnode``): commands with named, typed parameters, exactly as
  the node firmware accepts them.

A command marked ``confirm = true`` must be confirmed by a second person before it is sent. Pure: no I/O beyond
reading those files (once; cached).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeAlias

from hw.modbus.model import Command, DataType, Point
from hw.modbus.profile import ProfileError, list_profiles, load_profile

__all__ = [
    "NODE_PROFILES_DIR",
    "CatalogError",
    "CommandSpec",
    "ParamSpec",
    "commands_for",
    "validate_command",
]

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
JSONObject: TypeAlias = "dict[str, JSONValue]"
ParamType = Literal["bool", "int", "number", "choice"]

NODE_PROFILES_DIR: Final = Path(__file__).resolve().parent / "node"
"""Where node profiles live; a profile's name is its file name without ``.toml``."""
KIND_DEFAULTS: Final[Mapping[str, str]] = {"node": "khnode"}
"""The profile a device of this kind has when it was registered without one."""

_INTEGER_RANGES: Final = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}
_PARAM_TYPES: Final = ("bool", "int", "number", "choice")


class CatalogError(ValueError):
    """A command or its parameters do not fit the device's profile; ``reason`` is a short code, the message says
    what is wrong and what would fit."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One parameter: its type, range or choices, and whether it may be left out (then ``default`` applies)."""

    name: str
    type: ParamType
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    default: JSONValue = None
    required: bool = True
    description: str = ""
    decimals: int | None = None
    """Digits after the point the register keeps (a value finer than that cannot be written exactly)."""


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command a profile declares: its parameters and whether a second person must confirm it."""

    name: str
    profile: str
    description: str = ""
    params: Mapping[str, ParamSpec] = field(default_factory=dict)
    confirm: bool = False


# ----------------------------------------------------------------------------------------------------------------
# Modbus profiles


def _value_param(point: Point) -> ParamSpec:
    if point.type is DataType.BOOL:
        return ParamSpec("value", "bool", description=point.description)
    low: float | None = point.minimum
    high: float | None = point.maximum
    integral = point.type.is_integer and point.scale == 1 and point.offset == 0
    if point.type in _INTEGER_RANGES:
        raw_low, raw_high = _INTEGER_RANGES[point.type]
        ends = sorted((raw_low * point.scale + point.offset, raw_high * point.scale + point.offset))
        low = ends[0] if low is None else max(low, ends[0])
        high = ends[1] if high is None else min(high, ends[1])
    return ParamSpec(
        "value",
        "int" if integral else "number",
        minimum=low,
        maximum=high,
        description=f"{point.description or point.name}{f' ({point.unit})' if point.unit else ''}",
        decimals=point.decimals,
    )


def _modbus_spec(profile: str, command: Command, point: Point) -> CommandSpec:
    if command.value is not None:
        params: dict[str, ParamSpec] = {}
    elif command.choices:
        params = {"value": ParamSpec("value", "choice", choices=tuple(sorted(command.choices)))}
    else:
        params = {"value": _value_param(point)}
    return CommandSpec(command.name, profile, command.description, params, command.confirm)


@functools.cache
def _modbus(profile: str) -> Mapping[str, CommandSpec]:
    loaded = load_profile(profile)
    return {name: _modbus_spec(profile, cmd, loaded.point(cmd.point)) for name, cmd in loaded.commands.items()}


# ----------------------------------------------------------------------------------------------------------------
# Node profiles


def _number(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProfileError(f"{where}: must be a finite number, not {value!r}")
    return float(value)


def _node_param(name: str, raw: object, where: str) -> ParamSpec:
    if not isinstance(raw, dict) or raw.get("type") not in _PARAM_TYPES:
        raise ProfileError(f"{where}: must be a table with type = one of {', '.join(_PARAM_TYPES)}")
    unknown = sorted(set(raw) - {"type", "min", "max", "choices", "default", "description"})
    if unknown:
        raise ProfileError(f"{where}: unknown key {unknown[0]!r}")
    choices = raw.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise ProfileError(f"{where}: choices must be a list of strings")
    spec = ParamSpec(
        name,
        raw["type"],
        minimum=_number(raw.get("min"), f"{where}.min"),
        maximum=_number(raw.get("max"), f"{where}.max"),
        choices=tuple(choices),
        required="default" not in raw,
        description=str(raw.get("description", "")),
    )
    if "default" in raw:
        spec = dataclasses.replace(spec, default=_check(spec, raw["default"]))
    return spec


@functools.cache
def _node(profile: str) -> Mapping[str, CommandSpec]:
    path = NODE_PROFILES_DIR / f"{profile}.toml"
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    specs: dict[str, CommandSpec] = {}
    for name, raw in doc.get("commands", {}).items():
        where = f"{path.name}: command {name!r}"
        params = {p: _node_param(p, spec, f"{where} param {p!r}") for p, spec in raw.get("params", {}).items()}
        confirm = raw.get("confirm", False)
        if not isinstance(confirm, bool):
            raise ProfileError(f"{where}: confirm must be true or false")
        specs[name] = CommandSpec(name, profile, str(raw.get("description", "")), params, confirm)
    return specs


def _node_profiles() -> frozenset[str]:
    return frozenset(path.stem for path in NODE_PROFILES_DIR.glob("*.toml"))


# ----------------------------------------------------------------------------------------------------------------
# Lookup and validation


def commands_for(kind: str, profile: str | None) -> Mapping[str, CommandSpec]:
    """The commands a device of ``kind`` with hardware ``profile`` accepts (empty when its profile declares none
    or is not in the catalogue)."""
    name = profile or KIND_DEFAULTS.get(kind)
    if name is None:
        return {}
    if name in _node_profiles():
        return _node(name)
    if name in list_profiles():
        return _modbus(name)
    return {}


def _range(spec: ParamSpec) -> str:
    if spec.minimum is not None and spec.maximum is not None:
        return f"{spec.minimum:g}..{spec.maximum:g}"
    return f"at least {spec.minimum:g}" if spec.minimum is not None else f"at most {spec.maximum:g}"


def _check(spec: ParamSpec, value: object) -> JSONValue:
    where = f"parameter {spec.name!r}"
    if spec.type == "bool":
        if not isinstance(value, bool):
            raise CatalogError(f"{where} must be true or false, not {value!r}", reason="bad_params")
        return value
    if spec.type == "choice":
        if not isinstance(value, str) or value not in spec.choices:
            raise CatalogError(f"{where} must be one of {', '.join(spec.choices)}, not {value!r}", reason="bad_params")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CatalogError(f"{where} must be a number, not {value!r}", reason="bad_params")
    number: int | float = value
    if spec.type == "int":
        if number != int(number):
            raise CatalogError(f"{where} must be a whole number, not {value!r}", reason="bad_params")
        number = int(number)
    if (spec.minimum is not None and number < spec.minimum) or (spec.maximum is not None and number > spec.maximum):
        raise CatalogError(f"{where} is {number:g}, outside {_range(spec)}", reason="out_of_range")
    if spec.decimals is not None and abs(round(number, spec.decimals) - number) > 1e-9:
        step = 10.0**-spec.decimals
        raise CatalogError(
            f"{where} {number!r} is finer than the register keeps (steps of {step:g})", reason="bad_params"
        )
    return number


def validate_command(kind: str, profile: str | None, name: str, params: object) -> JSONObject:
    """The normalised parameters of command ``name`` for a device of ``kind`` and ``profile``, or
    :class:`CatalogError` saying what does not fit."""
    available = commands_for(kind, profile)
    spec = available.get(name)
    if spec is None:
        known = ", ".join(sorted(available))
        label = profile or KIND_DEFAULTS.get(kind)
        owner = f"profile {label!r}" if label else f"a {kind} without a hardware profile"
        hint = f"it has: {known}" if known else "it declares no commands (set the device's hardware profile?)"
        raise CatalogError(f"{owner} has no command {name!r}: {hint}", reason="unknown_command")
    if not isinstance(params, dict):
        raise CatalogError(f"command {name!r} takes a JSON object of parameters, not {params!r}", reason="bad_params")
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        takes = ", ".join(spec.params) or "no parameters"
        raise CatalogError(f"command {name!r} has no parameter {unknown[0]!r} (it takes {takes})", reason="bad_params")
    normalised: JSONObject = {}
    for param in spec.params.values():
        if param.name in params:
            normalised[param.name] = _check(param, params[param.name])
        elif param.required:
            raise CatalogError(f"command {name!r} needs parameter {param.name!r}", reason="bad_params")
        else:
            normalised[param.name] = param.default
    return normalised
