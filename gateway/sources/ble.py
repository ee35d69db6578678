"""The BLE source: watch tags (見守りタグ) and BTHome sensors heard through bleak, aggregated per window.

``build_ble_source(config)`` gives a :class:`~gateway.sources.base.Source`. Its ``run`` keeps a bleak scanner
going (the detection callback is :meth:`BleAggregator.on_advertisement`) and, at the end of every window, submits
one batch of readings for the registered, consented tags it heard. Two loops run side by side:

* the scan loop starts the scanner (passive, active or auto — see :mod:`gateway.sources.ble_scanner`), watches it
  and restarts it when no advertisement arrived for ``watchdog_s`` (a ``stall``); when the adapter cannot start
  (``FileNotFoundError`` without BlueZ, ``BleakError``, any ``OSError``) it counts an ``adapter`` error, sets the
  health state to ``failed`` with a message saying what to check, and retries with exponential backoff;
* the window loop flushes the aggregation every ``window_s`` seconds and updates ``health.detail``.

Privacy (watch tags are personal data): only registered tags with consent become readings; every other tag is
counted, never stored or logged; tags are keyed by payload, never by their rotating address.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from bleak import BleakScanner
from bleak.backends.scanner import BaseBleakScanner
from bleak.exc import BleakError

from gateway.live_settings import apply_settings, in_range
from gateway.sources.base import ReadingSink, Source, SourceHealth
from gateway.sources.ble_aggregate import BleAggregator
from gateway.sources.ble_config import BleSourceConfig, RegisteredTag, ScanningMode
from gateway.sources.ble_scanner import ScanMode, ScannerOpener, resolve_backend
from kakehashi.log import get_logger

__all__ = ["BleSource", "BleSourceConfig", "RegisteredTag", "ScanningMode", "build_ble_source"]

log = get_logger(__name__)

ADAPTER_ERRORS = (BleakError, OSError)  # FileNotFoundError (no BlueZ / D-Bus) and TimeoutError are OSErrors
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


class BleSource:
    """A :class:`~gateway.sources.base.Source` over one Bluetooth adapter (see the module docstring)."""

    def __init__(
        self,
        config: BleSourceConfig,
        backend: type[BaseBleakScanner] | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.aggregator = BleAggregator(config.tags, clock=clock)
        self.opener = ScannerOpener(config.adapter, config.scanning_mode, backend, self.aggregator.on_advertisement)
        self.mode: ScanMode | None = None
        self.scanner_restarts = 0

    @property
    def name(self) -> str:
        return self.config.name

    def reconfigure(self, settings: Mapping[str, Any]) -> dict[str, str]:
        """Live settings from the twin: ``window_s`` (aggregation window) and ``watchdog_s``."""

        def window(value: Any) -> str:
            self.config = self.config.model_copy(update={"window_s": in_range(value, 0.1, 3600, "window_s")})
            return "applied"

        def watchdog(value: Any) -> str:
            self.config = self.config.model_copy(update={"watchdog_s": in_range(value, 1, 86400, "watchdog_s")})
            return "applied"

        return apply_settings(settings, {"window_s": window, "watchdog_s": watchdog})

    async def run(self, sink: ReadingSink, health: SourceHealth) -> None:
        """Scan and submit one batch of readings per window until cancelled."""
        self._update_detail(health, 0, self.config.window_s)
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._scan_loop(health), name=f"{self.name}-scan"),
            loop.create_task(self._window_loop(sink, health), name=f"{self.name}-window"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # scanner ----------------------------------------------------------------------------------------------------------
    async def _scan_loop(self, health: SourceHealth) -> None:
        delay = self.config.retry_initial_s
        while True:
            scanner = await self._start(health)
            if scanner is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_s)
                continue
            delay = self.config.retry_initial_s
            try:
                await self._watch(health)
            finally:
                await self._stop(scanner, health)
            self.scanner_restarts += 1
            health.detail["restarts"] = self.scanner_restarts

    async def _start(self, health: SourceHealth) -> BleakScanner | None:
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                scanner, self.mode = await self.opener.start()
        except ADAPTER_ERRORS as exc:
            self.mode = None
            message = f"no Bluetooth adapter {self.config.adapter}: check `bluetoothctl list` / that bluetoothd runs"
            if self.config.scanning_mode == "passive":
                message += "; passive scanning needs BlueZ >= 5.56 with --experimental, or set scanning_mode auto"
            message += f" ({type(exc).__name__}: {exc})"
            health.count_error("adapter", message)
            health.state = "failed"
            health.detail["scanning_mode"] = None
            log.warning("ble_adapter_failed", source=self.name, adapter=self.config.adapter, error=message)
            return None
        health.state = "ok"
        health.detail["scanning_mode"] = self.mode
        log.info("ble_scanning", source=self.name, adapter=self.config.adapter, mode=self.mode)
        return scanner

    async def _watch(self, health: SourceHealth) -> None:
        """Return when no advertisement arrived for ``watchdog_s`` (the scanner is then restarted)."""
        loop = asyncio.get_running_loop()
        watchdog = self.config.watchdog_s
        poll = min(1.0, watchdog / 4)
        seen = self.aggregator.advertisements
        changed_at = loop.time()
        while True:
            await asyncio.sleep(poll)
            watchdog = self.config.watchdog_s  # may have changed through the twin
            poll = min(1.0, watchdog / 4)
            count = self.aggregator.advertisements
            if count != seen:
                seen, changed_at = count, loop.time()
                if health.state == "degraded":
                    health.state = "ok"
            elif loop.time() - changed_at >= watchdog:
                health.count_error(
                    "stall", f"no advertisement for {watchdog:g} s on {self.config.adapter}: scan restarted"
                )
                health.state = "degraded"
                log.warning("ble_scan_stalled", source=self.name, adapter=self.config.adapter, seconds=watchdog)
                return

    async def _stop(self, scanner: BleakScanner, health: SourceHealth) -> None:
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await scanner.stop()
        except ADAPTER_ERRORS as exc:
            health.count_error("adapter", f"stopping the scan on {self.config.adapter} failed ({exc})")
            log.warning("ble_stop_failed", source=self.name, adapter=self.config.adapter, error=str(exc))

    # windows ----------------------------------------------------------------------------------------------------------
    async def _window_loop(self, sink: ReadingSink, health: SourceHealth) -> None:
        loop = asyncio.get_running_loop()
        window = self.config.window_s
        started = loop.time()
        ends = started + window
        last = self.aggregator.advertisements
        while True:
            await asyncio.sleep(max(0.0, ends - loop.time()))
            now = loop.time()
            elapsed, started = now - started, now
            window = self.config.window_s  # may have changed through the twin
            ends += window
            if ends <= now:  # fell behind (a slow submit): keep the window length, drop the missed ticks
                ends = now + window
            readings = self.aggregator.flush()
            count = self.aggregator.advertisements
            self._update_detail(health, count - last, elapsed)
            last = count
            if readings:
                await sink.submit(readings)
                health.readings += len(readings)

    def _update_detail(self, health: SourceHealth, advertisements: int, elapsed: float) -> None:
        counters = self.aggregator.counters
        detail: dict[str, Any] = {
            "adapter": self.config.adapter,
            "scanning_mode": self.mode,
            "advertisements_per_s": round(advertisements / elapsed, 1) if elapsed > 0 else 0.0,
            "advertisements": counters.advertisements,
            "unknown_tags_dropped": counters.unknown,
            "no_consent_dropped": counters.no_consent,
            "malformed_frames": counters.malformed,
            "unattributed_frames": counters.unattributed,
            "ignored_frames": counters.ignored,
            "encrypted_frames": counters.encrypted,
            "other_advertisements": counters.other,
            "events_dropped": counters.events_dropped,
            "restarts": self.scanner_restarts,
        }
        health.detail.update(detail)


def build_ble_source(config: BleSourceConfig, *, clock: Callable[[], float] | None = None) -> Source:
    """The BLE source for ``config``; raises :class:`~kakehashi.errors.ConfigError` if its backend cannot load."""
    return BleSource(config, resolve_backend(config.backend), clock=clock)
