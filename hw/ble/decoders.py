"""Beacon decoders: pure functions from advertisement fields (as bleak reports them) to typed frozen dataclasses.

Every decoder has the same contract: it returns ``None`` when the data is not its format, a dataclass when it is,
and raises :class:`BeaconFormatError` when the data is its format but malformed (truncated, wrong length, unknown
frame type or version, unknown BTHome object id). It raises nothing else, whatever the bytes.

Formats: iBeacon (Apple company id, type 0x02), AltBeacon (beacon code 0xBEAC under any company id), Eddystone
(service 0xFEAA: UID and unencrypted TLM decoded, URL / EID / encrypted TLM recognised and ignored) and BTHome v2
(service 0xFCD2: unencrypted objects decoded, encrypted payloads reported as encrypted). Identifiers, lengths and
the BTHome object table live in ``formats.toml``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from hw.ble import formats as f
from hw.ble import keys


class BeaconFormatError(ValueError):
    """The data is a known beacon format but malformed. Messages never carry the payload itself."""


@dataclass(frozen=True, slots=True)
class IBeacon:
    """Apple iBeacon: proximity UUID, major, minor and the calibrated RSSI at 1 m (dBm)."""

    uuid: str  # canonical 8-4-4-4-12 lowercase hex
    major: int
    minor: int
    measured_power: int

    @property
    def key(self) -> str:
        return keys.ibeacon_key(self.uuid, self.major, self.minor)


@dataclass(frozen=True, slots=True)
class AltBeacon:
    """AltBeacon: 20-byte beacon id, reference RSSI at 1 m (dBm) and the manufacturer-reserved byte."""

    company_id: int
    beacon_id: bytes
    reference_rssi: int
    reserved: int

    @property
    def key(self) -> str:
        return keys.altbeacon_key(self.beacon_id)


@dataclass(frozen=True, slots=True)
class EddystoneUid:
    """Eddystone-UID frame: 10-byte namespace, 6-byte instance, calibrated TX power at 0 m (dBm)."""

    namespace: bytes
    instance: bytes
    tx_power: int

    @property
    def key(self) -> str:
        return keys.eddystone_key(self.namespace, self.instance)


@dataclass(frozen=True, slots=True)
class EddystoneTlm:
    """Unencrypted Eddystone-TLM frame (version 0). Carries no id: pair it with the UID frame of the same sender."""

    battery_mv: int | None  # None: not supported (sent as 0)
    temperature: float | None  # °C, 8.8 fixed point; None: not supported (sent as 0x8000)
    adv_count: int
    sec_count: int  # time since power-on in 0.1 s

    @property
    def uptime_s(self) -> float:
        return self.sec_count / 10


@dataclass(frozen=True, slots=True)
class EddystoneIgnored:
    """An Eddystone frame that is recognised but carries nothing the gateway uses (URL, EID, encrypted TLM)."""

    frame: Literal["url", "eid", "etlm"]


@dataclass(frozen=True, slots=True)
class BTHomeObject:
    """One BTHome v2 object: its id, table name and kind, the scaled value and its SenML unit."""

    object_id: int
    name: str
    kind: f.ObjectKind
    value: float | int | bool | str | bytes
    unit: str | None


@dataclass(frozen=True, slots=True)
class BTHome:
    """A BTHome v2 frame. Encrypted frames are reported with ``encrypted=True`` and no objects."""

    encrypted: bool
    trigger_based: bool
    objects: tuple[BTHomeObject, ...]

    @property
    def packet_id(self) -> int | None:
        for obj in self.objects:
            if obj.kind == "packet_id":
                return int(obj.value)
        return None


Beacon = IBeacon | AltBeacon | EddystoneUid | EddystoneTlm | EddystoneIgnored | BTHome
EddystoneFrame = EddystoneUid | EddystoneTlm | EddystoneIgnored

_IBEACON_TAIL: Final = struct.Struct(">HHb")
_TLM: Final = struct.Struct(">HhII")
_TLM_NO_TEMPERATURE: Final = -0x8000
_IBEACON_TOTAL: Final = f.IBEACON_LENGTH + 2


def _int8(byte: int) -> int:
    return byte - 256 if byte > 127 else byte


def parse_ibeacon(payload: bytes) -> IBeacon | None:
    """Decode Apple manufacturer data (company 0x004C) as an iBeacon."""
    if not payload or payload[0] != f.IBEACON_TYPE:
        return None
    if len(payload) != _IBEACON_TOTAL or payload[1] != f.IBEACON_LENGTH:
        length = payload[1] if len(payload) > 1 else None
        raise BeaconFormatError(
            f"iBeacon frame of {len(payload)} bytes with length byte {length}, expected {_IBEACON_TOTAL} and "
            f"{f.IBEACON_LENGTH}"
        )
    h = payload[2:18].hex()
    major, minor, power = _IBEACON_TAIL.unpack_from(payload, 18)
    return IBeacon(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", major, minor, power)


def parse_altbeacon(company_id: int, payload: bytes) -> AltBeacon | None:
    """Decode manufacturer data of any company as an AltBeacon (beacon code 0xBEAC)."""
    if payload[:2] != f.ALTBEACON_CODE:
        return None
    if len(payload) != f.ALTBEACON_LENGTH:
        raise BeaconFormatError(f"AltBeacon frame of {len(payload)} bytes, expected {f.ALTBEACON_LENGTH}")
    return AltBeacon(company_id, payload[2:22], _int8(payload[22]), payload[23])


def parse_manufacturer(company_id: int, payload: bytes) -> IBeacon | AltBeacon | None:
    """Decode one manufacturer-data entry (company id → bytes after the company id)."""
    if company_id == f.IBEACON_COMPANY_ID:
        found = parse_ibeacon(payload)
        if found is not None:
            return found
    return parse_altbeacon(company_id, payload)


def _eddystone_tlm(payload: bytes) -> EddystoneTlm | EddystoneIgnored:
    if len(payload) < 2:
        raise BeaconFormatError("Eddystone-TLM frame truncated before its version byte")
    version = payload[1]
    if version == f.EDDYSTONE_TLM_PLAIN[0]:
        if len(payload) != f.EDDYSTONE_TLM_PLAIN[1]:
            raise BeaconFormatError(f"Eddystone-TLM frame of {len(payload)} bytes, expected {f.EDDYSTONE_TLM_PLAIN[1]}")
        battery, temperature, adv_count, sec_count = _TLM.unpack_from(payload, 2)
        return EddystoneTlm(
            battery or None,
            None if temperature == _TLM_NO_TEMPERATURE else temperature / 256,
            adv_count,
            sec_count,
        )
    if version == f.EDDYSTONE_TLM_ENCRYPTED[0]:
        if len(payload) != f.EDDYSTONE_TLM_ENCRYPTED[1]:
            raise BeaconFormatError(f"Eddystone-eTLM frame of {len(payload)} bytes, expected 18")
        return EddystoneIgnored("etlm")
    raise BeaconFormatError(f"Eddystone-TLM version {version}, expected 0 or 1")


def parse_eddystone(payload: bytes) -> EddystoneFrame:
    """Decode Eddystone service data (service 0xFEAA). Every frame under this service is Eddystone."""
    if not payload:
        raise BeaconFormatError("empty Eddystone frame")
    frame, size = payload[0], len(payload)
    if frame == f.EDDYSTONE_UID:
        if size not in f.EDDYSTONE_UID_LENGTHS:
            raise BeaconFormatError(f"Eddystone-UID frame of {size} bytes, expected 18 or 20")
        return EddystoneUid(payload[2:12], payload[12:18], _int8(payload[1]))
    if frame == f.EDDYSTONE_TLM:
        return _eddystone_tlm(payload)
    if frame == f.EDDYSTONE_URL:
        if size not in f.EDDYSTONE_URL_LENGTHS or payload[2] > 3:
            raise BeaconFormatError(f"Eddystone-URL frame of {size} bytes or with an unknown scheme")
        return EddystoneIgnored("url")
    if frame == f.EDDYSTONE_EID:
        if size != f.EDDYSTONE_EID_LENGTH:
            raise BeaconFormatError(f"Eddystone-EID frame of {size} bytes, expected {f.EDDYSTONE_EID_LENGTH}")
        return EddystoneIgnored("eid")
    raise BeaconFormatError(f"unknown Eddystone frame type {frame:#04x}")


def _bthome_value(spec: f.BTHomeObjectSpec, raw: bytes) -> float | int | bool | str | bytes:
    kind = spec.kind
    if kind == "number":
        number = int.from_bytes(raw, "little", signed=spec.signed)
        return number if spec.factor == 1 else round(number * spec.factor, spec.digits)
    if kind == "binary":
        return raw[0] != 0
    if kind == "event":
        if spec.name == "dimmer":
            return f"{f.BTHOME_DIMMER_EVENTS.get(raw[0], f'event_{raw[0]:#04x}')}:{raw[1]}"
        return f.BTHOME_BUTTON_EVENTS.get(raw[0], f"event_{raw[0]:#04x}")
    if kind == "text":
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BeaconFormatError("BTHome text object is not UTF-8") from None
    if kind == "raw":
        return bytes(raw)
    return int.from_bytes(raw, "little")  # packet_id, info


def parse_bthome(payload: bytes) -> BTHome:
    """Decode BTHome v2 service data (service 0xFCD2): device-information byte, then object id / value pairs."""
    if not payload:
        raise BeaconFormatError("empty BTHome frame")
    info = payload[0]
    if info >> 5 != f.BTHOME_VERSION:
        raise BeaconFormatError(f"BTHome version {info >> 5}, expected {f.BTHOME_VERSION}")
    trigger_based = bool(info & f.BTHOME_TRIGGER_FLAG)
    size = len(payload)
    if info & f.BTHOME_ENCRYPTION_FLAG:
        if size < f.BTHOME_ENCRYPTED_MIN_LENGTH:
            raise BeaconFormatError(f"encrypted BTHome frame of {size} bytes, too short for counter and MIC")
        return BTHome(True, trigger_based, ())
    objects: list[BTHomeObject] = []
    table = f.BTHOME_OBJECTS
    i = 1
    while i < size:
        object_id = payload[i]
        spec = table.get(object_id)
        if spec is None:
            raise BeaconFormatError(f"unknown BTHome object id {object_id:#04x} at byte {i}: its length is unknown")
        i += 1
        length = spec.size
        if length == 0:  # length-prefixed (text, raw)
            if i >= size:
                raise BeaconFormatError(f"BTHome object {object_id:#04x} truncated")
            length = payload[i]
            i += 1
        end = i + length
        if end > size:
            raise BeaconFormatError(f"BTHome object {object_id:#04x} truncated: {size - i} of {length} bytes")
        objects.append(BTHomeObject(object_id, spec.name, spec.kind, _bthome_value(spec, payload[i:end]), spec.unit))
        i = end
    return BTHome(False, trigger_based, tuple(objects))


def parse_service(uuid: str, payload: bytes) -> EddystoneFrame | BTHome | None:
    """Decode one service-data entry (128-bit UUID string as bleak reports it → bytes)."""
    if uuid == f.EDDYSTONE_UUID:
        return parse_eddystone(payload)
    if uuid == f.BTHOME_UUID:
        return parse_bthome(payload)
    return None


def decode_advertisement(manufacturer_data: Mapping[int, bytes], service_data: Mapping[str, bytes]) -> list[Beacon]:
    """Every beacon frame in one advertisement (bleak may merge several frames of one sender).

    Raises :class:`BeaconFormatError` at the first malformed entry; use the ``parse_*`` functions one entry at a
    time to keep the good frames of an advertisement that also holds a bad one.
    """
    found: list[Beacon] = []
    for company_id, payload in manufacturer_data.items():
        beacon = parse_manufacturer(company_id, payload)
        if beacon is not None:
            found.append(beacon)
    for uuid, payload in service_data.items():
        frame = parse_service(uuid, payload)
        if frame is not None:
            found.append(frame)
    return found


def tag_key(beacon: Beacon, local_name: str | None = None) -> str | None:
    """The payload key of ``beacon`` (see :mod:`hw.ble.keys`), or None when the frame carries no identity.

    A BTHome frame is keyed by the advertised ``local_name``; keying by address is the caller's decision (only for
    fixed-address sensors) through :func:`hw.ble.keys.bthome_address_key`.
    """
    if isinstance(beacon, IBeacon | AltBeacon | EddystoneUid):
        return beacon.key
    if isinstance(beacon, BTHome) and local_name:
        return keys.bthome_name_key(local_name)
    return None
