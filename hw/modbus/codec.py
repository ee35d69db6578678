"""The pure Modbus value codec: register words to engineering values and back, for every type and word order.

``decode_point(point, registers)`` reads the point's raw value from its words (16-bit integers 0..65535, or 0/1 for
a coil or discrete input), then applies ``raw * scale + offset``. ``encode_point(point, value)`` is the inverse and
refuses values the point's type cannot hold. Integer points keep the decimals their scale implies (``scale = 0.01``
gives two), so ``1234 * 0.01`` reads 12.34 rather than 12.340000000000002; float32 values are given as the
shortest decimal that maps to the same float32, so 100.3 reads 100.3 rather than 100.30000305175781. Both choices
keep ``encode_point(decode_point(words))`` equal to ``words``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence

from hw.modbus.model import DataType, Point, PointValue, WordOrder

__all__ = ["CodecError", "decode_point", "decode_raw", "encode_point", "encode_raw", "shortest_float32"]


class CodecError(ValueError):
    """A value does not fit the point's type, or the words given are not the point's words."""


_F32 = struct.Struct(">f")
_U32 = struct.Struct(">I")


def _swap(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


# Logical 32-bit value (A B C D, A most significant) from the two words as they arrive, per order.
_JOIN32: dict[WordOrder, Callable[[int, int], int]] = {
    WordOrder.ABCD: lambda w0, w1: (w0 << 16) | w1,
    WordOrder.CDAB: lambda w0, w1: (w1 << 16) | w0,
    WordOrder.BADC: lambda w0, w1: (_swap(w0) << 16) | _swap(w1),
    WordOrder.DCBA: lambda w0, w1: (_swap(w1) << 16) | _swap(w0),
}
# And back: the two words to send for a logical 32-bit value.
_SPLIT32: dict[WordOrder, Callable[[int], list[int]]] = {
    WordOrder.ABCD: lambda v: [v >> 16, v & 0xFFFF],
    WordOrder.CDAB: lambda v: [v & 0xFFFF, v >> 16],
    WordOrder.BADC: lambda v: [_swap(v >> 16), _swap(v & 0xFFFF)],
    WordOrder.DCBA: lambda v: [_swap(v & 0xFFFF), _swap(v >> 16)],
}
_BYTE_SWAPPED = frozenset({WordOrder.BADC, WordOrder.DCBA})
_INT_RANGES: dict[DataType, tuple[int, int]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}


def shortest_float32(value: float) -> float:
    """The shortest decimal that is the same float32 as ``value`` (non-finite values are returned unchanged)."""
    if not math.isfinite(value):
        return value
    packed = _F32.pack(value)
    for digits in (6, 7, 8):
        candidate = float(f"{value:.{digits}g}")
        if _F32.pack(candidate) == packed:
            return candidate
    return value


def _check_words(data_type: DataType, registers: Sequence[int]) -> None:
    if len(registers) != data_type.width:
        raise CodecError(f"{data_type.value} needs {data_type.width} word(s), got {len(registers)}")


def decode_raw(data_type: DataType, order: WordOrder, registers: Sequence[int]) -> int | float | bool:
    """The raw value of ``registers`` read as ``data_type`` in ``order`` (no scale or offset)."""
    _check_words(data_type, registers)
    if data_type is DataType.BOOL:
        return bool(registers[0])
    if data_type.width == 1:
        word = registers[0]
        if order in _BYTE_SWAPPED:
            word = _swap(word)
        return word - 0x10000 if data_type is DataType.INT16 and word & 0x8000 else word
    joined = _JOIN32[order](registers[0], registers[1])
    if data_type is DataType.FLOAT32:
        return shortest_float32(_F32.unpack(_U32.pack(joined))[0])
    if data_type is DataType.INT32 and joined & 0x80000000:
        return joined - 0x100000000
    return joined


def encode_raw(data_type: DataType, order: WordOrder, raw: int | float | bool) -> list[int]:
    """The words that carry ``raw`` as ``data_type`` in ``order``; :class:`CodecError` if it does not fit."""
    if data_type is DataType.BOOL:
        return [1 if raw else 0]
    if data_type is DataType.FLOAT32:
        try:
            joined = _U32.unpack(_F32.pack(float(raw)))[0]
        except OverflowError:
            raise CodecError(f"{raw!r} is too large for float32") from None
        return _SPLIT32[order](joined)
    low, high = _INT_RANGES[data_type]
    if isinstance(raw, float) and not raw.is_integer():
        raise CodecError(f"{raw!r} is not a whole number, as {data_type.value} needs")
    number = int(raw)
    if not low <= number <= high:
        raise CodecError(f"{number} is outside the {data_type.value} range {low}..{high}")
    unsigned = number & 0xFFFFFFFF if data_type.width == 2 else number & 0xFFFF
    if data_type.width == 1:
        return [_swap(unsigned) if order in _BYTE_SWAPPED else unsigned]
    return _SPLIT32[order](unsigned)


def decode_point(point: Point, registers: Sequence[int]) -> PointValue:
    """The engineering value of ``point`` from its words: ``raw * scale + offset``."""
    raw = decode_raw(point.type, point.order, registers)
    if isinstance(raw, bool) or (point.scale == 1 and point.offset == 0):
        return raw
    value = raw * point.scale + point.offset
    return value if point.decimals is None else round(value, point.decimals)


def encode_point(point: Point, value: PointValue) -> list[int]:
    """The words that make ``point`` read ``value``: ``(value - offset) / scale``, rounded for integer types."""
    if point.type is DataType.BOOL:
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise CodecError(f"point {point.name!r} is a bool; got {value!r}")
        return [1 if value else 0]
    if isinstance(value, bool):
        raise CodecError(f"point {point.name!r} is {point.type.value}; got the bool {value!r}")
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise CodecError(f"point {point.name!r} needs a finite number; got {value!r}")
    raw: float | int = value
    if point.scale != 1 or point.offset != 0:
        raw = (value - point.offset) / point.scale
    if point.type.is_integer:
        raw = round(raw)
    return encode_raw(point.type, point.order, raw)
