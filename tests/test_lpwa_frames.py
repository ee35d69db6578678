"""LPWA receive-frame decoders: real lines per module, malformed frames, fuzzing and build → parse round trips."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw.lpwa.build import (
    MALFORMED_KINDS,
    build_es920lr,
    build_im920,
    build_lines,
    build_rak3172_p2p,
    build_rak3172_p2p_legacy,
    malformed_lines,
)
from hw.lpwa.frames import (
    RSSI_MAX_DBM,
    FrameError,
    RadioFrame,
    Rak3172Assembler,
    parse_es920lr,
    parse_im920,
    parse_rak3172_p2p,
)
from hw.lpwa.modules import MODULES, P2PRadio

PARSERS: dict[str, Callable[[str], RadioFrame | None]] = {
    "im920": parse_im920,
    "es920lr": parse_es920lr,
    "rak3172": parse_rak3172_p2p,
}

# (module, line, expected frame or None): lines as the modules print them (receive frames, replies, banners, events).
REAL_LINES: list[tuple[str, str, RadioFrame | None]] = [
    (
        "im920",
        "00,06E5,B5:0A,1F,76,00,00,00,00,00",
        RadioFrame("im920", "06E5", bytes.fromhex("0A1F760000000000"), -75),
    ),
    ("im920", "00,0001,C4:11,22,33", RadioFrame("im920", "0001", b"\x11\x22\x33", -60)),
    ("im920", "01,A0B1,C8:31,32,33", RadioFrame("im920", "A0B1", b"123", -56)),
    ("im920", "00,a0b1,00:ff", RadioFrame("im920", "A0B1", b"\xff", 0)),
    ("im920", "00,0002,80:01", RadioFrame("im920", "0002", b"\x01", -128)),
    ("im920", "OK", None),
    ("im920", "NG", None),
    ("im920", "A0B1", None),  # RDID reply
    ("im920", "GRNOREGD", None),
    ("im920", "IM920sL VER.01.05", None),
    ("im920", "", None),
    ("es920lr", "-08700010002A1B2", RadioFrame("es920lr", "0002", b"\xa1\xb2", -87)),
    ("es920lr", "-1200001ffff0102030405", RadioFrame("es920lr", "FFFF", bytes.fromhex("0102030405"), -120)),
    ("es920lr", " -4500011111AB", RadioFrame("es920lr", "1111", b"\xab", -45)),
    ("es920lr", "OK", None),
    ("es920lr", "NG 101", None),
    ("es920lr", "Select Mode [1.terminal or 2.processor]", None),
    ("es920lr", "----- operation mode is ready -----", None),
    ("es920lr", "", None),
    ("rak3172", "+EVT:RXP2P:-97:6:53503407A1B2C3D4", RadioFrame("rak3172", None, b"SP4\x07\xa1\xb2\xc3\xd4", -97, 6.0)),
    ("rak3172", "+EVT:RXP2P:-120:-11:0a0B", RadioFrame("rak3172", None, b"\x0a\x0b", -120, -11.0)),
    ("rak3172", "+EVT:RXP2P:-44:12:31323334", RadioFrame("rak3172", None, b"1234", -44, 12.0)),
    ("rak3172", "OK", None),
    ("rak3172", "AT_PARAM_ERROR", None),
    ("rak3172", "AT_BUSY_ERROR", None),
    ("rak3172", "+EVT:TXP2P DONE", None),
    ("rak3172", "+EVT:RXP2P RECEIVE TIMEOUT", None),
    ("rak3172", "+EVT:RXP2P RECEIVE ERROR", None),
    ("rak3172", "+EVT:JOINED", None),
    ("rak3172", "AT+PRECV=65534", None),  # echo with ATE on
    ("rak3172", "RAKwireless RAK3172-E Example", None),
    ("rak3172", "", None),
]

MALFORMED: list[tuple[str, str]] = [
    *((module, line) for module in PARSERS for line in malformed_lines(module).values()),
    ("im920", "00,0001,C4:"),
    ("im920", "00,0001:11"),
    ("im920", "00,00G1,C4:11"),
    ("im920", "00,0001,C4:11,,22"),
    ("im920", "00,0001,C4:112233"),
    ("es920lr", "-087ZZZZ0002AB"),
    ("es920lr", "-0870001000"),
    ("es920lr", "-08700010002"),
    ("es920lr", "-8x700010002AB"),
    ("es920lr", "-999000100020A"),
    ("rak3172", "+EVT:RXP2P:-97:6:"),
    ("rak3172", "+EVT:RXP2P:-97:99:AB"),
    ("rak3172", "+EVT:RXP2P:abc:6:AB"),
    ("rak3172", "+EVT:RXP2P, RSSI -110, SNR 5"),  # the old firmware's header alone: its payload is on the next line
]


@pytest.mark.parametrize(("module", "line", "expected"), REAL_LINES)
def test_real_lines(module: str, line: str, expected: RadioFrame | None) -> None:
    assert PARSERS[module](line) == expected


@pytest.mark.parametrize(("module", "line"), MALFORMED)
def test_malformed_receive_frames_raise_frame_error(module: str, line: str) -> None:
    with pytest.raises(FrameError):
        PARSERS[module](line)


def test_malformed_lines_cover_every_kind() -> None:
    for module in PARSERS:
        assert tuple(malformed_lines(module)) == MALFORMED_KINDS


def test_rak3172_legacy_pair() -> None:
    pair = ("+EVT:RXP2P, RSSI -110, SNR 5", "+EVT:00112233")
    assert parse_rak3172_p2p(pair) == RadioFrame("rak3172", None, bytes.fromhex("00112233"), -110, 5.0)
    with pytest.raises(FrameError):
        parse_rak3172_p2p(("+EVT:RXP2P, RSSI -110, SNR 5", "+EVT:TXP2P DONE"))
    with pytest.raises(FrameError):
        parse_rak3172_p2p(("+EVT:RXP2P:-97:6:AB", "+EVT:AB", "+EVT:AB"))


def test_rak3172_assembler_joins_both_formats() -> None:
    assembler = Rak3172Assembler()
    assert assembler.feed("+EVT:RXP2P, RSSI -54, SNR 11") is None
    assert assembler.feed("+EVT:A1B2") == RadioFrame("rak3172", None, b"\xa1\xb2", -54, 11.0)
    assert assembler.feed("+EVT:RXP2P:-60:3:FF") == RadioFrame("rak3172", None, b"\xff", -60, 3.0)
    assert assembler.feed("OK") is None


@pytest.mark.parametrize(
    ("lines", "error_at"),
    [
        (["+EVT:A1B2"], 0),  # payload without header
        (["+EVT:RXP2P, RSSI -54, SNR 11", "OK"], 1),  # header whose payload was lost
        (["+EVT:RXP2P, RSSI -54, SNR 11", "+EVT:RXP2P, RSSI -50, SNR 9"], 1),
        (["+EVT:RXP2P, RSSI -54, SNR 11", "+EVT:ABC"], 1),  # odd payload
        (["+EVT:RXP2P, RSSI -400, SNR 11"], 0),
    ],
)
def test_rak3172_assembler_reports_broken_pairs(lines: list[str], error_at: int) -> None:
    assembler = Rak3172Assembler()
    for index, line in enumerate(lines):
        if index == error_at:
            with pytest.raises(FrameError):
                assembler.feed(line)
        else:
            assert assembler.feed(line) is None


def test_rak3172_assembler_recovers_after_an_orphan_header() -> None:
    assembler = Rak3172Assembler()
    assembler.feed("+EVT:RXP2P, RSSI -54, SNR 11")
    with pytest.raises(FrameError):
        assembler.feed("+EVT:RXP2P, RSSI -50, SNR 9")
    assert assembler.feed("+EVT:0102") == RadioFrame("rak3172", None, b"\x01\x02", -50, 9.0)


# --- fuzzing: anything in, only None | RadioFrame | FrameError out -----------------------------------------------

_FRAMEISH = st.text(alphabet="0123456789ABCDEFabcdefXZ,:+- EVTRXPSIN\r\x00é", max_size=60)
_PREFIXES = st.sampled_from(
    ["", "00,", "00,0001,C4:", "-087", "-08700010002", "+EVT:", "+EVT:RXP2P:", "+EVT:RXP2P, RSSI "]
)
_ANY_LINE = st.one_of(st.text(max_size=80), st.builds(str.__add__, _PREFIXES, _FRAMEISH))


def _outcome(parse: Callable[[str], RadioFrame | None], line: str) -> RadioFrame | FrameError | None:
    try:
        return parse(line)
    except FrameError as exc:
        return exc


@given(_ANY_LINE)
def test_fuzz_parsers_only_return_none_frame_or_frame_error(line: str) -> None:
    for module, parse in PARSERS.items():
        result = _outcome(parse, line)
        assert result is None or isinstance(result, FrameError | RadioFrame)
        if isinstance(result, RadioFrame):
            assert result.module == module
            assert result.payload
            assert result.rssi_dbm <= RSSI_MAX_DBM


@given(st.lists(_ANY_LINE, max_size=8))
def test_fuzz_rak3172_assembler(lines: list[str]) -> None:
    assembler = Rak3172Assembler()
    for line in lines:
        result = _outcome(assembler.feed, line)
        assert result is None or isinstance(result, FrameError | RadioFrame)


# --- round trips with the builders the simulator uses ------------------------------------------------------------

_SENDERS = st.text(alphabet="0123456789ABCDEF", min_size=4, max_size=4)
_PAYLOADS = st.binary(min_size=1, max_size=64)


@given(_SENDERS, _PAYLOADS, st.integers(-128, RSSI_MAX_DBM))
def test_im920_round_trip(sender: str, payload: bytes, rssi: int) -> None:
    assert parse_im920(build_im920(sender, payload, rssi)) == RadioFrame("im920", sender, payload, rssi)


@given(_SENDERS, _PAYLOADS, st.integers(-174, RSSI_MAX_DBM))
def test_es920lr_round_trip(sender: str, payload: bytes, rssi: int) -> None:
    assert parse_es920lr(build_es920lr(sender, payload, rssi)) == RadioFrame("es920lr", sender, payload, rssi)


@given(_PAYLOADS, st.integers(-174, RSSI_MAX_DBM), st.integers(-40, 40))
def test_rak3172_round_trip_both_formats(payload: bytes, rssi: int, snr: int) -> None:
    expected = RadioFrame("rak3172", None, payload, rssi, float(snr))
    assert parse_rak3172_p2p(build_rak3172_p2p(payload, rssi, snr)) == expected
    assert parse_rak3172_p2p(build_rak3172_p2p_legacy(payload, rssi, snr)) == expected
    assembler = Rak3172Assembler()
    header, data = build_rak3172_p2p_legacy(payload, rssi, snr)
    assert assembler.feed(header) is None
    assert assembler.feed(data) == expected


@given(st.sampled_from(sorted(MODULES)), _SENDERS, _PAYLOADS, st.integers(-128, RSSI_MAX_DBM), st.booleans())
def test_build_lines_decodes_with_the_module_decoder(
    module: str, sender: str, payload: bytes, rssi: int, legacy: bool
) -> None:
    spec = MODULES[module]
    frame = RadioFrame(spec.name, sender if spec.has_sender else None, payload, rssi, None if spec.has_sender else 4.0)
    decoder = spec.new_decoder()
    results = [decoder.feed(line) for line in build_lines(frame, legacy=legacy)]
    assert results[-1] == frame
    assert all(result is None for result in results[:-1])


# --- the module table ---------------------------------------------------------------------------------------------


def test_module_table() -> None:
    assert MODULES["im920"].init_commands() == ("DCIO",)
    assert MODULES["es920lr"].init_commands() == ("2", "rssi 1", "rcvid 1", "format 1", "start")
    radio = P2PRadio(frequency_hz=923_200_000, spreading_factor=10, bandwidth_khz=125, preamble=8, tx_power_dbm=13)
    assert MODULES["rak3172"].init_commands(radio) == (
        "AT",
        "AT+NWM=0",
        "AT+PRECV=0",
        "AT+P2P=923200000:10:125:0:8:13",
        "AT+PRECV=65534",
    )
    assert {spec.default_baudrate for spec in MODULES.values()} == {19_200, 115_200}
    for spec in MODULES.values():
        assert spec.is_reply(spec.ok_reply)
        assert not spec.is_error(spec.ok_reply)
        assert spec.is_reply(spec.error_example)
        assert spec.is_error(spec.error_example)
        assert not spec.is_reply("+EVT:TXP2P DONE")
