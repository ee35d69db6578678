"""The BLE hot path: the detection callback and the per-tag aggregation windows it fills.

:meth:`BleAggregator.on_advertisement` is the callback bleak calls for every advertisement. It decodes the frames,
derives the payload key and, for a registered and consented tag, updates that tag's window (count, first/last seen,
RSSI min/sum/max, TX power, battery, BTHome values and events). Everything else is only counted: unknown tags,
tags without consent, malformed frames, frames without identity. Their keys and addresses are never stored or
logged. :meth:`BleAggregator.flush` turns the windows into readings and starts new ones.

Eddystone-TLM frames carry no id: they are paired with the Eddystone-UID frames of the same sender address, an
association kept (for registered tags only) for one to two windows, so it follows address rotation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from gateway import model
from gateway.model import Priority, Reading
from gateway.sources.ble_config import RegisteredTag
from hw.ble.decoders import (
    BeaconFormatError,
    BTHome,
    EddystoneTlm,
    EddystoneUid,
    IBeacon,
    parse_manufacturer,
    parse_service,
)
from hw.ble.keys import bthome_address_key, bthome_name_key, is_address_key

MAX_EVENTS_PER_WINDOW: Final = 32
"""Button and dimmer events kept per tag and window; more are counted as ``events_dropped``."""

Value = float | int | bool | str | bytes


@dataclass(slots=True)
class TagWindow:
    """One registered device's sightings in the current window."""

    device_id: str
    count: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    rssi_min: int = 0
    rssi_max: int = 0
    rssi_sum: int = 0
    tx_power: int | None = None
    rssi_1m: int | None = None
    last_packet_id: int | None = None
    values: dict[str, tuple[Value, str | None, float]] = field(default_factory=dict)
    events: list[tuple[str, Value, float]] = field(default_factory=list)

    def reset(self) -> None:
        self.count = 0
        self.tx_power = None
        self.rssi_1m = None
        self.values = {}
        self.events = []


@dataclass(slots=True)
class Counters:
    """Totals since the source started (never identities)."""

    advertisements: int = 0
    unknown: int = 0  # a beacon format with a key nobody registered
    no_consent: int = 0  # registered, but without consent
    malformed: int = 0
    unattributed: int = 0  # TLM without a paired UID, BTHome without a usable name
    ignored: int = 0  # Eddystone URL / EID / encrypted TLM
    encrypted: int = 0  # encrypted BTHome from registered sensors (counted, not decoded)
    other: int = 0  # no beacon format at all (phones, TVs, ...)
    events_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _model_now() -> float:
    return model.now()


class BleAggregator:
    """Detection callback plus windows for the registered tags (see the module docstring)."""

    def __init__(self, tags: Sequence[RegisteredTag], *, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or _model_now
        windows: dict[str, TagWindow] = {}
        self._by_key: dict[str, TagWindow] = {}
        refused: set[str] = set()
        for tag in tags:
            if tag.consent:
                self._by_key[tag.key] = windows.setdefault(tag.id, TagWindow(tag.id))
            else:
                refused.add(tag.key)
        self._refused: frozenset[str] = frozenset(refused)
        self._address_keys = any(is_address_key(tag.key) for tag in tags)
        self._active: list[TagWindow] = []
        self._owners: dict[str, TagWindow] = {}  # address -> window, Eddystone senders of registered tags only
        self._owners_before: dict[str, TagWindow] = {}
        self.counters = Counters()

    @property
    def advertisements(self) -> int:
        return self.counters.advertisements

    # the hot path ---------------------------------------------------------------------------------------------------
    def on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        """bleak detection callback: decode, key, aggregate or count. Never raises for any advertisement."""
        counters = self.counters
        counters.advertisements += 1
        now = self._clock()
        hit: TagWindow | None = None
        decoded = False
        for company_id, payload in adv.manufacturer_data.items():
            try:
                beacon = parse_manufacturer(company_id, payload)
            except BeaconFormatError:
                counters.malformed += 1
                continue
            if beacon is not None:
                decoded = True
                window = self._lookup(beacon.key)
                if window is not None and window is not hit:
                    hit = window
                    self._sighting(window, adv.rssi, adv.tx_power, now)
                    window.rssi_1m = beacon.measured_power if isinstance(beacon, IBeacon) else beacon.reference_rssi
        for uuid, payload in adv.service_data.items():
            try:
                frame = parse_service(uuid, payload)
            except BeaconFormatError:
                counters.malformed += 1
                continue
            if frame is None:
                continue
            decoded = True
            if isinstance(frame, EddystoneUid):
                window = self._lookup(frame.key)
                if window is not None:
                    self._owners[device.address] = window
                    if window is not hit:
                        hit = window
                        self._sighting(window, adv.rssi, adv.tx_power, now)
                    if window.tx_power is None:
                        window.tx_power = frame.tx_power
            elif isinstance(frame, EddystoneTlm):
                window = self._owners.get(device.address) or self._owners_before.get(device.address)
                if window is None:
                    counters.unattributed += 1
                    continue
                if window is not hit:
                    hit = window
                    self._sighting(window, adv.rssi, adv.tx_power, now)
                self._telemetry(window, frame, now)
            elif isinstance(frame, BTHome):
                window = self._bthome_window(device, adv)
                if window is not None:
                    if window is not hit:
                        hit = window
                        self._sighting(window, adv.rssi, adv.tx_power, now)
                    self._bthome_values(window, frame, now)
            else:
                counters.ignored += 1
        if not decoded:
            counters.other += 1

    def _lookup(self, key: str) -> TagWindow | None:
        window = self._by_key.get(key)
        if window is None:
            if key in self._refused:
                self.counters.no_consent += 1
            else:
                self.counters.unknown += 1
        return window

    def _sighting(self, window: TagWindow, rssi: int, tx_power: int | None, now: float) -> None:
        if window.count == 0:
            self._active.append(window)
            window.first_seen = now
            window.rssi_min = window.rssi_max = window.rssi_sum = rssi
        else:
            window.rssi_sum += rssi
            if rssi < window.rssi_min:
                window.rssi_min = rssi
            elif rssi > window.rssi_max:
                window.rssi_max = rssi
        window.count += 1
        window.last_seen = now
        if tx_power is not None:
            window.tx_power = tx_power

    def _telemetry(self, window: TagWindow, tlm: EddystoneTlm, now: float) -> None:
        if tlm.battery_mv is not None:
            window.values["battery_voltage"] = (tlm.battery_mv / 1000, "V", now)
        if tlm.temperature is not None:
            window.values["temperature"] = (tlm.temperature, "Cel", now)

    def _bthome_window(self, device: BLEDevice, adv: AdvertisementData) -> TagWindow | None:
        name = adv.local_name
        keys = [bthome_name_key(name)] if name else []
        if self._address_keys:
            keys.append(bthome_address_key(device.address))
        for key in keys:
            window = self._by_key.get(key)
            if window is not None:
                return window
        if not keys:
            self.counters.unattributed += 1
        elif any(key in self._refused for key in keys):
            self.counters.no_consent += 1
        else:
            self.counters.unknown += 1
        return None

    def _bthome_values(self, window: TagWindow, frame: BTHome, now: float) -> None:
        if frame.encrypted:
            self.counters.encrypted += 1
            return
        packet_id = frame.packet_id
        if packet_id is not None:
            if packet_id == window.last_packet_id:
                return  # the same packet repeated: values and events already taken
            window.last_packet_id = packet_id
        repeats: dict[str, int] = {}
        for obj in frame.objects:
            kind = obj.kind
            if kind == "number" or kind == "binary":
                n = repeats[obj.name] = repeats.get(obj.name, 0) + 1
                window.values[obj.name if n == 1 else f"{obj.name}_{n}"] = (obj.value, obj.unit, now)
            elif kind == "event" and obj.value != "none":
                if len(window.events) < MAX_EVENTS_PER_WINDOW:
                    window.events.append((obj.name, obj.value, now))
                else:
                    self.counters.events_dropped += 1

    # window end -----------------------------------------------------------------------------------------------------
    def flush(self) -> list[Reading]:
        """Readings for every registered tag seen since the last flush; starts the next window."""
        readings: list[Reading] = []
        active, self._active = self._active, []
        for window in active:
            readings.extend(window_readings(window))
            window.reset()
        self._owners_before, self._owners = self._owners, {}
        return readings


def window_readings(window: TagWindow) -> list[Reading]:
    """The readings of one tag's window: detection (seen, first_seen, RSSI, TX power) as events, then values."""
    dev, at, event = window.device_id, window.last_seen, Priority.EVENT
    out = [
        Reading(dev, "seen", window.count, "count", at, priority=event),
        Reading(dev, "first_seen", window.first_seen, "s", at, priority=event),
        Reading(dev, "rssi_min", window.rssi_min, "dBm", at, priority=event),
        Reading(dev, "rssi_mean", round(window.rssi_sum / window.count, 1), "dBm", at, priority=event),
        Reading(dev, "rssi_max", window.rssi_max, "dBm", at, priority=event),
    ]
    if window.tx_power is not None:
        out.append(Reading(dev, "tx_power", window.tx_power, "dBm", at, priority=event))
    if window.rssi_1m is not None:
        out.append(Reading(dev, "rssi_1m", window.rssi_1m, "dBm", at, priority=event))
    for quantity, (value, unit, observed) in window.values.items():
        out.append(Reading(dev, quantity, value, unit, observed, priority=Priority.TELEMETRY))
    for quantity, value, observed in window.events:
        out.append(Reading(dev, quantity, value, None, observed, priority=event))
    return out
