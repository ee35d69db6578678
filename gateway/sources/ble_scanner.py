"""Opening a bleak scanner for the BLE source: backend resolution, scanning-mode choice and passive-scan patterns.

``auto`` mode tries a passive scan first (the adapter only listens, tags see no scan requests, less radio time and
battery drain on the tags) and falls back to active when the backend refuses passive scanning with a
``BleakError`` — BlueZ without ``--experimental`` or older than 5.56, macOS — then keeps active for the life of the
source. An ``OSError`` (``FileNotFoundError`` when BlueZ / D-Bus is missing) is an adapter failure, not a mode one.
BlueZ passive scanning needs advertisement-monitor "or patterns": one per supported format, from ``formats.toml``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Literal

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern, OrPatternLike
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from gateway.sources.ble_config import ScanningMode
from hw.ble.formats import PASSIVE_PATTERNS
from kakehashi.errors import ConfigError
from kakehashi.log import get_logger

log = get_logger(__name__)

ScanMode = Literal["passive", "active"]
DetectionCallback = Callable[[BLEDevice, AdvertisementData], None]


def resolve_backend(path: str | None) -> type[BaseBleakScanner] | None:
    """The scanner backend class named ``module:Class`` (or ``module.Class``); None for the platform default."""
    if path is None:
        return None
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"BLE backend {path!r} cannot be loaded ({exc}): use module:Class") from None
    if not (isinstance(found, type) and issubclass(found, BaseBleakScanner)):
        raise ConfigError(f"BLE backend {path!r} is not a bleak scanner backend (a BaseBleakScanner subclass)")
    return found


def passive_patterns() -> list[OrPatternLike]:
    """BlueZ or-patterns matching iBeacon, AltBeacon, Eddystone and BTHome advertisements."""
    return [OrPattern(p.start, AdvertisementDataType(p.ad_type), p.content) for p in PASSIVE_PATTERNS]


class ScannerOpener:
    """Creates and starts scanners for one adapter, remembering when passive scanning turned out unavailable."""

    def __init__(
        self,
        adapter: str,
        mode: ScanningMode,
        backend: type[BaseBleakScanner] | None,
        callback: DetectionCallback,
    ) -> None:
        self.adapter = adapter
        self.mode = mode
        self.backend = backend
        self.callback = callback
        self.passive_unavailable = False

    def modes(self) -> list[ScanMode]:
        """Modes to try, in order, on the next start."""
        if self.mode == "auto":
            return ["active"] if self.passive_unavailable else ["passive", "active"]
        return [self.mode]

    def _scanner(self, mode: ScanMode) -> BleakScanner:
        bluez: BlueZScannerArgs = {"adapter": self.adapter}
        if mode == "passive":
            bluez["or_patterns"] = passive_patterns()
        return BleakScanner(self.callback, None, mode, bluez=bluez, backend=self.backend)

    async def start(self) -> tuple[BleakScanner, ScanMode]:
        """A started scanner and its mode. Raises ``BleakError`` / ``OSError`` when the adapter cannot scan."""
        modes = self.modes()
        for mode in modes:
            try:
                scanner = self._scanner(mode)
                await scanner.start()
            except BleakError as exc:
                if mode == "passive" and len(modes) > 1:
                    log.info("ble_passive_unavailable", adapter=self.adapter, error=str(exc))
                    continue
                raise
            if len(modes) > 1 and mode == "active":
                self.passive_unavailable = True
            return scanner, mode
        raise AssertionError("unreachable: the last mode re-raises")
