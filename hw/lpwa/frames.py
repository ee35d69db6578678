"""Receive-frame decoders for the 920 MHz serial radio modules: one pure function per module format.

Each decoder takes one line the module printed on its UART (terminator already removed) and returns a
:class:`RadioFrame`, ``None`` when the line is not a receive frame (``OK``, ``NG``, echoes, boot banners, other events),
or raises :class:`FrameError` when the line is a receive frame that cannot be decoded (bad hex, odd length, missing
fields, RSSI or SNR out of range). No other exception escapes a decoder.

Formats (see ``docs/lpwa.md`` for sources and for what is assumed rather than verified):

* Interplan IM920 / IM920sL / IM920c, hex data mode (``DCIO``): ``NN,SSSS,RR:D1,D2,...`` where ``NN`` is the node
  number (classic IM920) or a dummy ``00`` (IM920sL), ``SSSS`` the sender (unique id, or node number on IM920sL),
  ``RR`` the RSSI as a two's-complement byte in dBm, and ``Dn`` the data bytes in hex.
* EASEL ES920LR with ``rssi 1`` and ``rcvid 1``: ``RRRRPPPPSSSS<payload>``: RSSI as four characters (``-087``), PAN id
  and sender own id as four hex digits each, then the payload. The module's ASCII format cannot carry CR/LF, so by this
  project's convention devices send their binary payload as hex text.
* RAKwireless RAK3172 LoRa P2P, RUI3 firmware: ``+EVT:RXP2P:<rssi>:<snr>:<hex>``. The older (pre-RUI3) AT firmware
  prints two lines, ``+EVT:RXP2P, RSSI <rssi>, SNR <snr>`` then ``+EVT:<hex>``; :class:`Rak3172Assembler` joins them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "RSSI_MAX_DBM",
    "RSSI_MIN_DBM",
    "SNR_MAX_DB",
    "SNR_MIN_DB",
    "FrameError",
    "ModuleName",
    "RadioFrame",
    "Rak3172Assembler",
    "parse_es920lr",
    "parse_im920",
    "parse_rak3172_p2p",
]

ModuleName = Literal["im920", "es920lr", "rak3172"]

RSSI_MIN_DBM: Final = -174
"""Lowest plausible RSSI (the thermal noise floor per hertz); anything lower is a corrupt frame."""
RSSI_MAX_DBM: Final = 10
"""Highest plausible RSSI at a 920 MHz receiver (transmitters are limited to 13 dBm in Japan)."""
SNR_MIN_DB: Final = -40
SNR_MAX_DB: Final = 40
"""Plausible LoRa SNR range (demodulation works down to about -20 dB at SF12)."""


class FrameError(ValueError):
    """A line that is a receive frame but cannot be decoded."""


@dataclass(frozen=True, slots=True)
class RadioFrame:
    """One received radio frame: who sent it (if the module says), its payload and the link quality."""

    module: ModuleName
    sender: str | None
    payload: bytes
    rssi_dbm: int
    snr_db: float | None = None


_HEX = frozenset("0123456789abcdefABCDEF")


def _hex_payload(text: str, what: str) -> bytes:
    """Decode a run of hex digits; empty, odd-length or non-hex text is a :class:`FrameError`."""
    if not text:
        raise FrameError(f"{what}: no payload")
    if not _HEX.issuperset(text):
        raise FrameError(f"{what}: payload is not hex")
    if len(text) % 2:
        raise FrameError(f"{what}: payload has an odd number of hex digits ({len(text)})")
    return bytes.fromhex(text)


def _check_rssi(rssi: int, what: str) -> int:
    if not RSSI_MIN_DBM <= rssi <= RSSI_MAX_DBM:
        raise FrameError(f"{what}: RSSI {rssi} dBm is outside {RSSI_MIN_DBM}..{RSSI_MAX_DBM}")
    return rssi


def _check_snr(snr: int, what: str) -> float:
    if not SNR_MIN_DB <= snr <= SNR_MAX_DB:
        raise FrameError(f"{what}: SNR {snr} dB is outside {SNR_MIN_DB}..{SNR_MAX_DB}")
    return float(snr)


# --- IM920 ------------------------------------------------------------------------------------------------------

_IM920_CANDIDATE = re.compile(r"[0-9A-Fa-f]{2},")
_IM920_HEADER = re.compile(r"([0-9A-Fa-f]{2}),([0-9A-Fa-f]{4}),([0-9A-Fa-f]{2})")
_IM920_BYTE = re.compile(r"[0-9A-Fa-f]{2}")


def parse_im920(line: str) -> RadioFrame | None:
    """Decode an IM920 receive line ``NN,SSSS,RR:D1,D2,...`` (hex data mode); ``None`` for any other line."""
    if not _IM920_CANDIDATE.match(line):
        return None
    header, colon, data = line.partition(":")
    match = _IM920_HEADER.fullmatch(header)
    if match is None or not colon:
        raise FrameError("im920: expected NN,SSSS,RR:<data> (node, sender, RSSI, then hex bytes)")
    if not data:
        raise FrameError("im920: no payload")
    parts = data.split(",")
    if not all(_IM920_BYTE.fullmatch(part) for part in parts):
        raise FrameError("im920: data must be comma-separated two-digit hex bytes (is the module in DCIO mode?)")
    raw = int(match.group(3), 16)
    rssi = _check_rssi(raw - 256 if raw >= 128 else raw, "im920")
    return RadioFrame("im920", match.group(2).upper(), bytes.fromhex("".join(parts)), rssi)


# --- ES920LR ----------------------------------------------------------------------------------------------------

_ES920LR_CANDIDATE = re.compile(r" *[-+]?[0-9]")
_ES920LR_RSSI = re.compile(r" *[-+]?[0-9]{1,4}")
_ES920LR_IDS = re.compile(r"[0-9A-Fa-f]{8}")


def parse_es920lr(line: str) -> RadioFrame | None:
    """Decode an ES920LR receive line ``RRRRPPPPSSSS<hex payload>`` (RSSI and ID output on); ``None`` otherwise."""
    if not _ES920LR_CANDIDATE.match(line):
        return None
    if len(line) < 12:
        raise FrameError(f"es920lr: frame too short ({len(line)} characters, need RSSI + PAN id + sender + payload)")
    rssi_text, ids = line[:4], line[4:12]
    if not _ES920LR_RSSI.fullmatch(rssi_text):
        raise FrameError("es920lr: RSSI field is not a number")
    if not _ES920LR_IDS.fullmatch(ids):
        raise FrameError("es920lr: PAN id and sender must be four hex digits each")
    rssi = _check_rssi(int(rssi_text), "es920lr")
    return RadioFrame("es920lr", ids[4:].upper(), _hex_payload(line[12:], "es920lr"), rssi)


# --- RAK3172 LoRa P2P -------------------------------------------------------------------------------------------

_RAK_PREFIX = "+EVT:RXP2P"
_RAK_LINE = re.compile(r"\+EVT:RXP2P:(-?[0-9]{1,4}):(-?[0-9]{1,3}):(.*)")
_RAK_LEGACY_HEADER = re.compile(r"\+EVT:RXP2P, ?RSSI:? (-?[0-9]{1,4}), ?SNR:? (-?[0-9]{1,3})")
_RAK_LEGACY_PAYLOAD = re.compile(r"\+EVT:([0-9A-Fa-f]+)")
_RAK_STATUS = "+EVT:RXP2P RECEIVE"  # status events: RECEIVE TIMEOUT, RECEIVE ERROR


def _rak_frame(rssi: str, snr: str, payload: str) -> RadioFrame:
    return RadioFrame(
        "rak3172",
        None,
        _hex_payload(payload, "rak3172"),
        _check_rssi(int(rssi), "rak3172"),
        _check_snr(int(snr), "rak3172"),
    )


def parse_rak3172_p2p(lines: str | Sequence[str]) -> RadioFrame | None:
    """Decode a RAK3172 P2P receive event: one RUI3 line, or the older firmware's (header, payload) pair.

    A lone old-style header (``+EVT:RXP2P, RSSI -97, SNR 6``) is a :class:`FrameError` here, since its payload is on
    the next line: feed lines one by one to :class:`Rak3172Assembler` instead.
    """
    if isinstance(lines, str):
        line = lines
    else:
        if len(lines) == 2:
            header = _RAK_LEGACY_HEADER.fullmatch(lines[0])
            payload = _RAK_LEGACY_PAYLOAD.fullmatch(lines[1])
            if header is None or payload is None:
                raise FrameError("rak3172: expected '+EVT:RXP2P, RSSI <n>, SNR <n>' then '+EVT:<hex>'")
            return _rak_frame(header.group(1), header.group(2), payload.group(1))
        if len(lines) != 1:
            raise FrameError(f"rak3172: a receive event is one or two lines, not {len(lines)}")
        line = lines[0]
    if not line.startswith(_RAK_PREFIX) or line.startswith(_RAK_STATUS):
        return None
    match = _RAK_LINE.fullmatch(line)
    if match is not None:
        return _rak_frame(match.group(1), match.group(2), match.group(3))
    if _RAK_LEGACY_HEADER.fullmatch(line):
        raise FrameError("rak3172: RSSI/SNR line without its payload line (use Rak3172Assembler)")
    raise FrameError("rak3172: expected +EVT:RXP2P:<rssi>:<snr>:<hex payload>")


class Rak3172Assembler:
    """Feeds RAK3172 output line by line and returns frames in either firmware's format.

    The old firmware's header line is held until its ``+EVT:<hex>`` payload line arrives. A header followed by
    anything else is reported as a :class:`FrameError` (its payload was lost).
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: str | None = None

    def feed(self, line: str) -> RadioFrame | None:
        pending, self._pending = self._pending, None
        header = _RAK_LEGACY_HEADER.fullmatch(line)
        if header is not None:
            _check_rssi(int(header.group(1)), "rak3172")
            _check_snr(int(header.group(2)), "rak3172")
            self._pending = line
            if pending is not None:
                raise FrameError("rak3172: RSSI/SNR line without its payload line")
            return None
        if _RAK_LEGACY_PAYLOAD.fullmatch(line):
            if pending is None:
                raise FrameError("rak3172: payload line without its RSSI/SNR line")
            return parse_rak3172_p2p((pending, line))
        frame = parse_rak3172_p2p(line)
        if pending is not None and frame is None:
            raise FrameError("rak3172: RSSI/SNR line without its payload line")
        return frame
