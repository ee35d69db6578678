"""A fake ``machine`` module for the node firmware on the MicroPython unix port, scripted by a scenario file.

The scenario (JSON, path in the environment variable ``KH_SCENARIO``) lists one step per wake::

    {"steps": [{"distance_m": 3.2}, {"distance_m": [1.0, 1.0, 9.0], "wifi": false}, {"loop_ma": 12.0}],
     "loop": {"pin": 26, "shunt_ohm": 150}, "battery": {"pin": 35, "scale": 2.0}}

Step keys: ``distance_m`` (one value, or one per sample, cycling) seen by the UART sensor (frames ``0xFF H L SUM``,
millimetres) and the I2C sensor (register 0, centimetres, little-endian); ``uart_silent`` / ``i2c_missing`` to
break them; ``loop_ma`` the 4-20 mA loop current on the loop pin's ADC; ``battery_v``; ``wifi`` (see the fake
``network``). What the firmware did is recorded in ``<scenario>.state`` (JSON): every sleep as ``[kind, ms]``, the
watchdog timeout, RTC memory. ``deepsleep`` ends the process like a reset does; the harness starts the next wake.
When the steps are used up, any sleep ends the run.

Runs under MicroPython and type-checks under CPython (annotations only, no imports beyond json, os, sys, time).
"""

import json
import os
import sys
import time

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_PATH = os.getenv("KH_SCENARIO") or "scenario.json"


def _load(path: str) -> dict[str, object]:
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError:
        return {}
    return doc if isinstance(doc, dict) else {}


_SCENARIO = _load(_PATH)
_STATE = _load(_PATH + ".state")


def _steps() -> list[object]:
    steps = _SCENARIO.get("steps")
    return steps if isinstance(steps, list) else []


def _sleeps() -> list[object]:
    sleeps = _STATE.setdefault("sleeps", [])
    assert isinstance(sleeps, list)
    return sleeps


def wake() -> int:
    """Which step this wake reads (the number of sleeps so far)."""
    return len(_sleeps())


def _step() -> dict[str, object]:
    steps = _steps()
    step = steps[min(wake(), len(steps) - 1)] if steps else {}
    return step if isinstance(step, dict) else {}


def _number(key: str, index: int = 0, default: float = 0.0) -> float:
    value = _step().get(key, default)
    if isinstance(value, list):
        value = value[index % len(value)] if value else default
    return float(value) if isinstance(value, (int, float)) else default


def _section(key: str) -> dict[str, object]:
    value = _SCENARIO.get(key)
    return value if isinstance(value, dict) else {}


def _save() -> None:
    tmp = _PATH + ".state.tmp"
    with open(tmp, "w") as f:
        json.dump(_STATE, f)
    os.rename(tmp, _PATH + ".state")


def _sleep(kind: str, ms: int) -> None:
    _sleeps().append([kind, int(ms)])
    _save()
    if kind == "deep" or wake() >= len(_steps()):
        sys.exit(0)


def deepsleep(ms: int = 0) -> None:
    """Record the sleep and end the process: a deep sleep resets the board."""
    _sleep("deep", ms)


def lightsleep(ms: int = 0) -> None:
    """Record the sleep and return at once (time is not really spent); ends the run after the last step."""
    _sleep("light", ms)


def reset() -> None:
    _sleep("reset", 0)
    sys.exit(0)


def reset_cause() -> int:
    return DEEPSLEEP_RESET if wake() else PWRON_RESET


def unique_id() -> bytes:
    return b"\x24\x0a\xc4\x00\x00\x07"


def freq(hz: int = 0) -> int:
    return 240_000_000


def idle() -> None:
    pass


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id: object, mode: int = -1, pull: int = -1, value: int | None = None) -> None:
        self.id = id
        self._value = value or 0

    def value(self, v: int | None = None) -> int:
        if v is not None:
            self._value = 1 if v else 0
        return self._value

    def on(self) -> None:
        self._value = 1

    def off(self) -> None:
        self._value = 0


class ADC:
    """``read_u16`` of the scripted loop current across the shunt, or of the battery divider."""

    def __init__(self, pin: object) -> None:
        self.pin = pin.id if isinstance(pin, Pin) else pin

    def read_u16(self) -> int:
        loop, battery = _section("loop"), _section("battery")
        volts = 0.0
        if self.pin == loop.get("pin", 26) and "loop_ma" in _step():
            shunt = loop.get("shunt_ohm", 150)
            volts = _number("loop_ma") / 1000 * (float(shunt) if isinstance(shunt, (int, float)) else 150.0)
        elif self.pin == battery.get("pin", 35):
            scale = battery.get("scale", 2.0)
            volts = _number("battery_v", 0, 3.9) / (float(scale) if isinstance(scale, (int, float)) else 2.0)
        return max(0, min(65535, int(volts / 3.3 * 65535 + 0.5)))


class UART:
    """An ultrasonic sensor streaming 4-byte frames (0xFF, high, low, checksum) with the distance in mm."""

    def __init__(self, id: int, baudrate: int = 9600, **kw: object) -> None:
        self.id = id
        self._pending = b""
        self._frames = 0

    def _fill(self) -> None:
        if not self._pending and not _step().get("uart_silent"):
            mm = int(_number("distance_m", self._frames) * 1000 + 0.5) & 0xFFFF
            high, low = mm >> 8, mm & 0xFF
            self._pending = bytes([0xFF, high, low, (0xFF + high + low) & 0xFF])
            self._frames += 1

    def any(self) -> int:
        self._fill()
        return len(self._pending)

    def read(self, n: int = -1) -> bytes | None:
        self._fill()
        if not self._pending:
            return None
        n = len(self._pending) if n < 0 else n
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def readinto(self, buf: memoryview, n: int = -1) -> int | None:
        data = self.read(len(buf) if n < 0 else n)
        if data is None:
            return None
        for i, b in enumerate(data):
            buf[i] = b
        return len(data)


class I2C:
    """A distance sensor at 0x10 with the distance in centimetres at register 0 (little-endian)."""

    def __init__(self, id: int, scl: object = None, sda: object = None, freq: int = 100_000) -> None:
        self.id = id
        self._reads = 0

    def scan(self) -> list[int]:
        return [] if _step().get("i2c_missing") else [0x10]

    def readfrom_mem(self, addr: int, reg: int, n: int) -> bytes:
        if addr != 0x10 or _step().get("i2c_missing"):
            raise OSError(19)  # ENODEV: no ACK
        cm = int(_number("distance_m", self._reads) * 100 + 0.5) & 0xFFFF
        self._reads += 1
        return bytes([cm & 0xFF, cm >> 8] + [0] * max(0, n - 2))[:n]


class WDT:
    """Records its timeout; a feed later than the timeout ends the process like the reset it would cause."""

    def __init__(self, id: int = 0, timeout: int = 5000) -> None:
        self.timeout = timeout
        self._fed = time.time()
        _STATE["wdt_ms"] = timeout

    def feed(self) -> None:
        if (time.time() - self._fed) * 1000 > self.timeout:
            print("watchdog: not fed for more than", self.timeout, "ms: reset")
            _sleep("watchdog", 0)
            sys.exit(3)
        self._fed = time.time()


class RTC:
    """The host's clock; ``memory()`` survives deep sleep (kept in the state file)."""

    def datetime(self, dt: tuple[int, ...] | None = None) -> tuple[int, ...]:
        t = time.localtime()
        return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)

    def memory(self, data: bytes | None = None) -> bytes:
        if data is not None:
            _STATE["rtc"] = "".join("{:02x}".format(b) for b in data)  # noqa: UP032 - MicroPython has no nested f-string specs
            _save()
        text = _STATE.get("rtc", "")
        return bytes(int(text[i : i + 2], 16) for i in range(0, len(text), 2)) if isinstance(text, str) else b""
