"""Tests of the Modbus value codec (hw.modbus.codec): pinned words for each type and order, and property tests that
every type x word order round-trips, with and without scale and offset."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw.modbus.codec import CodecError, decode_point, decode_raw, encode_point, encode_raw, shortest_float32
from hw.modbus.model import DataType, Function, Point, WordOrder

NUMERIC = [DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32, DataType.FLOAT32]
INTEGER = [DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32]
RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}
word = st.integers(min_value=0, max_value=0xFFFF)


def point(data_type: DataType, order: WordOrder = WordOrder.ABCD, scale: float = 1.0, offset: float = 0.0) -> Point:
    decimals = None
    if data_type.is_integer and (scale != 1 or offset != 0):
        decimals = max(len(repr(scale).partition(".")[2].rstrip("0")), len(repr(offset).partition(".")[2].rstrip("0")))
    function = Function.COIL if data_type is DataType.BOOL else Function.HOLDING
    return Point("x", function, 0, data_type, order, scale, offset, decimals=decimals)


@pytest.mark.parametrize(
    ("data_type", "order", "value", "words"),
    [
        (DataType.FLOAT32, WordOrder.ABCD, 100.0, [0x42C8, 0x0000]),
        (DataType.FLOAT32, WordOrder.CDAB, 100.0, [0x0000, 0x42C8]),
        (DataType.FLOAT32, WordOrder.BADC, 100.0, [0xC842, 0x0000]),
        (DataType.FLOAT32, WordOrder.DCBA, 100.0, [0x0000, 0xC842]),
        (DataType.FLOAT32, WordOrder.ABCD, 230.5, [0x4366, 0x8000]),
        (DataType.UINT32, WordOrder.ABCD, 0x12345678, [0x1234, 0x5678]),
        (DataType.UINT32, WordOrder.CDAB, 0x12345678, [0x5678, 0x1234]),
        (DataType.UINT32, WordOrder.BADC, 0x12345678, [0x3412, 0x7856]),
        (DataType.UINT32, WordOrder.DCBA, 0x12345678, [0x7856, 0x3412]),
        (DataType.INT32, WordOrder.ABCD, -2, [0xFFFF, 0xFFFE]),
        (DataType.INT32, WordOrder.CDAB, -2, [0xFFFE, 0xFFFF]),
        (DataType.INT32, WordOrder.ABCD, -(2**31), [0x8000, 0x0000]),
        (DataType.INT16, WordOrder.ABCD, -1, [0xFFFF]),
        (DataType.INT16, WordOrder.CDAB, 0x1234, [0x1234]),
        (DataType.INT16, WordOrder.BADC, 0x1234, [0x3412]),
        (DataType.UINT16, WordOrder.DCBA, 0x00FF, [0xFF00]),
        (DataType.BOOL, WordOrder.ABCD, True, [1]),
    ],
)
def test_pinned_words(data_type: DataType, order: WordOrder, value: float, words: list[int]) -> None:
    assert encode_raw(data_type, order, value) == words
    assert decode_raw(data_type, order, words) == value


@pytest.mark.parametrize(
    ("p", "words", "value"),
    [
        (point(DataType.UINT32, scale=1000.0), [0, 1234], 1_234_000),  # kWh register read as Wh
        (point(DataType.INT16, scale=0.01), [0x04D2], 12.34),  # cm register read as m
        (point(DataType.INT16, scale=0.01), [0xFFFF], -0.01),
        (point(DataType.UINT16, scale=0.1, offset=-40.0), [650], 25.0),  # a temperature with an offset
        (point(DataType.UINT32, WordOrder.CDAB, scale=0.001), [0x7607, 0x00E8], 15234.567),  # litres read as m3
        (point(DataType.FLOAT32, scale=1000.0), [0x4366, 0x8000], 230_500.0),
    ],
)
def test_scale_and_offset(p: Point, words: list[int], value: float) -> None:
    assert decode_point(p, words) == value
    assert encode_point(p, value) == words


def test_float32_reads_as_its_shortest_decimal() -> None:
    words = encode_raw(DataType.FLOAT32, WordOrder.ABCD, 100.3)
    assert decode_raw(DataType.FLOAT32, WordOrder.ABCD, words) == 100.3
    assert shortest_float32(math.inf) == math.inf


@given(data_type=st.sampled_from(NUMERIC), order=st.sampled_from(list(WordOrder)), words=st.lists(word, max_size=2))
def test_words_round_trip_for_every_type_and_order(data_type: DataType, order: WordOrder, words: list[int]) -> None:
    words = [*words, 0, 0][: data_type.width]
    p = point(data_type, order)
    value = decode_point(p, words)
    if isinstance(value, float) and not math.isfinite(value):
        with pytest.raises(CodecError):
            encode_point(p, value)
        return
    encoded = encode_point(p, value)
    if data_type is DataType.FLOAT32 and value == 0:
        assert decode_point(p, encoded) == 0  # +0.0 and -0.0 are the same reading
        return
    assert encoded == words
    assert all(0 <= w <= 0xFFFF for w in encoded)


@given(
    data_type=st.sampled_from(INTEGER),
    order=st.sampled_from(list(WordOrder)),
    scale=st.sampled_from([0.001, 0.01, 0.1, 0.5, 2.0, 10.0, 1000.0, -0.1]),
    offset=st.sampled_from([0.0, -40.0, 273.15, 0.5]),
    data=st.data(),
)
def test_scaled_integers_round_trip(
    data_type: DataType, order: WordOrder, scale: float, offset: float, data: st.DataObject
) -> None:
    low, high = RANGES[data_type]
    raw = data.draw(st.integers(min_value=low, max_value=high))
    p = point(data_type, order, scale, offset)
    words = encode_raw(data_type, order, raw)
    value = decode_point(p, words)
    assert value == pytest.approx(raw * scale + offset, rel=1e-12, abs=1e-9)
    assert encode_point(p, value) == words


@given(data_type=st.sampled_from(INTEGER), order=st.sampled_from(list(WordOrder)), data=st.data())
def test_integer_values_round_trip(data_type: DataType, order: WordOrder, data: st.DataObject) -> None:
    low, high = RANGES[data_type]
    value = data.draw(st.integers(min_value=low, max_value=high))
    p = point(data_type, order)
    assert decode_point(p, encode_point(p, value)) == value


@given(order=st.sampled_from(list(WordOrder)), value=st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_values_round_trip(order: WordOrder, value: float) -> None:
    p = point(DataType.FLOAT32, order)
    back = decode_point(p, encode_point(p, value))
    assert struct.pack(">f", back) == struct.pack(">f", value)


@given(value=st.booleans())
def test_bools_round_trip(value: bool) -> None:
    p = point(DataType.BOOL)
    assert decode_point(p, encode_point(p, value)) is value


@pytest.mark.parametrize(
    ("p", "value", "message"),
    [
        (point(DataType.UINT16), -1, "outside the uint16 range"),
        (point(DataType.INT16), 40000, "outside the int16 range"),
        (point(DataType.UINT32, scale=0.001), 5_000_000.0, "outside the uint32 range"),
        (point(DataType.FLOAT32), 1e39, "too large for float32"),
        (point(DataType.FLOAT32), math.nan, "finite number"),
        (point(DataType.INT16), True, "got the bool"),
        (point(DataType.BOOL), 2, "is a bool"),
    ],
)
def test_encode_refuses_what_does_not_fit(p: Point, value: float, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode_point(p, value)


def test_decode_refuses_the_wrong_number_of_words() -> None:
    with pytest.raises(CodecError, match="needs 2 word"):
        decode_point(point(DataType.FLOAT32), [1])
