"""The gateway's Modbus source: one owner task per bus polls its devices and submits their readings.

``build_modbus_source(config)`` gives one :class:`ModbusBusSource` per bus (Modbus TCP or RTU). Its ``run`` owns
the bus's only client connection, so requests never interleave: polls follow each device's interval (earliest due
first, so devices with different intervals share the bus fairly), each device's points are read in coalesced
blocks, and each device poll's readings are stamped with the time of the answer and queued for the outbox (the
bus keeps polling while the outbox commits; polls that queued meanwhile are submitted together, and while the bus
polls back to back a poll waits up to ``submit_linger_ms`` for the next ones, so that a busy bus makes one commit and
one uplink message per batch of polls rather than per poll). Writes
(:meth:`ModbusBusSource.write_point`) go through the same owner, between polls, and return the value read back.

Faults never stop the bus: timeouts, exception responses, CRC/framing errors and connection losses are counted in
the source's health by kind; a failing device is retried with exponential backoff and quarantined after a few
failures in a row, while the other devices keep their rate; a lost connection is reopened with backoff.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.live_settings import apply_settings, in_range
from gateway.model import ClockQuality, Priority, Reading, now
from gateway.sources.base import ReadingSink, Source, SourceHealth
from gateway.sources.modbus_config import (
    ModbusBusConfig,
    ModbusDeviceConfig,
    ModbusRtuBusConfig,
    ModbusSourceConfig,
    ModbusTcpBusConfig,
)
from gateway.sources.modbus_device import BackoffPolicy, DeviceState
from gateway.sources.modbus_link import BusError, ModbusLink
from gateway.sources.modbus_plan import decode_block
from hw.modbus.codec import CodecError, decode_point, encode_point
from hw.modbus.model import DataType, DeviceProfile, Point, PointValue
from kakehashi.errors import KakehashiError
from kakehashi.log import get_logger
from kakehashi.waiting import next_within

__all__ = [
    "ModbusBusConfig",
    "ModbusBusSource",
    "ModbusDeviceConfig",
    "ModbusRtuBusConfig",
    "ModbusSourceConfig",
    "ModbusTcpBusConfig",
    "ModbusWriteError",
    "build_modbus_buses",
    "build_modbus_source",
    "find_bus",
]

log = get_logger(__name__)

SUBMIT_QUEUE_DEPTH = 64
"""Device polls that may wait for the outbox before the bus owner waits too (back-pressure)."""
SUBMIT_BATCH_READINGS = 500
"""Readings one lingering submission gathers at most (the intake's default message size)."""


class ModbusWriteError(KakehashiError):
    """A write was refused or failed. ``reason``: unknown_device, unknown_point, not_writable, bad_value,
    not_running, readback_mismatch, or the bus fault kind (timeout, exception, crc, connection)."""

    reason = "modbus_write"


@dataclass(slots=True)
class _Write:
    device: DeviceState
    point: Point
    value: PointValue
    words: list[int]
    done: asyncio.Future[PointValue]


@dataclass(frozen=True, slots=True)
class _BusPolicy:
    backoff: BackoffPolicy
    reconnect_initial_s: float
    reconnect_max_s: float
    reconnect_after_timeouts: int
    submit_linger_s: float = 0.0


class ModbusBusSource:
    """The owner of one Modbus bus: a :class:`~gateway.sources.base.Source` plus :meth:`write_point`."""

    def __init__(
        self, bus: ModbusTcpBusConfig | ModbusRtuBusConfig, policy: _BusPolicy, submit_depth: int = SUBMIT_QUEUE_DEPTH
    ) -> None:
        self._bus = bus
        self._policy = policy
        self._submit_depth = submit_depth
        self._name = f"modbus:{bus.name or bus.endpoint}"
        self._devices = [DeviceState.build(d) for d in bus.devices]
        self._by_id = {d.id: d for d in self._devices}
        self._link = ModbusLink(bus)
        self._writes: deque[_Write] = deque()
        self._wake = asyncio.Event()
        self._reschedule = False
        self._running = False
        self._quarantined: set[str] = set()
        self._timeouts_in_row = 0
        self._next_due = math.inf
        """When the owner's next poll is due (``time.monotonic()``): the submitter lingers only while it is near."""
        self._held: list[Reading] = []
        """Readings the submitter has taken from the queue and not yet handed to the sink (flushed on stop)."""
        self._bus_detail: dict[str, Any] = {
            "transport": bus.transport,
            "endpoint": bus.endpoint,
            "connected": False,
            "connects": 0,
            "requests": 0,
        }

    @property
    def name(self) -> str:
        return self._name

    def reconfigure(self, settings: Mapping[str, Any]) -> dict[str, str]:
        """Live settings from the twin: ``poll_interval_s`` (seconds for every device on this bus, or
        ``{device id: seconds}``) and ``thresholds`` (``{device id: {point: {"above": x, "below": y}}}``)."""

        def poll_interval(value: Any) -> str:
            wanted = value if isinstance(value, dict) else dict.fromkeys(self._by_id, value)
            unknown = sorted(set(wanted) - set(self._by_id))
            if unknown:
                raise ValueError(f"no device {unknown[0]} on this bus (devices: {', '.join(self._by_id)})")
            checked = {dev: in_range(seconds, 0.05, 86400, "poll_interval_s") for dev, seconds in wanted.items()}
            soon = time.monotonic()
            for dev, seconds in checked.items():
                device = self._by_id[dev]
                device.interval = seconds
                device.due = min(device.due, soon + seconds)  # a shorter interval takes effect now, not after the old
            self._reschedule = True
            self._wake.set()
            return "applied"

        def thresholds(value: Any) -> str:
            if not isinstance(value, dict):
                raise ValueError('thresholds must be {device id: {point: {"above": x, "below": y}}}')
            staged: list[tuple[DeviceState, str, tuple[float | None, float | None]]] = []
            for dev, points in value.items():
                device = self._by_id.get(dev)
                if device is None or not isinstance(points, dict):
                    raise ValueError(f"no device {dev} on this bus, or its thresholds are not an object")
                names = {p.name for p in device.profile.points}
                for point, limits in points.items():
                    if point not in names or not isinstance(limits, dict) or set(limits) - {"above", "below"}:
                        raise ValueError(
                            f"{dev}.{point}: use a point of profile {device.profile.name} with above/below"
                        )
                    above, below = limits.get("above"), limits.get("below")
                    bounds = tuple(None if v is None else in_range(v, -1e12, 1e12, "threshold") for v in (above, below))
                    staged.append((device, point, (bounds[0], bounds[1])))
            for device, point, bounds in staged:
                device.thresholds[point] = bounds
            return "applied"

        return apply_settings(settings, {"poll_interval_s": poll_interval, "thresholds": thresholds})

    @property
    def device_ids(self) -> tuple[str, ...]:
        """The ids of the devices on this bus (to route a write to its bus)."""
        return tuple(self._by_id)

    def device_profile(self, device_id: str) -> DeviceProfile | None:
        """The profile of ``device_id`` on this bus (its points and commands), or ``None`` if it is not here."""
        device = self._by_id.get(device_id)
        return None if device is None else device.profile

    async def run(self, sink: ReadingSink, health: SourceHealth) -> None:
        """Own the bus until cancelled: connect, poll, write, submit; raises only if the sink fails."""
        # The source counts and logs bus faults itself; pymodbus would add a multi-line error per timeout.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        health.detail["bus"] = self._bus_detail
        health.detail["devices"] = {d.id: d.detail for d in self._devices}
        queue: asyncio.Queue[list[Reading]] = asyncio.Queue(self._submit_depth)
        self._running = True
        submitter = asyncio.create_task(self._submit_loop(queue, sink, health), name=f"{self._name} submit")
        owner = asyncio.create_task(self._own_bus(queue, health), name=f"{self._name} owner")
        try:
            done, _ = await asyncio.wait({submitter, owner}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            self._running = False
            for task in (submitter, owner):
                task.cancel()
            await asyncio.gather(submitter, owner, return_exceptions=True)
            await self._flush(queue, sink, health)
            self._link.close()
            self._bus_detail["connected"] = False
            self._fail_writes("not_running", f"bus {self._name} stopped")

    async def write_point(self, device_id: str, point_name: str, value: PointValue) -> PointValue:
        """Write ``value`` to a writable point, serialised with the polls; returns the value read back after it.

        Raises :class:`ModbusWriteError` if the device or point is unknown, the point is not writable, the value is
        outside its type or min..max, the bus is not running or the device does not answer, or (with the point's
        ``verify_readback``) the value read back differs.
        """
        device = self._by_id.get(device_id)
        if device is None:
            raise ModbusWriteError(f"no device {device_id!r} on {self._name}", reason="unknown_device")
        try:
            point = device.profile.point(point_name)
        except KeyError as exc:
            raise ModbusWriteError(str(exc.args[0]), reason="unknown_point") from None
        if not point.writable:
            raise ModbusWriteError(f"{device_id}: point {point_name!r} is read-only", reason="not_writable")
        if point.type is not DataType.BOOL and not isinstance(value, bool):
            low = -math.inf if point.minimum is None else point.minimum
            high = math.inf if point.maximum is None else point.maximum
            if not low <= value <= high:
                raise ModbusWriteError(
                    f"{device_id}: {value} is outside {point_name} {point.minimum}..{point.maximum}", reason="bad_value"
                )
        try:
            words = encode_point(point, value)
        except CodecError as exc:
            raise ModbusWriteError(f"{device_id}: {exc}", reason="bad_value") from None
        if not self._running:
            raise ModbusWriteError(f"{self._name} is not running", reason="not_running")
        done: asyncio.Future[PointValue] = asyncio.get_running_loop().create_future()
        self._writes.append(_Write(device, point, value, words, done))
        self._wake.set()
        return await done

    # --- the bus owner -------------------------------------------------------------------------------------

    async def _own_bus(self, queue: asyncio.Queue[list[Reading]], health: SourceHealth) -> None:
        order = 0
        start = time.monotonic()
        heap: list[tuple[float, int, DeviceState]] = []
        for device in self._devices:
            device.due = start
            heap.append((start, order, device))
            order += 1
        heapq.heapify(heap)
        while True:
            if not self._link.connected:
                if self._bus_detail["connected"]:
                    self._lost(health, f"{self._link.endpoint} closed the connection")
                await self._connect(health)
            if self._writes:
                await self._serve_writes(health)
                continue
            if self._reschedule:  # intervals changed through the twin
                self._reschedule = False
                heap = [(d.due, order + i, d) for i, d in enumerate(self._devices)]
                order += len(heap)
                heapq.heapify(heap)
            due = heap[0][0]
            delay = due - time.monotonic()
            if delay > 0:
                await self._idle(delay)
                continue
            _, _, device = heapq.heappop(heap)
            self._next_due = heap[0][0] if heap else device.due
            await self._poll(device, queue, health)
            heapq.heappush(heap, (device.due, order, device))
            self._next_due = heap[0][0]
            order += 1

    async def _idle(self, delay: float) -> None:
        self._wake.clear()
        if self._writes:
            return
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _connect(self, health: SourceHealth) -> None:
        delay = self._policy.reconnect_initial_s
        while True:
            try:
                await self._link.connect()
            except BusError as err:
                self._fail_writes("connection", f"{self._name} is not connected: {err.message}")
                health.count_error("connection", err.message)
                health.state = "degraded"
                log.warning("modbus_connect_failed", bus=self._name, error=err.message, retry_in_s=delay)
                await self._idle(delay)
                delay = min(delay * 2, self._policy.reconnect_max_s)
                continue
            self._bus_detail["connected"] = True
            self._bus_detail["connects"] += 1
            self._timeouts_in_row = 0
            self._update_state(health)
            log.info("modbus_connected", bus=self._name, endpoint=self._link.endpoint)
            return

    def _lost(self, health: SourceHealth, message: str) -> None:
        self._link.close()
        self._bus_detail["connected"] = False
        health.count_error("connection", message)
        health.state = "degraded"
        log.warning("modbus_connection_lost", bus=self._name, error=message)

    async def _poll(self, device: DeviceState, queue: asyncio.Queue[list[Reading]], health: SourceHealth) -> None:
        readings: list[Reading] = []
        link = self._link
        device_id = device.id
        try:
            for block in device.blocks:
                words = await link.read(block.function, block.start, block.count, device.unit)
                observed = now()
                for point, value in decode_block(block, words):
                    if isinstance(value, float) and not math.isfinite(value):
                        health.count_error("value", f"{device_id}: {point.name} read {value}")
                        continue
                    priority = Priority.ALARM if device.is_alarm(point, value) else Priority.TELEMETRY
                    readings.append(
                        Reading(device_id, point.name, value, point.unit, observed, ClockQuality.SYNCED, priority)
                    )
        except BusError as err:
            self._bus_detail["requests"] = link.requests
            if readings:
                await queue.put(readings)
            self._device_failed(device, err, health)
            return
        self._bus_detail["requests"] = link.requests
        self._timeouts_in_row = 0
        if device.succeeded(time.monotonic(), now()):
            self._quarantined.discard(device_id)
            log.info("modbus_device_recovered", bus=self._name, device=device_id, unit=device.unit)
        self._update_state(health)
        await queue.put(readings)

    def _device_failed(self, device: DeviceState, err: BusError, health: SourceHealth) -> None:
        if err.kind == "connection":
            self._lost(health, err.message)
            return  # not the device's fault: it is polled first once the bus is back
        message = f"{device.id} (unit {device.unit}): {err.message}"
        health.count_error(err.kind, message)
        if err.kind == "timeout":
            self._timeouts_in_row += 1
        else:
            self._timeouts_in_row = 0
        if device.failed(time.monotonic(), message, self._policy.backoff):
            self._quarantined.add(device.id)
            log.warning(
                "modbus_device_quarantined",
                bus=self._name,
                device=device.id,
                unit=device.unit,
                failures=device.failures,
                error=err.message,
            )
        limit = self._policy.reconnect_after_timeouts
        if isinstance(self._bus, ModbusTcpBusConfig) and self._timeouts_in_row >= limit:
            self._lost(health, f"{limit} requests in a row unanswered; reconnecting")
        self._update_state(health)

    def _update_state(self, health: SourceHealth) -> None:
        health.state = "ok" if self._link.connected and not self._quarantined else "degraded"

    async def _serve_writes(self, health: SourceHealth) -> None:
        while self._writes and self._link.connected:
            write = self._writes.popleft()
            if write.done.done():
                continue  # the caller gave up
            try:
                write.done.set_result(await self._write(write))
            except ModbusWriteError as exc:
                if not write.done.done():
                    write.done.set_exception(exc)
            except BusError as err:
                if err.kind == "connection":
                    self._lost(health, err.message)
                else:
                    health.count_error(err.kind, f"{write.device.id} (unit {write.device.unit}): {err.message}")
                if not write.done.done():
                    write.done.set_exception(
                        ModbusWriteError(f"{write.device.id}: write {write.point.name}: {err.message}", reason=err.kind)
                    )

    async def _write(self, write: _Write) -> PointValue:
        point, device = write.point, write.device
        await self._link.write(point.function, point.address, write.words, device.unit)
        words = await self._link.read(point.function, point.address, point.count, device.unit)
        self._bus_detail["requests"] = self._link.requests
        back = decode_point(point, words)
        log.info("modbus_write", bus=self._name, device=device.id, point=point.name, value=write.value, read_back=back)
        if point.verify_readback and not _same(point, back, write.value):
            raise ModbusWriteError(
                f"{device.id}: wrote {write.value} to {point.name} but read back {back}", reason="readback_mismatch"
            )
        return back

    def _fail_writes(self, reason: str, message: str) -> None:
        while self._writes:
            write = self._writes.popleft()
            if not write.done.done():
                write.done.set_exception(ModbusWriteError(message, reason=reason))

    async def _submit_loop(self, queue: asyncio.Queue[list[Reading]], sink: ReadingSink, health: SourceHealth) -> None:
        while True:
            self._held = readings = list(await queue.get())
            # Polls that queued up while the previous commit ran go together: one commit, one uplink message,
            # instead of one per 20-register poll (no added latency when the outbox keeps up).
            while not queue.empty():
                readings.extend(queue.get_nowait())
            if self._policy.submit_linger_s > 0:
                await self._linger(queue, readings)
            self._held = []  # the sink holds them from its first step on (the intake queues before it awaits)
            await sink.submit(readings)
            health.readings += len(readings)

    async def _flush(self, queue: asyncio.Queue[list[Reading]], sink: ReadingSink, health: SourceHealth) -> None:
        """On stop: hand the sink what was polled but not yet submitted (the intake commits it while it drains)."""
        readings, self._held = self._held, []
        while not queue.empty():
            readings.extend(queue.get_nowait())
        if not readings:
            return
        try:
            await sink.submit(readings)
        except KakehashiError as exc:  # the intake already closed: the gateway is past draining
            log.warning("modbus_unsubmitted_on_stop", bus=self._name, readings=len(readings), error=exc.message)
            return
        health.readings += len(readings)

    async def _linger(self, queue: asyncio.Queue[list[Reading]], readings: list[Reading]) -> None:
        """Add the polls that follow within the linger time to ``readings``, only while the bus polls back to back.

        A busy bus (the next poll due before the linger ends) otherwise makes one commit and one uplink message per
        poll, and that overhead, not the bus, then limits its rate. A bus with time to spare, an alarm reading, or a
        full batch is submitted at once, so the linger never delays an alarm or a reading of a lightly loaded bus.
        """
        deadline = time.monotonic() + self._policy.submit_linger_s
        alarm = any(reading.priority is Priority.ALARM for reading in readings)
        while not alarm and len(readings) < SUBMIT_BATCH_READINGS:
            left = deadline - time.monotonic()
            if left <= 0 or self._next_due > deadline:
                return
            more = await next_within(queue, left)
            if more is None:
                return
            readings.extend(more)
            alarm = any(reading.priority is Priority.ALARM for reading in more)


def _same(point: Point, read_back: PointValue, written: PointValue) -> bool:
    if isinstance(read_back, bool) or isinstance(written, bool):
        return bool(read_back) == bool(written)
    tolerance = abs(point.scale) / 2 if point.type.is_integer else abs(written) * 1e-6 + 1e-9
    return abs(read_back - written) <= tolerance


def build_modbus_buses(config: ModbusSourceConfig) -> list[ModbusBusSource]:
    """One :class:`ModbusBusSource` per configured bus."""
    policy = _BusPolicy(
        backoff=BackoffPolicy(config.backoff_initial_s, config.backoff_max_s, config.quarantine_after),
        reconnect_initial_s=config.reconnect_initial_s,
        reconnect_max_s=config.reconnect_max_s,
        reconnect_after_timeouts=config.reconnect_after_timeouts,
        submit_linger_s=config.submit_linger_ms / 1000,
    )
    return [ModbusBusSource(bus, policy) for bus in config.buses]


def build_modbus_source(config: ModbusSourceConfig) -> list[Source]:
    """The Modbus source plug-in: one :class:`~gateway.sources.base.Source` per bus (each a :class:`ModbusBusSource`,
    which also offers ``write_point``)."""
    return list(build_modbus_buses(config))


def find_bus(sources: Sequence[Source], device_id: str) -> ModbusBusSource:
    """The Modbus bus that owns ``device_id`` among ``sources``; :class:`ModbusWriteError` if none does."""
    for source in sources:
        if isinstance(source, ModbusBusSource) and device_id in source.device_ids:
            return source
    raise ModbusWriteError(f"no Modbus bus has a device {device_id!r}", reason="unknown_device")
