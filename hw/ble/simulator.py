"""A bleak scanner backend that hears simulated tags instead of a radio, for tests, the demo and benchmarks.

Use it through bleak's public API: ``BleakScanner(callback, backend=SimulatedScannerBackend, bluez={"adapter":
"sim0"})``. bleak instantiates the class with ``(detection_callback, service_uuids, scanning_mode, bluez=..., cb=...,
**kwargs)``; while started it builds real ``BLEDevice`` / ``AdvertisementData`` objects and hands them to bleak's own
``call_detection_callbacks``, so the detection callback runs exactly as it would behind BlueZ.

What the backend hears is a :class:`SimulatedAir`: a population of :class:`~hw.ble.population.SimulatedTag` plus
controls — stall (adapter goes quiet), fail the next starts (``FileNotFoundError`` as without BlueZ, ``BleakError``
as with a missing adapter), refuse passive scanning (BlueZ without ``--experimental``), inject advertisements
(malformed ones for instance) and a high-rate mode that replays pre-built objects as fast as the callback takes
them. An air is attached to an adapter name (:func:`attach_air`), or passed directly as ``air=`` (bleak forwards
unknown keyword arguments to the backend).

Like BlueZ, passive scanning needs ``bluez={"or_patterns": [...]}`` and then delivers only advertisements matching
a pattern, without scan-response data (a local name sent only in the scan response is missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from bleak.args.bluez import BlueZScannerArgs, OrPatternLike
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.exc import BleakError

from hw.ble.formats import SIG_BASE_UUID_SUFFIX
from hw.ble.frames import AdvFields
from hw.ble.population import SimulatedTag

logger = logging.getLogger(__name__)

ScanMode = Literal["active", "passive"]
_AD_MANUFACTURER = 0xFF
_AD_SERVICE_DATA_16 = 0x16
_AD_SERVICE_DATA_128 = 0x21
_PLATFORM_DATA = ("simulated",)


class SimulatedAir:
    """What a simulated adapter hears, and the knobs that make the adapter misbehave."""

    def __init__(
        self,
        tags: Iterable[SimulatedTag] = (),
        *,
        seed: int = 0,
        passive_supported: bool = True,
        high_rate: bool = False,
        high_rate_batch: int = 512,
    ) -> None:
        self.tags: list[SimulatedTag] = list(tags)
        self.seed = seed
        self.passive_supported = passive_supported
        self.high_rate = high_rate
        self.high_rate_batch = high_rate_batch
        self.quiet = False
        self.recover_on_restart = False
        self.starts = 0
        self.stops = 0
        self.modes: list[ScanMode] = []  # scanning mode of every successful start
        self.emitted = 0
        self.callback_errors = 0
        self.injected: deque[tuple[AdvFields, int, str]] = deque()
        self._start_failures: deque[BaseException] = deque()
        self._fail_forever: BaseException | None = None

    # controls -----------------------------------------------------------------------------------------------------
    def stall(self, *, recover_on_restart: bool = True) -> None:
        """Stop delivering advertisements (an adapter stall). With ``recover_on_restart`` a stop/start cures it."""
        self.quiet = True
        self.recover_on_restart = recover_on_restart

    def resume(self) -> None:
        self.quiet = False

    def fail_start(self, error: BaseException, *, times: int | None = 1) -> None:
        """Make the next ``times`` starts raise ``error`` (``times=None``: every start, until :meth:`heal`)."""
        if times is None:
            self._fail_forever = error
        else:
            self._start_failures.extend([error] * times)

    def heal(self) -> None:
        self._start_failures.clear()
        self._fail_forever = None

    def inject(self, fields: AdvFields, *, count: int = 1, rssi: int = -70, address: str = "5A:00:00:00:00:01") -> None:
        """Deliver ``fields`` ``count`` times on the next ticks of every started scanner (malformed frames, ...)."""
        self.injected.extend([(fields, rssi, address)] * count)

    # used by the backend --------------------------------------------------------------------------------------------
    def begin_scan(self, mode: ScanMode) -> None:
        """Called by a backend's ``start``: raises the failures the controls ask for, else records the start."""
        if self._start_failures:
            raise self._start_failures.popleft()
        if self._fail_forever is not None:
            raise self._fail_forever
        if mode == "passive" and not self.passive_supported:
            raise BleakError(
                "passive scanning on Linux requires BlueZ >= 5.56 with --experimental enabled and Linux kernel >= 5.10"
            )
        if self.recover_on_restart:
            self.quiet = False
            self.recover_on_restart = False
        self.starts += 1
        self.modes.append(mode)


_AIRS: dict[str, SimulatedAir] = {}


def attach_air(adapter: str, air: SimulatedAir) -> SimulatedAir:
    """Make simulated scanners on ``adapter`` hear ``air`` (replacing what was there)."""
    _AIRS[adapter] = air
    return air


def detach_air(adapter: str) -> None:
    _AIRS.pop(adapter, None)


def air_for(adapter: str) -> SimulatedAir | None:
    return _AIRS.get(adapter)


@contextlib.contextmanager
def attached(adapter: str, air: SimulatedAir) -> Iterator[SimulatedAir]:
    """``with attached("sim0", air):`` — attach for the block, detach after."""
    attach_air(adapter, air)
    try:
        yield air
    finally:
        if _AIRS.get(adapter) is air:
            detach_air(adapter)


def _ad_structures(fields: AdvFields) -> Iterator[tuple[int, bytes]]:
    for company_id, payload in fields.manufacturer_data.items():
        yield _AD_MANUFACTURER, company_id.to_bytes(2, "little") + payload
    for uuid, payload in fields.service_data.items():
        if uuid.startswith("0000") and uuid.endswith(SIG_BASE_UUID_SUFFIX):
            yield _AD_SERVICE_DATA_16, bytes.fromhex(uuid[4:8])[::-1] + payload
        else:
            yield _AD_SERVICE_DATA_128, bytes.fromhex(uuid.replace("-", ""))[::-1] + payload


def matches_patterns(fields: AdvFields, patterns: Sequence[OrPatternLike]) -> bool:
    """True when an AD structure of ``fields`` matches one BlueZ or-pattern (what passive scanning lets through)."""
    for ad_type, data in _ad_structures(fields):
        for start, pattern_type, content in patterns:
            if pattern_type == ad_type and data[start : start + len(content)] == content:
                return True
    return False


class SimulatedScannerBackend(BaseBleakScanner):
    """bleak scanner backend over a :class:`SimulatedAir` (pass the class as ``BleakScanner(backend=...)``)."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: ScanMode = "active",
        *,
        bluez: BlueZScannerArgs | None = None,
        air: SimulatedAir | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        bluez = bluez or {}
        self.scanning_mode: ScanMode = scanning_mode
        self.adapter = bluez.get("adapter", "hci0")
        self._or_patterns: list[OrPatternLike] = list(bluez.get("or_patterns") or [])
        if scanning_mode == "passive" and not self._or_patterns:
            raise BleakError("passive scanning mode requires bluez or_patterns")
        self._air = air
        self._rssi_threshold: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._addresses: dict[str, str] = {}  # tag label -> address last heard

    def set_scanning_filter(self, **kwargs: Any) -> None:
        """Accepts BlueZ-style ``filters={"UUIDs": [...], "RSSI": -80}``."""
        filters = kwargs.get("filters", {})
        if "UUIDs" in filters:
            self._service_uuids = [u.lower() for u in filters["UUIDs"]]
        if "RSSI" in filters:
            self._rssi_threshold = int(filters["RSSI"])

    async def start(self) -> None:
        air = self._air or air_for(self.adapter)
        if air is None:
            raise BleakError(f"adapter '{self.adapter}' not found")
        air.begin_scan(self.scanning_mode)
        self._rng.seed(f"{air.seed}:{air.starts}")
        self.seen_devices = {}
        self._task = asyncio.get_running_loop().create_task(self._run(air), name=f"simulated-scan-{self.adapter}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        air = self._air or air_for(self.adapter)
        if air is not None:
            air.stops += 1

    # emission -----------------------------------------------------------------------------------------------------
    def _admit(self, fields: AdvFields) -> AdvFields | None:
        """What this scanner receives of ``fields``: filtered by or-patterns (passive) and service UUIDs."""
        if self.scanning_mode == "passive" and not matches_patterns(fields, self._or_patterns):
            return None
        if not self.is_allowed_uuid(fields.service_uuids):
            return None
        return fields

    def _deliver(self, air: SimulatedAir, address: str, fields: AdvFields, rssi: int, local_name: str | None) -> None:
        if self._rssi_threshold is not None and rssi < self._rssi_threshold:
            return
        adv = AdvertisementData(
            local_name=local_name,
            manufacturer_data=dict(fields.manufacturer_data),
            service_data=dict(fields.service_data),
            service_uuids=fields.service_uuids,
            tx_power=fields.tx_power,
            rssi=rssi,
            platform_data=_PLATFORM_DATA,
        )
        device = self.create_or_update_device(address, address, local_name, {"simulated": True}, adv)
        air.emitted += 1
        try:
            self.call_detection_callbacks(device, adv)
        except Exception:  # like BlueZ's D-Bus handler: a failing callback is logged, scanning goes on
            logger.exception("detection callback failed")
            air.callback_errors += 1

    def _name(self, tag: SimulatedTag, fields: AdvFields) -> str | None:
        """The local name as heard: a name sent only in the scan response is missing when scanning passively."""
        if tag.name_in_scan_response and self.scanning_mode == "passive":
            return None
        return fields.local_name

    def _rssi(self, tag: SimulatedTag) -> int:
        return max(-110, min(-20, round(self._rng.gauss(tag.rssi, tag.rssi_noise))))

    def _emit_injected(self, air: SimulatedAir) -> None:
        while air.injected and not air.quiet:
            fields, rssi, address = air.injected.popleft()
            if self._admit(fields) is not None:
                self._deliver(air, address, fields, rssi, fields.local_name)

    def _emit_tag(self, air: SimulatedAir, tag: SimulatedTag, seq: int, now: float, uptime: float) -> None:
        admitted = self._admit(tag.frame(seq, uptime))
        if admitted is None or air.quiet:
            return
        address = tag.address_at(now, air.seed)
        previous = self._addresses.get(tag.label)
        if address != previous:  # the old address disappears, as BlueZ drops devices it no longer hears
            if previous is not None:
                self.seen_devices.pop(previous, None)
            self._addresses[tag.label] = address
        self._deliver(air, address, admitted, self._rssi(tag), self._name(tag, admitted))

    async def _run(self, air: SimulatedAir) -> None:
        loop = asyncio.get_running_loop()
        booted = loop.time()
        tags = list(air.tags)
        due = [(booted + self._rng.uniform(0, tag.interval_s), i) for i, tag in enumerate(tags)]
        heapq.heapify(due)
        seq = [0] * len(tags)
        while True:
            if air.high_rate and not air.quiet:
                await self._run_fast(air, tags, booted)
                continue
            now = loop.time()
            self._emit_injected(air)
            while due and due[0][0] <= now:
                at, i = heapq.heappop(due)
                tag = tags[i]
                jitter = tag.interval_s * self._rng.uniform(0.9, 1.1)
                heapq.heappush(due, (max(at, now - tag.interval_s) + jitter, i))
                self._emit_tag(air, tag, seq[i], now, now - booted)
                seq[i] += 1
            wait = (due[0][0] - loop.time()) if due else 0.05
            await asyncio.sleep(min(max(wait, 0.0), 0.05))

    def prebuild(
        self, air: SimulatedAir, tags: Sequence[SimulatedTag], booted: float
    ) -> list[tuple[str, BLEDevice, AdvertisementData]]:
        """Pre-built (address, device, advertisement) objects for the high-rate mode: every tag's next frames,
        addresses rotating as simulated time passes, RSSI noise included."""
        ring: list[tuple[str, BLEDevice, AdvertisementData]] = []
        if not tags:
            return ring
        rounds = max(1, (8 * air.high_rate_batch) // len(tags) + 1)
        for r in range(rounds):
            t = booted + r * 60.0  # a minute of simulated time per round: rotating tags change address
            for tag in tags:
                fields = self._admit(tag.frame(r, t - booted))
                if fields is None:
                    continue
                address = tag.address_at(t, air.seed)
                name = self._name(tag, fields)
                adv = AdvertisementData(
                    name,
                    dict(fields.manufacturer_data),
                    dict(fields.service_data),
                    fields.service_uuids,
                    fields.tx_power,
                    self._rssi(tag),
                    _PLATFORM_DATA,
                )
                ring.append((address, BLEDevice(address, name, {"simulated": True}), adv))
        return ring

    async def _run_fast(self, air: SimulatedAir, tags: Sequence[SimulatedTag], booted: float) -> None:
        ring = self.prebuild(air, tags, booted)
        if not ring:
            await asyncio.sleep(0.05)
            return
        batch = max(1, air.high_rate_batch)
        seen = self.seen_devices
        call = self.call_detection_callbacks
        chunks = [ring[i : i + batch] for i in range(0, len(ring), batch)]
        while air.high_rate and not air.quiet:
            for chunk in chunks:
                for address, device, adv in chunk:
                    seen[address] = (device, adv)
                    try:
                        call(device, adv)
                    except Exception:
                        logger.exception("detection callback failed")
                        air.callback_errors += 1
                air.emitted += len(chunk)
                await asyncio.sleep(0)
                if not air.high_rate or air.quiet:
                    return
