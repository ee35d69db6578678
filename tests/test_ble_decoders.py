"""BLE beacon decoders: real frames per format, malformed frames, tag keys, fuzzing and encode/decode round trips."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw.ble import formats
from hw.ble.decoders import (
    AltBeacon,
    BeaconFormatError,
    BTHome,
    EddystoneIgnored,
    EddystoneTlm,
    EddystoneUid,
    IBeacon,
    decode_advertisement,
    parse_bthome,
    parse_manufacturer,
    parse_service,
    tag_key,
)
from hw.ble.frames import MALFORMED, NOISE, bthome_payload, fields_of
from hw.ble.keys import TagKeyError, normalize_tag_key

EDDY = formats.EDDYSTONE_UUID
BTH = formats.BTHOME_UUID
APPLE = 0x004C


def _h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# ---------------------------------------------------------------------------------------------------- real frames
MANUFACTURER_CASES = [
    pytest.param(
        APPLE,
        "02 15 fda50693a4e24fb1afcfc6eb07647825 0001 0002 c5",
        IBeacon("fda50693-a4e2-4fb1-afcf-c6eb07647825", 1, 2, -59),
        "ibeacon:fda50693-a4e2-4fb1-afcf-c6eb07647825:1:2",
        id="ibeacon",
    ),
    pytest.param(
        APPLE,
        "02 15 e2c56db5dffb48d2b060d0f5a71096e0 ffff 0000 b3",
        IBeacon("e2c56db5-dffb-48d2-b060-d0f5a71096e0", 65535, 0, -77),
        "ibeacon:e2c56db5-dffb-48d2-b060-d0f5a71096e0:65535:0",
        id="ibeacon-extremes",
    ),
    pytest.param(
        0x0118,
        "be ac 2f234454cf6d4a0fadf2f4911ba9ffa6 00010002 c5 00",
        AltBeacon(0x0118, _h("2f234454cf6d4a0fadf2f4911ba9ffa600010002"), -59, 0),
        "altbeacon:2f234454cf6d4a0fadf2f4911ba9ffa600010002",
        id="altbeacon-radius",
    ),
    pytest.param(
        APPLE,
        "be ac 000102030405060708090a0b0c0d0e0f10111213 bf 7f",
        AltBeacon(APPLE, bytes(range(20)), -65, 127),
        "altbeacon:000102030405060708090a0b0c0d0e0f10111213",
        id="altbeacon-under-apple-id",
    ),
    pytest.param(APPLE, "10 05 03 1c 0a 6e 2b", None, None, id="apple-nearby-not-a-beacon"),
    pytest.param(APPLE, "12 19 10 ab", None, None, id="apple-findmy-not-a-beacon"),
    pytest.param(0x0006, "03 00 80 e3", None, None, id="microsoft-swift-pair"),
    pytest.param(0x0059, "", None, None, id="empty-nordic"),
]


@pytest.mark.parametrize(("company", "payload", "expected", "key"), MANUFACTURER_CASES)
def test_manufacturer_frames(company, payload, expected, key):
    beacon = parse_manufacturer(company, _h(payload))
    assert beacon == expected
    if beacon is not None:
        assert tag_key(beacon) == key


SERVICE_CASES = [
    pytest.param(
        EDDY,
        "00 e7 4b414b4f474157413031 000000000007 0000",
        EddystoneUid(_h("4b414b4f474157413031"), _h("000000000007"), -25),
        id="eddystone-uid",
    ),
    pytest.param(
        EDDY,
        "00 f6 edd1ebeac04e5defa017 0badcafe0001",
        EddystoneUid(_h("edd1ebeac04e5defa017"), _h("0badcafe0001"), -10),
        id="eddystone-uid-without-rfu",
    ),
    pytest.param(EDDY, "20 00 0bb8 1780 00000064 000004d2", EddystoneTlm(3000, 23.5, 100, 1234), id="tlm"),
    pytest.param(EDDY, "20 00 0000 8000 00000001 00000000", EddystoneTlm(None, None, 1, 0), id="tlm-unsupported"),
    pytest.param(EDDY, "20 00 0c1c fd80 ffffffff 0000000a", EddystoneTlm(3100, -2.5, 2**32 - 1, 10), id="tlm-neg"),
    pytest.param(EDDY, "10 eb 03 676f6f676c6507", EddystoneIgnored("url"), id="url"),
    pytest.param(EDDY, "30 eb 0102030405060708", EddystoneIgnored("eid"), id="eid"),
    pytest.param(EDDY, "20 01" + "00" * 16, EddystoneIgnored("etlm"), id="etlm"),
    pytest.param(BTH, "40", BTHome(False, False, ()), id="bthome-empty"),
    pytest.param("0000fe9f-0000-1000-8000-00805f9b34fb", "00" * 20, None, id="google-fast-pair"),
    pytest.param("0000181a-0000-1000-8000-00805f9b34fb", "a4c138", None, id="env-sensing"),
]


@pytest.mark.parametrize(("uuid", "payload", "expected"), SERVICE_CASES)
def test_service_frames(uuid, payload, expected):
    assert parse_service(uuid, _h(payload)) == expected


def test_tlm_uptime_and_keys():
    tlm = parse_service(EDDY, _h("20 00 0bb8 1780 00000064 000004d2"))
    assert isinstance(tlm, EddystoneTlm)
    assert tlm.uptime_s == pytest.approx(123.4)
    assert tag_key(tlm) is None
    uid = parse_service(EDDY, _h("00 e7 4b414b4f474157413031 000000000007 0000"))
    assert uid is not None
    assert tag_key(uid) == "eddystone:4b414b4f474157413031:000000000007"


# (payload hex, [(name, value, unit), ...])
BTHOME_CASES = [
    pytest.param("40 02 c4 09", [("temperature", 25.0, "Cel")], id="temperature"),
    pytest.param(
        "40 00 01 01 61 02 ca 09 03 bf 13",
        [("packet_id", 1, None), ("battery", 97, "%EL"), ("temperature", 25.06, "Cel"), ("humidity", 50.55, "%RH")],
        id="packet-battery-temp-humidity",
    ),
    pytest.param("40 02 18 fc", [("temperature", -10.0, "Cel")], id="temperature-negative"),
    pytest.param("40 04 13 8a 01", [("pressure", 100883, "Pa")], id="pressure-1008.83hPa"),
    pytest.param("40 05 13 8a 14", [("illuminance", 13460.67, "lx")], id="illuminance"),
    pytest.param("40 0c 02 0c", [("voltage", 3.074, "V")], id="voltage"),
    pytest.param("40 10 01 11 00", [("power_on", True, None), ("opening", False, None)], id="binaries"),
    pytest.param("40 3a 01", [("button", "press", None)], id="button-press"),
    pytest.param("40 3a 04 3a 00", [("button", "long_press", None), ("button", "none", None)], id="buttons"),
    pytest.param("40 3a 07", [("button", "event_0x07", None)], id="button-unknown-code"),
    pytest.param("40 3c 01 03", [("dimmer", "rotate_left:3", None)], id="dimmer"),
    pytest.param("40 3f 02 0c", [("rotation", 307.4, "deg")], id="rotation"),
    pytest.param("40 3f fe ff", [("rotation", -0.2, "deg")], id="rotation-negative"),
    pytest.param("40 40 0c 00", [("distance", 0.012, "m")], id="distance-mm"),
    pytest.param("40 41 4e 00", [("distance", 7.8, "m")], id="distance-m"),
    pytest.param("40 09 60", [("count", 96, "count")], id="count-8"),
    pytest.param("40 3d 09 60", [("count", 24585, "count")], id="count-16"),
    pytest.param("40 2e 2a", [("humidity", 42, "%RH")], id="humidity-1pct"),
    pytest.param("40 53 05 68 65 6c 6c 6f", [("text", "hello", None)], id="text"),
    pytest.param("40 54 02 ab cd", [("raw", b"\xab\xcd", None)], id="raw"),
    pytest.param(
        "40 f0 01 00 f2 00 01 02", [("device_type", 1, None), ("firmware_version", 0x020100, None)], id="info"
    ),
]


@pytest.mark.parametrize(("payload", "expected"), BTHOME_CASES)
def test_bthome_objects(payload, expected):
    frame = parse_bthome(_h(payload))
    assert not frame.encrypted
    assert [(o.name, o.value, o.unit) for o in frame.objects] == expected


def test_bthome_flags_and_packet_id():
    frame = parse_bthome(_h("44 00 2a 3a 01"))
    assert frame.trigger_based
    assert frame.packet_id == 42
    encrypted = parse_bthome(_h("41 a472 66c9 5d180000 8d3ad3d1"))
    assert encrypted == BTHome(True, False, ())
    assert tag_key(encrypted, "KK-0001") == "bthome:name:KK-0001"
    assert tag_key(encrypted) is None


MALFORMED_CASES = [pytest.param(fields, id=name) for name, fields in MALFORMED] + [
    pytest.param(
        fields_of(IBeacon("fda50693-a4e2-4fb1-afcf-c6eb07647825", 1, 2, -59)).manufacturer_data | {APPLE: _h("02")},
        id="ibeacon-type-only",
    ),
]


@pytest.mark.parametrize("fields", MALFORMED_CASES)
def test_malformed_frames_raise_format_error(fields):
    manufacturer = fields if isinstance(fields, dict) else fields.manufacturer_data
    service = {} if isinstance(fields, dict) else fields.service_data
    with pytest.raises(BeaconFormatError):
        decode_advertisement(manufacturer, service)


@pytest.mark.parametrize(
    ("uuid", "payload", "match"),
    [
        (EDDY, "20", "truncated"),
        (EDDY, "10 eb 09 6162", "scheme"),
        (EDDY, "30 eb 0102", "EID"),
        (EDDY, "20 01 0000", "eTLM"),
        (EDDY, "20 00 0bb8 1780 00000064 0004d2", "TLM frame of 13"),
        (BTH, "", "empty"),
        (BTH, "60 02 c4 09", "version 3"),
        (BTH, "41 0102", "encrypted"),
        (BTH, "40 53", "truncated"),
        (BTH, "40 53 05 6865", "truncated"),
        (BTH, "40 53 02 c3 28", "UTF-8"),
        (BTH, "40 01 64 ee 01", "unknown BTHome object id 0xee"),
    ],
)
def test_malformed_service_frames(uuid, payload, match):
    with pytest.raises(BeaconFormatError, match=match):
        parse_service(uuid, _h(payload))


@pytest.mark.parametrize("fields", NOISE)
def test_noise_is_no_beacon(fields):
    assert decode_advertisement(fields.manufacturer_data, fields.service_data) == []


def test_merged_advertisement_yields_every_frame():
    ibeacon = IBeacon("fda50693-a4e2-4fb1-afcf-c6eb07647825", 7, 8, -60)
    uid = EddystoneUid(bytes(10), bytes(6), -20)
    merged = decode_advertisement(fields_of(ibeacon).manufacturer_data, fields_of(uid).service_data)
    assert merged == [ibeacon, uid]


# ----------------------------------------------------------------------------------------------------------- keys
@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("ibeacon:FDA50693-A4E2-4FB1-AFCF-C6EB07647825:001:2", "ibeacon:fda50693-a4e2-4fb1-afcf-c6eb07647825:1:2"),
        ("eddystone:4B414B4F474157413031:00000000000A", "eddystone:4b414b4f474157413031:00000000000a"),
        ("altbeacon:" + "AB" * 20, "altbeacon:" + "ab" * 20),
        ("bthome:name:KK-0001", "bthome:name:KK-0001"),
        ("bthome:addr:c4:7c:8d:6a:3e:01", "bthome:addr:C4:7C:8D:6A:3E:01"),
    ],
)
def test_tag_keys_normalise(text, canonical):
    assert normalize_tag_key(text) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "ibeacon:fda50693a4e24fb1afcfc6eb07647825:1:2",
        "ibeacon:fda50693-a4e2-4fb1-afcf-c6eb07647825:65536:2",
        "ibeacon:fda50693-a4e2-4fb1-afcf-c6eb07647825:1",
        "eddystone:4b414b4f4741574130:000000000007",
        "altbeacon:zz" + "00" * 19,
        "bthome:name:",
        "bthome:name:" + "x" * 30,
        "bthome:addr:c4:7c:8d:6a:3e",
        "bthome:mac:c4:7c:8d:6a:3e:01",
        "aa:bb:cc:dd:ee:ff",
        "",
    ],
)
def test_bad_tag_keys_are_refused(text):
    with pytest.raises(TagKeyError, match="invalid tag key"):
        normalize_tag_key(text)


# -------------------------------------------------------------------------------------------------------- fuzzing
def _prefixed(*prefixes: str) -> st.SearchStrategy[bytes]:
    heads = st.sampled_from([_h(p) for p in prefixes])
    return st.one_of(st.binary(max_size=40), st.tuples(heads, st.binary(max_size=30)).map(lambda t: t[0] + t[1]))


_company = st.one_of(st.just(APPLE), st.integers(0, 0xFFFF))
_manufacturer = st.dictionaries(_company, _prefixed("0215", "02", "beac", "10"), max_size=3)
_service = st.dictionaries(
    st.sampled_from([EDDY, BTH, "0000fe9f-0000-1000-8000-00805f9b34fb"]),
    _prefixed("00", "10", "20", "2000", "2001", "30", "40", "41", "44", "4000", "4053", "4054", "403c"),
    max_size=3,
)


@given(_manufacturer, _service)
def test_arbitrary_bytes_give_none_a_result_or_format_error(manufacturer, service):
    for company, payload in manufacturer.items():
        with contextlib.suppress(BeaconFormatError):
            parse_manufacturer(company, payload)
    for uuid, payload in service.items():
        with contextlib.suppress(BeaconFormatError):
            parse_service(uuid, payload)


# ---------------------------------------------------------------------------------------------------- round trips
_int8 = st.integers(-128, 127)
_ibeacons = st.builds(IBeacon, st.uuids().map(str), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), _int8)
_altbeacons = st.builds(
    AltBeacon, st.integers(0, 0xFFFF), st.binary(min_size=20, max_size=20), _int8, st.integers(0, 255)
)
_uids = st.builds(EddystoneUid, st.binary(min_size=10, max_size=10), st.binary(min_size=6, max_size=6), _int8)
_tlms = st.builds(
    EddystoneTlm,
    st.one_of(st.none(), st.integers(1, 0xFFFF)),
    st.one_of(st.none(), st.integers(-0x7FFF, 0x7FFF).map(lambda raw: raw / 256)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
_ignored = st.sampled_from([EddystoneIgnored("url"), EddystoneIgnored("eid"), EddystoneIgnored("etlm")])


@given(st.one_of(_ibeacons, _altbeacons, _uids, _tlms, _ignored))
def test_fixed_formats_round_trip(beacon):
    fields = fields_of(beacon)
    assert decode_advertisement(fields.manufacturer_data, fields.service_data) == [beacon]


def _object_bytes(spec: formats.BTHomeObjectSpec) -> st.SearchStrategy[bytes]:
    if spec.size == 0:
        if spec.kind == "text":
            return (
                st.text(max_size=40)
                .map(lambda s: s.encode())
                .filter(lambda b: len(b) < 256)
                .map(lambda b: bytes((len(b),)) + b)
            )
        return st.binary(max_size=40).map(lambda b: bytes((len(b),)) + b)
    return st.binary(min_size=spec.size, max_size=spec.size)


_object_pairs = st.sampled_from(sorted(formats.BTHOME_OBJECTS)).flatmap(
    lambda oid: _object_bytes(formats.BTHOME_OBJECTS[oid]).map(lambda raw: bytes((oid,)) + raw)
)


@given(st.lists(_object_pairs, max_size=8), st.booleans())
def test_bthome_round_trips_byte_for_byte(objects, trigger):
    payload = bytes((0x44 if trigger else 0x40,)) + b"".join(objects)
    frame = parse_bthome(payload)
    assert bthome_payload([(o.object_id, o.value) for o in frame.objects], trigger_based=trigger) == _canonical(payload)
    again = fields_of(frame)
    assert parse_service(BTH, again.service_data[BTH]) == frame


def _canonical(payload: bytes) -> bytes:
    """``payload`` walked with the table, independently of the codec: binary values other than 0 become 0x01."""
    out = bytearray(payload[:1])
    i = 1
    while i < len(payload):
        spec = formats.BTHOME_OBJECTS[payload[i]]
        size = spec.size or payload[i + 1] + 1
        raw = payload[i + 1 : i + 1 + size]
        if spec.kind == "binary":
            raw = b"\x01" if raw[0] else b"\x00"
        out += payload[i : i + 1] + raw
        i += 1 + size
    return bytes(out)


def test_format_table_is_consistent():
    assert formats.BTHOME_OBJECTS[0x02].factor == 0.01
    assert formats.BTHOME_OBJECTS[0x02].signed
    assert all(spec.kind != "number" or spec.size > 0 for spec in formats.BTHOME_OBJECTS.values())
    assert {p.format for p in formats.PASSIVE_PATTERNS} == {"ibeacon", "altbeacon", "eddystone", "bthome"}
