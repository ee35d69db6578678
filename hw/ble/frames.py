"""Frame builders: the inverse of :mod:`hw.ble.decoders`, for the simulator and for round-trip tests.

``payload`` functions give the bytes bleak reports for one entry (manufacturer data after the company id, or
service data after the UUID); :func:`fields_of` turns a decoded beacon back into advertisement fields, so that
``decode(fields_of(beacon)) == beacon``. :data:`MALFORMED` holds one broken example of each format.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hw.ble import formats as f
from hw.ble.decoders import (
    AltBeacon,
    Beacon,
    BTHome,
    EddystoneTlm,
    EddystoneUid,
    IBeacon,
)


@dataclass(frozen=True, slots=True)
class AdvFields:
    """The parts of one advertisement the decoders read, as bleak's ``AdvertisementData`` carries them."""

    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_data: dict[str, bytes] = field(default_factory=dict)
    local_name: str | None = None
    tx_power: int | None = None

    @property
    def service_uuids(self) -> list[str]:
        return list(self.service_data)


def _int8(value: int) -> int:
    if not -128 <= value <= 127:
        raise ValueError(f"{value} does not fit a signed byte")
    return value & 0xFF


def ibeacon_payload(uuid: str, major: int, minor: int, measured_power: int) -> bytes:
    """Apple manufacturer data (company 0x004C) of an iBeacon."""
    return (
        bytes((f.IBEACON_TYPE, f.IBEACON_LENGTH))
        + bytes.fromhex(uuid.replace("-", ""))
        + major.to_bytes(2, "big")
        + minor.to_bytes(2, "big")
        + bytes((_int8(measured_power),))
    )


def altbeacon_payload(beacon_id: bytes, reference_rssi: int, reserved: int = 0) -> bytes:
    """Manufacturer data (after the company id) of an AltBeacon."""
    if len(beacon_id) != 20:
        raise ValueError("an AltBeacon id is 20 bytes")
    return f.ALTBEACON_CODE + beacon_id + bytes((_int8(reference_rssi), reserved))


def eddystone_uid_payload(namespace: bytes, instance: bytes, tx_power: int, *, reserved: bool = True) -> bytes:
    """Eddystone-UID service data; ``reserved=False`` leaves out the two trailing RFU bytes as some beacons do."""
    if len(namespace) != 10 or len(instance) != 6:
        raise ValueError("an Eddystone-UID namespace is 10 bytes and its instance 6")
    return bytes((f.EDDYSTONE_UID, _int8(tx_power))) + namespace + instance + (b"\0\0" if reserved else b"")


def eddystone_tlm_payload(battery_mv: int | None, temperature: float | None, adv_count: int, sec_count: int) -> bytes:
    """Unencrypted Eddystone-TLM service data (temperature in °C, rounded to 1/256)."""
    temp = -0x8000 if temperature is None else round(temperature * 256)
    return (
        bytes((f.EDDYSTONE_TLM, f.EDDYSTONE_TLM_PLAIN[0]))
        + (battery_mv or 0).to_bytes(2, "big")
        + temp.to_bytes(2, "big", signed=True)
        + adv_count.to_bytes(4, "big")
        + sec_count.to_bytes(4, "big")
    )


def eddystone_url_payload(tx_power: int, scheme: int, encoded_url: bytes) -> bytes:
    return bytes((f.EDDYSTONE_URL, _int8(tx_power), scheme)) + encoded_url


def eddystone_eid_payload(tx_power: int, eid: bytes) -> bytes:
    return bytes((f.EDDYSTONE_EID, _int8(tx_power))) + eid


def eddystone_etlm_payload(sealed: bytes) -> bytes:
    """Encrypted TLM: 12 bytes of ciphertext, 2 of salt and 2 of MIC after the frame type and version."""
    return bytes((f.EDDYSTONE_TLM, f.EDDYSTONE_TLM_ENCRYPTED[0])) + sealed


_BUTTON_CODES = {name: code for code, name in f.BTHOME_BUTTON_EVENTS.items()}
_DIMMER_CODES = {name: code for code, name in f.BTHOME_DIMMER_EVENTS.items()}


def _code(table: dict[str, int], name: str) -> int:
    if name.startswith("event_"):
        return int(name[6:], 16)
    return table[name]


def bthome_value_bytes(object_id: int, value: float | int | bool | str | bytes) -> bytes:
    """The value bytes of one BTHome object as its table entry lays them out."""
    spec = f.BTHOME_OBJECTS[object_id]
    if spec.kind == "number":
        assert isinstance(value, int | float)
        raw = round(value / spec.factor)
        return raw.to_bytes(spec.size, "little", signed=spec.signed)
    if spec.kind == "binary":
        return b"\x01" if value else b"\x00"
    if spec.kind == "event":
        assert isinstance(value, str)
        if spec.name == "dimmer":
            event, _, steps = value.partition(":")
            return bytes((_code(_DIMMER_CODES, event), int(steps)))
        return bytes((_code(_BUTTON_CODES, value),))
    if spec.kind in ("text", "raw"):
        if not isinstance(value, str | bytes):
            raise TypeError(f"BTHome {spec.name} takes str or bytes")
        data = value.encode() if isinstance(value, str) else value
        return bytes((len(data),)) + data
    assert isinstance(value, int)
    return value.to_bytes(spec.size, "little")


def bthome_payload(
    objects: Iterable[tuple[int, float | int | bool | str | bytes]], *, trigger_based: bool = False
) -> bytes:
    """Unencrypted BTHome v2 service data from (object id, value) pairs, in the given order."""
    info = f.BTHOME_VERSION << 5 | (f.BTHOME_TRIGGER_FLAG if trigger_based else 0)
    out = bytearray((info,))
    for object_id, value in objects:
        out.append(object_id)
        out += bthome_value_bytes(object_id, value)
    return bytes(out)


def bthome_encrypted_payload(ciphertext: bytes, counter: int, mic: bytes, *, trigger_based: bool = False) -> bytes:
    """Encrypted BTHome v2 service data (the gateway does not decrypt: it only recognises it)."""
    info = f.BTHOME_VERSION << 5 | f.BTHOME_ENCRYPTION_FLAG | (f.BTHOME_TRIGGER_FLAG if trigger_based else 0)
    return bytes((info,)) + ciphertext + counter.to_bytes(4, "little") + mic


def fields_of(beacon: Beacon, *, local_name: str | None = None) -> AdvFields:
    """Advertisement fields that decode back to ``beacon`` (an ignored Eddystone frame becomes a minimal one)."""
    if isinstance(beacon, IBeacon):
        payload = ibeacon_payload(beacon.uuid, beacon.major, beacon.minor, beacon.measured_power)
        return AdvFields(manufacturer_data={f.IBEACON_COMPANY_ID: payload}, local_name=local_name)
    if isinstance(beacon, AltBeacon):
        payload = altbeacon_payload(beacon.beacon_id, beacon.reference_rssi, beacon.reserved)
        return AdvFields(manufacturer_data={beacon.company_id: payload}, local_name=local_name)
    if isinstance(beacon, BTHome):
        if beacon.encrypted:
            data = bthome_encrypted_payload(b"\0" * 4, 0, b"\0" * 4, trigger_based=beacon.trigger_based)
        else:
            pairs = [(o.object_id, o.value) for o in beacon.objects]
            data = bthome_payload(pairs, trigger_based=beacon.trigger_based)
        return AdvFields(service_data={f.BTHOME_UUID: data}, local_name=local_name)
    if isinstance(beacon, EddystoneUid):
        data = eddystone_uid_payload(beacon.namespace, beacon.instance, beacon.tx_power)
    elif isinstance(beacon, EddystoneTlm):
        data = eddystone_tlm_payload(beacon.battery_mv, beacon.temperature, beacon.adv_count, beacon.sec_count)
    elif beacon.frame == "url":
        data = eddystone_url_payload(-20, 3, b"example\x07")
    elif beacon.frame == "eid":
        data = eddystone_eid_payload(-20, bytes(8))
    else:
        data = eddystone_etlm_payload(bytes(16))
    return AdvFields(service_data={f.EDDYSTONE_UUID: data}, local_name=local_name)


_IBEACON_EXAMPLE = ibeacon_payload("fda50693-a4e2-4fb1-afcf-c6eb07647825", 1, 2, -59)

MALFORMED: tuple[tuple[str, AdvFields], ...] = (
    ("ibeacon-truncated", AdvFields(manufacturer_data={f.IBEACON_COMPANY_ID: _IBEACON_EXAMPLE[:-3]})),
    (
        "ibeacon-bad-length-byte",
        AdvFields(manufacturer_data={f.IBEACON_COMPANY_ID: b"\x02\x14" + _IBEACON_EXAMPLE[2:]}),
    ),
    ("altbeacon-truncated", AdvFields(manufacturer_data={0x0118: f.ALTBEACON_CODE + bytes(19)})),
    ("eddystone-empty", AdvFields(service_data={f.EDDYSTONE_UUID: b""})),
    ("eddystone-unknown-frame", AdvFields(service_data={f.EDDYSTONE_UUID: b"\x50\x00\x01"})),
    ("eddystone-uid-truncated", AdvFields(service_data={f.EDDYSTONE_UUID: b"\x00\xee" + bytes(10)})),
    ("eddystone-tlm-version", AdvFields(service_data={f.EDDYSTONE_UUID: b"\x20\x07" + bytes(12)})),
    ("bthome-version-1", AdvFields(service_data={f.BTHOME_UUID: b"\x20\x01\x64"})),
    ("bthome-unknown-object", AdvFields(service_data={f.BTHOME_UUID: b"\x40\x01\x64\xfe\x01\x02"})),
    ("bthome-truncated-object", AdvFields(service_data={f.BTHOME_UUID: b"\x40\x02\x10"})),
)
"""One malformed advertisement per format and failure: the decoders raise ``BeaconFormatError`` for each."""

NOISE: tuple[AdvFields, ...] = (
    AdvFields(manufacturer_data={f.IBEACON_COMPANY_ID: bytes.fromhex("1005031c0a6e2b")}),  # Apple "nearby" (a phone)
    AdvFields(manufacturer_data={0x0006: bytes.fromhex("030080e3")}),  # Microsoft Swift Pair
    AdvFields(manufacturer_data={0x0075: bytes.fromhex("420401206f")}, local_name="[TV] Living Room"),  # Samsung
    AdvFields(service_data={"0000fe9f-0000-1000-8000-00805f9b34fb": bytes(20)}),  # Google Fast Pair
)
"""Advertisements that are no beacon format at all (phones, TVs): the decoders return None for each."""
