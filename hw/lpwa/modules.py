"""The module table: for each supported 920 MHz serial module, how to talk to it and how to read what it prints.

``MODULES[name]`` gives the line decoder, the command terminator, the factory UART speed, the replies that mean
success or failure, and the initialisation commands that put the module in receive mode with RSSI output on.
Initialisation is idempotent and does not write the module's flash unless the module insists on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from hw.lpwa.frames import ModuleName, RadioFrame, Rak3172Assembler, parse_es920lr, parse_im920

__all__ = ["MODULES", "LineDecoder", "ModuleSpec", "P2PRadio", "StatelessDecoder"]


class LineDecoder(Protocol):
    """Turns module output lines into frames; ``None`` for lines that are not frames; raises ``FrameError``."""

    def feed(self, line: str) -> RadioFrame | None: ...


class StatelessDecoder:
    """A :class:`LineDecoder` over a pure one-line parser."""

    __slots__ = ("_parse",)

    def __init__(self, parse: Callable[[str], RadioFrame | None]) -> None:
        self._parse = parse

    def feed(self, line: str) -> RadioFrame | None:
        return self._parse(line)


@dataclass(frozen=True, slots=True)
class P2PRadio:
    """LoRa P2P radio parameters of a RAK3172 (RUI3 ``AT+P2P`` order: freq, SF, BW, CR, preamble, power)."""

    frequency_hz: int = 920_600_000
    spreading_factor: int = 7
    bandwidth_khz: int = 125
    coding_rate: int = 0  # 0 = 4/5, 1 = 4/6, 2 = 4/7, 3 = 4/8
    preamble: int = 8
    tx_power_dbm: int = 13

    def at_command(self) -> str:
        return (
            f"AT+P2P={self.frequency_hz}:{self.spreading_factor}:{self.bandwidth_khz}:{self.coding_rate}:"
            f"{self.preamble}:{self.tx_power_dbm}"
        )


@dataclass(frozen=True, slots=True)
class ModuleSpec:
    """How to drive one kind of module over its UART."""

    name: ModuleName
    title: str
    new_decoder: Callable[[], LineDecoder]
    terminator: str
    default_baudrate: int
    ok_reply: str
    error_prefixes: tuple[str, ...]
    error_example: str
    init: Callable[[P2PRadio | None], tuple[str, ...]]
    has_sender: bool

    def init_commands(self, radio: P2PRadio | None = None) -> tuple[str, ...]:
        """The commands to send after opening the port, in order; each is answered by OK or an error."""
        return self.init(radio)

    def is_reply(self, line: str) -> bool:
        """Whether ``line`` answers a command (success or failure)."""
        return line == self.ok_reply or line.startswith(self.error_prefixes)

    def is_error(self, line: str) -> bool:
        return line != self.ok_reply and line.startswith(self.error_prefixes)


def _im920_init(radio: P2PRadio | None) -> tuple[str, ...]:
    # DCIO: data in and out as hex bytes (the factory default; ECIO would print raw characters). The RSSI is part of
    # every receive line on all IM920 firmware: there is no separate switch for it.
    return ("DCIO",)


def _es920lr_init(radio: P2PRadio | None) -> tuple[str, ...]:
    # From configuration mode at power-up: "2" selects processor mode (replies OK / NG nnn instead of prompts),
    # "rssi 1" / "rcvid 1" put RSSI and PAN id + sender id in front of every payload, "format 1" is ASCII,
    # "start" enters operation mode.
    return ("2", "rssi 1", "rcvid 1", "format 1", "start")


def _rak3172_init(radio: P2PRadio | None) -> tuple[str, ...]:
    # AT+PRECV=0 first: changing P2P parameters while receiving answers AT_BUSY_ERROR. 65534 = receive continuously
    # (65535 = stop after the first packet, in RUI3).
    return ("AT", "AT+NWM=0", "AT+PRECV=0", (radio or P2PRadio()).at_command(), "AT+PRECV=65534")


MODULES: Final[dict[str, ModuleSpec]] = {
    "im920": ModuleSpec(
        name="im920",
        title="Interplan IM920 / IM920sL / IM920c",
        new_decoder=lambda: StatelessDecoder(parse_im920),
        terminator="\r\n",
        default_baudrate=19_200,
        ok_reply="OK",
        error_prefixes=("NG",),
        error_example="NG",
        init=_im920_init,
        has_sender=True,
    ),
    "es920lr": ModuleSpec(
        name="es920lr",
        title="EASEL ES920LR (LoRa)",
        new_decoder=lambda: StatelessDecoder(parse_es920lr),
        terminator="\r\n",
        default_baudrate=115_200,
        ok_reply="OK",
        error_prefixes=("NG",),
        error_example="NG 001",
        init=_es920lr_init,
        has_sender=True,
    ),
    "rak3172": ModuleSpec(
        name="rak3172",
        title="RAKwireless RAK3172 (LoRa P2P, RUI3 AT firmware)",
        new_decoder=Rak3172Assembler,
        terminator="\r\n",
        default_baudrate=115_200,
        ok_reply="OK",
        error_prefixes=("AT_",),
        error_example="AT_PARAM_ERROR",
        init=_rak3172_init,
        has_sender=False,
    ),
}
