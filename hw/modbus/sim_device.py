"""One simulated Modbus device: a profile brought to life as a pymodbus ``SimDevice`` with an ``action`` hook.

The device keeps each point's value itself (so state survives a server restart): read-only points are animated and
re-encoded into the register block on every read that touches them; writable points hold what was last written.
A write must cover whole writable points (else exception 0x02, illegal address) and respect their min/max (else
0x03, illegal value) — what real meters and gauges answer.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from hw.modbus.codec import CodecError, decode_point, encode_point, encode_raw
from hw.modbus.model import DataType, DeviceProfile, Function, Point, PointValue
from hw.modbus.sim_values import Animator, make_animator

__all__ = ["FUNCTION_OF_CODE", "SimulatedDevice"]

FUNCTION_OF_CODE: dict[int, Function] = {
    1: Function.COIL,
    5: Function.COIL,
    15: Function.COIL,
    2: Function.DISCRETE,
    3: Function.HOLDING,
    6: Function.HOLDING,
    16: Function.HOLDING,
    22: Function.HOLDING,
    23: Function.HOLDING,
    4: Function.INPUT,
}
"""Which table each data-access function code reaches."""

_TABLE_ORDER = (Function.COIL, Function.DISCRETE, Function.HOLDING, Function.INPUT)
_INT_LIMITS: dict[DataType, tuple[int, int]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}


def _words(point: Point, value: PointValue) -> list[int]:
    """The point's words for ``value``, clamped to what its type can hold (an animation may overshoot)."""
    try:
        return encode_point(point, value)
    except CodecError:
        if point.type is DataType.FLOAT32 or isinstance(value, bool):
            raise
        low, high = _INT_LIMITS[point.type]
        raw = round((value - point.offset) / point.scale)
        return encode_raw(point.type, point.order, min(high, max(low, raw)))


class SimulatedDevice:
    """A profile's points at one unit id: values, animation, and the pymodbus device description."""

    def __init__(self, unit: int, profile: DeviceProfile, rng: random.Random, clock: Callable[[], float]) -> None:
        if not 1 <= unit <= 247:
            raise ValueError(f"unit id {unit} is outside 1..247")
        self.unit = unit
        self.profile = profile
        self._clock = clock
        self._tables: dict[Function, list[Point]] = {
            f: sorted((p for p in profile.points if p.function is f), key=lambda p: p.address) for f in Function
        }
        self._animators: dict[str, Animator] = {p.name: make_animator(p, rng) for p in profile.points}
        self._values: dict[str, PointValue] = {}  # writable points and pinned values
        for point in profile.points:
            if point.writable:
                self._values[point.name] = self._animators[point.name](0.0)

    @property
    def functions(self) -> frozenset[Function]:
        """The tables this device has points in (requests to other tables are refused)."""
        return frozenset(f for f, points in self._tables.items() if points)

    def value(self, name: str) -> PointValue:
        """The point's value now: as stored (writable or pinned) or as animated at this moment."""
        point = self.profile.point(name)
        if point.name in self._values:
            return self._values[point.name]
        return decode_point(point, _words(point, self._animators[point.name](self._clock())))

    def pin(self, name: str, value: PointValue | None) -> None:
        """Show ``value`` for the point from now on (``None`` resumes the animation of a read-only point)."""
        point = self.profile.point(name)
        if value is None:
            if not point.writable:
                self._values.pop(point.name, None)
            return
        encode_point(point, value)  # refuses a value the point cannot hold
        self._values[point.name] = value

    def sim_device(self) -> SimDevice:
        """A fresh pymodbus device description carrying the current values, with this device's action hook."""
        blocks = tuple(self._block(f) for f in _TABLE_ORDER)
        return SimDevice(
            id=self.unit,
            simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
            action=functools.partial(SimulatedDevice._action, self),
        )

    def _current(self, point: Point, t: float) -> PointValue:
        stored = self._values.get(point.name)
        return self._animators[point.name](t) if stored is None else stored

    def _block(self, function: Function) -> list[SimData]:
        points = self._tables[function]
        if not points:
            # pymodbus needs an entry per table; requests to an empty table are refused before they reach it.
            if function.is_bits:
                return [SimData(0, values=[False], datatype=SimType.BITS)]
            return [SimData(0, datatype=SimType.INVALID)]
        start, end = points[0].address, max(p.end for p in points)
        t = self._clock()
        if function.is_bits:
            bits = [False] * (end - start)
            for point in points:
                bits[point.address - start] = bool(self._current(point, t))
            return [SimData(start, values=bits, datatype=SimType.BITS)]
        words = [0] * (end - start)
        for point in points:
            words[point.address - start : point.end - start] = _words(point, self._current(point, t))
        return [SimData(start, values=words, datatype=SimType.REGISTERS)]

    async def _action(
        self,
        function_code: int,
        start: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        function = FUNCTION_OF_CODE.get(function_code)
        if function is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is not None:
            return self._write(function, address, set_values)
        if function.is_bits:
            self._refresh_bits(function, start, address, count, registers)
        else:
            self._refresh_words(function, start, address, count, registers)
        return None

    def _refresh_words(self, function: Function, start: int, address: int, count: int, registers: list[int]) -> None:
        t = self._clock()
        end = address + count
        for point in self._tables[function]:
            if point.address < end and point.end > address:
                offset = point.address - start
                registers[offset : offset + point.count] = _words(point, self._current(point, t))

    def _refresh_bits(self, function: Function, start: int, address: int, words: int, registers: list[int]) -> None:
        first = (address // 16) * 16
        end = first + 16 * words
        t = self._clock()
        for point in self._tables[function]:
            if first <= point.address < end:
                index, bit = divmod(point.address, 16)
                mask = 1 << bit
                if self._current(point, t):
                    registers[index - start] |= mask
                else:
                    registers[index - start] &= ~mask & 0xFFFF

    def _write(self, function: Function, address: int, values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        end = address + len(values)
        touched = [p for p in self._tables[function] if p.address < end and p.end > address]
        covered = sum(p.count for p in touched)
        whole = bool(touched) and touched[0].address == address and covered == len(values)
        if not whole or any(not p.writable for p in touched):
            return ExcCodes.ILLEGAL_ADDRESS
        updates: dict[str, PointValue] = {}
        for point in touched:
            words = [int(v) for v in values[point.address - address : point.end - address]]
            value = decode_point(point, words)
            if not isinstance(value, bool) and (
                (point.minimum is not None and value < point.minimum)
                or (point.maximum is not None and value > point.maximum)
            ):
                return ExcCodes.ILLEGAL_VALUE
            updates[point.name] = value
        self._values.update(updates)
        return None
