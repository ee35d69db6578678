"""The typed model of a Modbus device profile: register tables, data types, word orders, points and commands.

These frozen dataclasses are what :mod:`hw.modbus.profile` builds from a TOML file and what the codec, the simulator
and the gateway's Modbus source consume. They hold no I/O and know nothing about pymodbus.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "Command",
    "DataType",
    "DeviceProfile",
    "Function",
    "Point",
    "PointValue",
    "SimSpec",
    "WordOrder",
]

PointValue = float | int | bool
"""A decoded engineering value: ``bool`` for coils and discrete inputs, ``int`` or ``float`` for registers."""

MAX_READ_REGISTERS = 125
"""Most holding or input registers one Modbus read may ask for (function codes 3 and 4)."""
MAX_READ_BITS = 2000
"""Most coils or discrete inputs one Modbus read may ask for (function codes 1 and 2)."""


class Function(enum.StrEnum):
    """The four Modbus data tables; the name says which read (and write) function codes reach a point."""

    HOLDING = "holding"  # read 0x03, write 0x06 / 0x10
    INPUT = "input"  # read 0x04, read-only
    COIL = "coil"  # read 0x01, write 0x05
    DISCRETE = "discrete"  # read 0x02, read-only

    @property
    def is_bits(self) -> bool:
        return self in (Function.COIL, Function.DISCRETE)

    @property
    def is_writable_table(self) -> bool:
        return self in (Function.HOLDING, Function.COIL)

    @property
    def read_code(self) -> int:
        return _READ_CODES[self]


_READ_CODES = {Function.COIL: 1, Function.DISCRETE: 2, Function.HOLDING: 3, Function.INPUT: 4}


class DataType(enum.StrEnum):
    """How the raw register words of a point are read."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    BOOL = "bool"  # one coil or discrete input

    @property
    def width(self) -> int:
        """Registers (or bits, for ``bool``) the type occupies."""
        return 2 if self in (DataType.INT32, DataType.UINT32, DataType.FLOAT32) else 1

    @property
    def is_integer(self) -> bool:
        return self in (DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32)


class WordOrder(enum.StrEnum):
    """Word and byte order of a value, naming the bytes of its big-endian form A (most significant) .. D.

    ``ABCD`` is big-endian words and bytes (the Modbus convention); ``CDAB`` swaps the two words (common on meters
    built around little-endian controllers); ``BADC`` swaps the bytes inside each word; ``DCBA`` is fully
    little-endian. For 16-bit types only the byte swap matters: ``ABCD``/``CDAB`` read ``AB``, ``BADC``/``DCBA``
    read ``BA``.
    """

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


@dataclass(frozen=True, slots=True)
class SimSpec:
    """How the simulator animates a point (ignored by the gateway).

    ``kind`` is one of ``constant`` (``value``), ``wave`` (``mean`` ± ``amplitude`` over ``period_s`` plus uniform
    ``noise``), ``counter`` (a monotonic totaliser starting at ``value`` and growing by ``rate`` per second, with the
    rate itself varying by ``amplitude`` as a fraction), ``tide`` (``mean`` ± ``amplitude`` over ``period_s`` plus a
    rain pulse of height ``rain`` every ``rain_every_s``), ``sequence`` (adds one on every read) and ``random``
    (uniform in ``low``..``high``).
    """

    kind: str
    value: float = 0.0
    mean: float = 0.0
    amplitude: float = 0.0
    period_s: float = 60.0
    noise: float = 0.0
    rate: float = 0.0
    rain: float = 0.0
    rain_every_s: float = 0.0
    low: float = 0.0
    high: float = 1.0


@dataclass(frozen=True, slots=True)
class Point:
    """One named quantity of a device: where it lives, how to decode it, and what it means.

    The engineering value is ``raw * scale + offset`` in ``unit`` (a SenML unit symbol). ``writable`` points may be
    set through the gateway, within ``minimum``..``maximum`` when given, and are read back after a write
    (``verify_readback`` makes a differing read-back an error). A numeric value above ``alarm_above`` or below
    ``alarm_below`` — or a bool equal to ``alarm_when`` — is reported as an alarm instead of telemetry.
    """

    name: str
    function: Function
    address: int
    type: DataType
    order: WordOrder = WordOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    description: str = ""
    writable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    verify_readback: bool = True
    alarm_above: float | None = None
    alarm_below: float | None = None
    alarm_when: bool | None = None
    sim: SimSpec | None = None
    decimals: int | None = None  # digits kept after scaling an integer register (derived from ``scale``)

    @property
    def count(self) -> int:
        """Registers (or bits) the point occupies."""
        return self.type.width

    @property
    def end(self) -> int:
        """The first address after the point."""
        return self.address + self.type.width

    def is_alarm(self, value: PointValue) -> bool:
        """Whether ``value`` crosses one of this point's alarm thresholds."""
        if isinstance(value, bool):
            return self.alarm_when is not None and value is self.alarm_when
        return (self.alarm_above is not None and value > self.alarm_above) or (
            self.alarm_below is not None and value < self.alarm_below
        )


@dataclass(frozen=True, slots=True)
class Command:
    """A named action on a writable point: a fixed ``value``, a ``choices`` map from argument to value, or neither
    (the command's argument is the value, e.g. a setpoint).

    Examples: a valve's ``open`` is ``point = "valve_open", value = true``; a gauge's ``set_mode`` is
    ``point = "mode", choices = {normal = 0, flood = 1}``; ``set_sample_interval`` is only
    ``point = "sample_interval"``. ``confirm`` marks a command a second person must confirm before it is sent.
    """

    name: str
    point: str
    value: PointValue | None = None
    choices: Mapping[str, PointValue] = field(default_factory=dict)
    description: str = ""
    confirm: bool = False

    def resolve(self, argument: PointValue | str | None = None) -> PointValue:
        """The value to write for this command, given its argument when it takes one."""
        if self.value is not None:
            return self.value
        if self.choices:
            if not isinstance(argument, str) or argument not in self.choices:
                allowed = ", ".join(sorted(self.choices))
                raise ValueError(f"command {self.name!r} takes one of: {allowed} (got {argument!r})")
            return self.choices[argument]
        if argument is None or isinstance(argument, str):
            raise ValueError(f"command {self.name!r} takes the value to write as its argument (got {argument!r})")
        return argument


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """A device model: identification, default poll interval, read limits, points and commands."""

    name: str
    manufacturer: str
    model: str
    description: str
    poll_interval_s: float
    points: tuple[Point, ...]
    commands: Mapping[str, Command] = field(default_factory=dict)
    max_gap: int = 8
    max_read: int = MAX_READ_REGISTERS
    path: Path | None = None

    def point(self, name: str) -> Point:
        """The point called ``name``; :class:`KeyError` naming the known points if there is none."""
        for point in self.points:
            if point.name == name:
                return point
        known = ", ".join(p.name for p in self.points)
        raise KeyError(f"profile {self.name!r} has no point {name!r} (known: {known})")

    @property
    def point_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.points)
