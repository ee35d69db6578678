"""The LPWA source: a 920 MHz serial radio module (IM920, ES920LR or RAK3172) on a UART, read with asyncio.

It opens the port with pyserial-asyncio-fast, sends the module's init commands (each waits for OK up to
``init_timeout_s``; failures are counted as ``init`` and receiving goes on), then reads lines: each receive frame is
decoded, matched to a registered device, turned into readings by the device's payload profile and submitted to the
sink. Malformed frames (``malformed_frame``), payloads that do not fit their profile (``bad_payload``) and frames from
unregistered senders (``unknown_sender``, dropped: not ours, or no consent) are counted and never stop the source.

When the port disappears or fails (USB cable pulled, adapter reset) it counts ``unplugged``, reports ``degraded``
with a plain-words ``last_error``, and retries opening with exponential backoff (``reconnect_min_s`` doubling up to
``reconnect_max_s``, with jitter) until the port is back, then initialises the module again. Nothing here blocks the
event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import serial_asyncio_fast

from gateway.model import now
from gateway.sources.base import ReadingSink, Source, SourceHealth
from gateway.sources.lpwa_config import LpwaSourceConfig, parse_lpwa_config
from gateway.sources.lpwa_devices import DeviceMap
from gateway.sources.lpwa_readings import frame_readings
from hw.lpwa.frames import FrameError
from hw.lpwa.modules import MODULES, LineDecoder
from hw.lpwa.payload import PayloadError
from kakehashi.backoff import Backoff
from kakehashi.log import get_logger

__all__ = [
    "LpwaSource",
    "LpwaSourceConfig",
    "OpenPort",
    "PortClosedError",
    "build_lpwa_source",
    "open_serial",
    "parse_lpwa_config",
]

log = get_logger(__name__)

LINE_LIMIT: Final = 4096
"""Longest line kept, in bytes; receive frames are far shorter, so longer lines are noise and are discarded."""
_SHOWN: Final = 80  # characters of a raw line kept in errors and logs
_OPEN_TIMEOUT_S: Final = 5.0
_CLOSE_TIMEOUT_S: Final = 2.0

OpenPort = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def open_serial(port: str, baudrate: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open ``port`` 8-N-1 at ``baudrate`` as an asyncio stream pair, locked against a second opener."""
    return await serial_asyncio_fast.open_serial_connection(
        url=port, baudrate=baudrate, limit=LINE_LIMIT, exclusive=True
    )


class PortClosedError(OSError):
    """The serial stream ended: the port went away."""


class LpwaSource:
    """Reads one LPWA module; implements :class:`~gateway.sources.base.Source`."""

    def __init__(
        self,
        config: LpwaSourceConfig,
        *,
        open_port: OpenPort = open_serial,
        clock: Callable[[], float] = now,
    ) -> None:
        self._config = config
        self._spec = MODULES[config.module]
        profiles = config.profiles
        self._devices = DeviceMap((d.id, d.sender, profiles[d.profile]) for d in config.devices)
        self._init_commands = self._spec.init_commands(config.p2p_radio)
        self._open_port = open_port
        self._clock = clock

    @property
    def name(self) -> str:
        return self._config.name

    async def run(self, sink: ReadingSink, health: SourceHealth) -> None:
        config = self._config
        port = config.port
        backoff = Backoff(base=config.reconnect_min_s, cap=config.reconnect_max_s)
        health.detail.update(port=port, module=config.module, reconnects=0)
        in_outage = False
        while True:
            try:
                async with asyncio.timeout(_OPEN_TIMEOUT_S):
                    reader, writer = await self._open_port(port, config.effective_baudrate)
            except (OSError, TimeoutError) as exc:
                if not in_outage:
                    health.count_error(
                        "open_failed", f"cannot open serial port {port}: {exc}: check the USB cable and the port path"
                    )
                    log.warning("lpwa_open_failed", source=self.name, port=port, error=str(exc))
                    in_outage = True
                health.state = "degraded"
                await asyncio.sleep(backoff.next())
                continue
            if in_outage:
                health.detail["reconnects"] += 1
                log.info("lpwa_port_back", source=self.name, port=port)
            in_outage = False
            started = time.monotonic()
            reason = "stream ended"
            try:
                await self._session(reader, writer, sink, health)
            except OSError as exc:  # pyserial's SerialException is an OSError too
                reason = str(exc) or type(exc).__name__
            finally:
                await _close(writer)
            health.count_error("unplugged", f"serial port {port} disappeared: check the USB cable ({reason})")
            health.state = "degraded"
            log.warning("lpwa_port_lost", source=self.name, port=port, error=reason)
            in_outage = True
            if time.monotonic() - started >= config.reconnect_max_s:
                backoff.reset()
            await asyncio.sleep(backoff.next())

    async def _session(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sink: ReadingSink,
        health: SourceHealth,
    ) -> None:
        """Initialise the module and receive until the port fails (raises ``OSError``)."""
        replies: asyncio.Queue[str] = asyncio.Queue(maxsize=8)
        pump = asyncio.create_task(self._pump(reader, replies, sink, health))
        init = asyncio.create_task(self._initialise(writer, replies, health))
        try:
            done, _ = await asyncio.wait({pump, init}, return_when=asyncio.FIRST_COMPLETED)
            if init in done:
                init.result()
            await pump
        finally:
            for task in (pump, init):
                task.cancel()
            await asyncio.gather(pump, init, return_exceptions=True)

    async def _initialise(
        self, writer: asyncio.StreamWriter, replies: asyncio.Queue[str], health: SourceHealth
    ) -> None:
        timeout = self._config.init_timeout_s
        failures = 0
        for command in self._init_commands:
            while not replies.empty():
                replies.get_nowait()
            writer.write(f"{command}{self._spec.terminator}".encode("ascii"))
            await writer.drain()
            try:
                async with asyncio.timeout(timeout):
                    reply = await replies.get()
            except TimeoutError:
                failures += 1
                health.count_error(
                    "init",
                    f"{self._spec.name} did not answer {command!r} within {timeout} s: check the module type "
                    f"({self._config.module}) and the baud rate ({self._config.effective_baudrate})",
                )
                continue
            if self._spec.is_error(reply):
                failures += 1
                health.count_error(
                    "init", f"{self._spec.name} answered {reply!r} to {command!r}: check the module's settings"
                )
        health.detail["initialised"] = failures == 0
        health.state = "ok" if failures == 0 else "degraded"
        log.info("lpwa_ready", source=self.name, module=self._spec.name, init_failures=failures)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        replies: asyncio.Queue[str],
        sink: ReadingSink,
        health: SourceHealth,
    ) -> None:
        decoder = self._spec.new_decoder()
        while True:
            try:
                raw = await reader.readline()
            except ValueError:
                self._count_bad(health, "malformed_frame", f"line longer than {LINE_LIMIT} bytes discarded", "")
                continue
            if not raw:
                raise PortClosedError(f"serial port {self._config.port} closed")
            line = raw.decode("ascii", errors="replace").strip()
            if line:
                await self._on_line(line, decoder, replies, sink, health)

    async def _on_line(
        self,
        line: str,
        decoder: LineDecoder,
        replies: asyncio.Queue[str],
        sink: ReadingSink,
        health: SourceHealth,
    ) -> None:
        try:
            frame = decoder.feed(line)
        except FrameError as exc:
            self._count_bad(health, "malformed_frame", str(exc), line)
            return
        if frame is None:
            if self._spec.is_reply(line):
                if replies.full():
                    replies.get_nowait()
                replies.put_nowait(line)
            else:
                log.debug("lpwa_line_ignored", source=self.name, line=line[:_SHOWN])
            return
        received_at = self._clock()
        try:
            match = self._devices.resolve(frame)
        except PayloadError as exc:
            self._count_bad(health, "bad_payload", str(exc), line)
            return
        if match is None:
            health.errors["unknown_sender"] += 1  # a neighbour's device or one not registered: normal, not a fault
            log.debug("lpwa_unknown_sender", source=self.name, sender=DeviceMap.describe_sender(frame))
            return
        readings = frame_readings(match.device.device_id, match.device.profile, match.values, frame, received_at)
        await sink.submit(readings)
        health.readings += len(readings)
        health.detail["last_frame_at"] = received_at

    def _count_bad(self, health: SourceHealth, kind: str, error: str, line: str) -> None:
        shown = line[:_SHOWN] + ("…" if len(line) > _SHOWN else "")
        health.count_error(kind, f"{error}: {shown!r}" if line else error)
        log.warning(f"lpwa_{kind}", source=self.name, error=error, line=shown)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await writer.wait_closed()


def build_lpwa_source(
    config: LpwaSourceConfig | Mapping[str, Any],
    *,
    open_port: OpenPort = open_serial,
    clock: Callable[[], float] = now,
) -> Source:
    """The LPWA source for ``config`` (a validated config, or a mapping checked with ``parse_lpwa_config``)."""
    if not isinstance(config, LpwaSourceConfig):
        config = parse_lpwa_config(config)
    return LpwaSource(config, open_port=open_port, clock=clock)
