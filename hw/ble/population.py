"""Simulated advertisers: watch tags, sensors, strangers' tags and non-beacon noise, with rotating private addresses.

A :class:`SimulatedTag` knows what it advertises (``frame(seq, uptime)``), how loud and how often, and which
address it uses at a given time: a resolvable private address that changes every ``rotate_s`` seconds (as phones
and modern tags do), or a fixed address for fixed-address sensors. Factories build each kind; :func:`population`
builds a deterministic mix for tests, the demo and benchmarks.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict, Unpack

from hw.ble import keys
from hw.ble.formats import BTHOME_UUID, EDDYSTONE_UUID, IBEACON_COMPANY_ID
from hw.ble.frames import (
    MALFORMED,
    NOISE,
    AdvFields,
    altbeacon_payload,
    bthome_encrypted_payload,
    bthome_payload,
    eddystone_tlm_payload,
    eddystone_uid_payload,
    ibeacon_payload,
)

FrameFn = Callable[[int, float], AdvFields]
"""``frame(seq, uptime_s)``: what the tag sends in its ``seq``-th advertisement, ``uptime_s`` after power-on."""


def private_address(material: bytes) -> str:
    """A resolvable private address (top bits 01) derived from ``material``."""
    raw = bytearray(hashlib.blake2b(material, digest_size=6).digest())
    raw[0] = (raw[0] & 0x3F) | 0x40
    return ":".join(f"{b:02X}" for b in raw)


def static_address(material: bytes) -> str:
    """A static random address (top bits 11) derived from ``material``: stable across power cycles."""
    raw = bytearray(hashlib.blake2b(b"static:" + material, digest_size=6).digest())
    raw[0] |= 0xC0
    return ":".join(f"{b:02X}" for b in raw)


@dataclass(eq=False)
class SimulatedTag:
    """One advertiser. ``key`` is its payload key (None for noise); ``label`` is a test-side name, never sent."""

    label: str
    key: str | None
    frame: FrameFn
    rssi: float = -65.0
    rssi_noise: float = 4.0
    interval_s: float = 1.0
    rotate_s: float | None = 900.0  # None: fixed address
    address: str | None = None  # the fixed address when rotate_s is None
    name_in_scan_response: bool = False  # local name only in the scan response: absent when scanning passively
    phase: float = 0.0
    _epoch: int = field(default=-1, repr=False)
    _current: str = field(default="", repr=False)

    def address_at(self, t: float, seed: int = 0) -> str:
        """The address in use at time ``t`` (seconds on any clock)."""
        if self.rotate_s is None:
            if self.address is None:
                self.address = static_address(f"{seed}:{self.label}".encode())
            return self.address
        epoch = int((t + self.phase) // self.rotate_s)
        if epoch != self._epoch:
            self._epoch = epoch
            self._current = private_address(f"{seed}:{self.label}:{epoch}".encode())
        return self._current


class TagOptions(TypedDict, total=False):
    """How a tag advertises (see :class:`SimulatedTag`); every factory takes these as keywords."""

    rssi: float
    rssi_noise: float
    interval_s: float
    rotate_s: float | None
    address: str | None
    name_in_scan_response: bool
    phase: float


def _constant(fields: AdvFields) -> FrameFn:
    return lambda seq, uptime: fields


def ibeacon_tag(
    label: str, uuid: str, major: int, minor: int, *, measured_power: int = -59, **opts: Unpack[TagOptions]
) -> SimulatedTag:
    fields = AdvFields(manufacturer_data={IBEACON_COMPANY_ID: ibeacon_payload(uuid, major, minor, measured_power)})
    return SimulatedTag(label, keys.ibeacon_key(uuid, major, minor), _constant(fields), **opts)


def altbeacon_tag(
    label: str, beacon_id: bytes, *, company_id: int = 0x0118, reference_rssi: int = -59, **opts: Unpack[TagOptions]
) -> SimulatedTag:
    fields = AdvFields(manufacturer_data={company_id: altbeacon_payload(beacon_id, reference_rssi)})
    return SimulatedTag(label, keys.altbeacon_key(beacon_id), _constant(fields), **opts)


def eddystone_tag(
    label: str,
    namespace: bytes,
    instance: bytes,
    *,
    tx_power: int = -20,
    battery_mv: int | None = 3000,
    temperature: float | None = 24.0,
    tlm_every: int = 5,
    **opts: Unpack[TagOptions],
) -> SimulatedTag:
    """An Eddystone-UID tag that interleaves a TLM frame every ``tlm_every`` advertisements (0: never)."""
    uid = AdvFields(service_data={EDDYSTONE_UUID: eddystone_uid_payload(namespace, instance, tx_power)})

    def frame(seq: int, uptime: float) -> AdvFields:
        if tlm_every and seq % tlm_every == tlm_every - 1:
            tlm = eddystone_tlm_payload(battery_mv, temperature, seq + 1, int(uptime * 10))
            return AdvFields(service_data={EDDYSTONE_UUID: tlm})
        return uid

    return SimulatedTag(label, keys.eddystone_key(namespace, instance), frame, **opts)


def bthome_sensor(
    label: str,
    local_name: str,
    values: dict[int, float | int | bool | str],
    *,
    fixed_address: str | None = None,
    button_every: int = 0,
    encrypted: bool = False,
    **opts: Unpack[TagOptions],
) -> SimulatedTag:
    """A BTHome v2 sensor sending ``values`` (object id → value) with a packet id that changes every advertisement.

    With ``fixed_address`` it keeps one address and its key is the address key (a fixed-address sensor);
    otherwise it rotates its address and is keyed by ``local_name``. ``button_every`` adds a button press to every
    n-th packet.
    """

    def frame(seq: int, uptime: float) -> AdvFields:
        if encrypted:
            data = bthome_encrypted_payload(seq.to_bytes(6, "little"), seq, b"\xa5" * 4)
        else:
            objects: list[tuple[int, float | int | bool | str | bytes]] = [(0x00, seq % 256), *values.items()]
            if button_every and seq % button_every == button_every - 1:
                objects.append((0x3A, "press"))
            data = bthome_payload(objects)
        return AdvFields(service_data={BTHOME_UUID: data}, local_name=local_name)

    key = keys.bthome_address_key(fixed_address) if fixed_address else keys.bthome_name_key(local_name)
    if fixed_address:
        opts = opts | TagOptions(rotate_s=None, address=fixed_address.upper())
    return SimulatedTag(label, key, frame, **opts)


def noise_device(label: str, index: int, **opts: Unpack[TagOptions]) -> SimulatedTag:
    """A phone, TV or headset: advertises, but in no beacon format."""
    return SimulatedTag(label, None, _constant(NOISE[index % len(NOISE)]), **opts)


def malformed_device(label: str, index: int, **opts: Unpack[TagOptions]) -> SimulatedTag:
    """A broken or hostile advertiser: a known beacon format, malformed (see :data:`hw.ble.frames.MALFORMED`)."""
    return SimulatedTag(label, None, _constant(MALFORMED[index % len(MALFORMED)][1]), **opts)


def random_tag(label: str, rng: random.Random, **opts: Unpack[TagOptions]) -> SimulatedTag:
    """A tag of a random format with random identifiers (someone else's tag)."""
    kind = rng.randrange(4)
    if kind == 0:
        uuid = "-".join(rng.randbytes(n).hex() for n in (4, 2, 2, 2, 6))
        return ibeacon_tag(label, uuid, rng.randrange(65536), rng.randrange(65536), **opts)
    if kind == 1:
        return eddystone_tag(label, rng.randbytes(10), rng.randbytes(6), battery_mv=rng.randrange(2400, 3300), **opts)
    if kind == 2:
        return altbeacon_tag(label, rng.randbytes(20), **opts)
    values: dict[int, float | int | bool | str] = {0x01: rng.randrange(101), 0x02: round(rng.uniform(-5, 35), 2)}
    return bthome_sensor(label, f"SBHT-{rng.randrange(16**4):04X}", values, **opts)


def watch_tag(label: str, index: int, seed: int = 0, **opts: Unpack[TagOptions]) -> SimulatedTag:
    """A registered watch tag of the kinds towns hand out: iBeacon, Eddystone with TLM battery, AltBeacon, BTHome."""
    rng = random.Random(f"{seed}:{label}")
    kind = index % 5
    if kind in (0, 1):
        return ibeacon_tag(label, "5a4b0c1e-8f4d-4e0b-9c7a-6b2f1d3e4a50", 1, index, **opts)
    if kind == 2:
        return eddystone_tag(
            label,
            bytes.fromhex("4b414b4f474157413031"),
            index.to_bytes(6, "big"),
            battery_mv=rng.randrange(2500, 3100),
            **opts,
        )
    if kind == 3:
        return altbeacon_tag(label, bytes.fromhex("4b414b454841534849") + index.to_bytes(11, "big"), **opts)
    values: dict[int, float | int | bool | str] = {0x01: rng.randrange(40, 101), 0x02: round(rng.uniform(5, 30), 2)}
    return bthome_sensor(label, f"KK-{index:04d}", values, **opts)


def _spread(rng: random.Random, quietest: float, loudest: float, opts: TagOptions) -> TagOptions:
    return TagOptions(phase=rng.uniform(0, 900), rssi=rng.uniform(quietest, loudest)) | opts


def population(
    registered: int,
    strangers: int = 0,
    noise: int = 0,
    malformed: int = 0,
    *,
    seed: int = 0,
    **opts: Unpack[TagOptions],
) -> list[SimulatedTag]:
    """``registered`` watch tags (labels ``tag-<n>``, in that order first), ``strangers`` random tags, ``noise``
    non-beacon devices and ``malformed`` broken advertisers, each with a random address-rotation phase and signal
    strength. ``opts`` apply to every tag (e.g. ``interval_s``, ``rotate_s``)."""
    rng = random.Random(seed)
    tags: list[SimulatedTag] = []
    for i in range(registered):
        tags.append(watch_tag(f"tag-{i}", i, seed, **_spread(rng, -90, -50, opts)))
    for i in range(strangers):
        tags.append(random_tag(f"stranger-{i}", rng, **_spread(rng, -95, -60, opts)))
    for i in range(noise):
        tags.append(noise_device(f"noise-{i}", i, **_spread(rng, -95, -50, opts)))
    for i in range(malformed):
        tags.append(malformed_device(f"malformed-{i}", i, **_spread(rng, -95, -50, opts)))
    return tags
