"""Tests of the wire contract (kakehashi.wire): topics, every payload codec, limits, malformed-input policy.

Table-driven tests pin the exact shapes (hand-written SenML packs in the style of RFC 8428, each rejection
reason); property tests check round trips, deterministic encoding, and that decoders raise nothing but
WireError for arbitrary bytes, arbitrary JSON and mutated valid messages.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kakehashi.errors import KakehashiError
from kakehashi.identity import ID_PATTERN
from kakehashi.wire import (
    CONTENT_TYPES,
    MAX_ACKS,
    MAX_DOC_BYTES,
    MAX_EPOCH,
    MAX_EVENTS,
    MAX_PAYLOAD_BYTES,
    MAX_RECORDS,
    MAX_SEQ,
    MAX_STRING,
    MIN_EPOCH,
    WIRE_REASONS,
    AcksMessage,
    AckStatus,
    Channel,
    ClockQuality,
    CommandAck,
    CommandMessage,
    DesiredMessage,
    Event,
    EventsMessage,
    GapReport,
    Precondition,
    Reading,
    ReadingsMessage,
    ReportedMessage,
    StatusMessage,
    StatusReason,
    StatusState,
    WireError,
    decode_acks,
    decode_command,
    decode_crl,
    decode_desired,
    decode_downlink,
    decode_events,
    decode_readings,
    decode_reported,
    decode_status,
    decode_uplink,
    encode_acks,
    encode_command,
    encode_crl,
    encode_desired,
    encode_events,
    encode_readings,
    encode_reported,
    encode_status,
    gateway_subscriptions,
    parse_topic,
    topic_for,
    uplink_subscriptions,
)

T0 = 1_700_000_000.0  # 2023-11-14, a plausible absolute time
GW = "gw-kakogawa-0012"

DECODERS: dict[str, Callable[[bytes], object]] = {
    "readings": decode_readings,
    "events": decode_events,
    "reported": decode_reported,
    "acks": decode_acks,
    "status": decode_status,
    "desired": decode_desired,
    "command": decode_command,
    "crl": decode_crl,
}
JSON_DECODERS = {name: fn for name, fn in DECODERS.items() if name != "crl"}

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


def expect(reason: str, fn: Callable[..., object], *args: object) -> WireError:
    with pytest.raises(WireError) as info:
        fn(*args)
    assert info.value.reason == reason, info.value.message
    return info.value


# ------------------------------------------------------------------------------------------------------------
# Topics


@pytest.mark.parametrize(
    ("channel", "uplink", "downlink"),
    [
        (Channel.READINGS, True, False),
        (Channel.EVENTS, True, False),
        (Channel.REPORTED, True, False),
        (Channel.ACKS, True, False),
        (Channel.DESIRED, False, True),
        (Channel.COMMANDS, False, True),
        (Channel.CRL, False, True),
        (Channel.STATUS, False, False),
    ],
)
def test_channel_direction(channel: Channel, uplink: bool, downlink: bool) -> None:
    assert channel.is_uplink is uplink
    assert channel.is_downlink is downlink


@pytest.mark.parametrize(
    ("channel", "topic"),
    [
        (Channel.READINGS, "kh/v1/gw-kakogawa-0012/up/readings"),
        (Channel.EVENTS, "kh/v1/gw-kakogawa-0012/up/events"),
        (Channel.REPORTED, "kh/v1/gw-kakogawa-0012/up/reported"),
        (Channel.ACKS, "kh/v1/gw-kakogawa-0012/up/acks"),
        (Channel.DESIRED, "kh/v1/gw-kakogawa-0012/down/desired"),
        (Channel.COMMANDS, "kh/v1/gw-kakogawa-0012/down/commands"),
        (Channel.CRL, "kh/v1/gw-kakogawa-0012/down/crl"),
        (Channel.STATUS, "kh/v1/gw-kakogawa-0012/status"),
    ],
)
def test_topic_for_and_parse_topic(channel: Channel, topic: str) -> None:
    assert topic_for(GW, channel) == topic
    assert parse_topic(topic) == (GW, channel)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("kh/v2/gw-1/up/readings", "unknown_version"),
        ("kh/v10/gw-1/up/readings", "unknown_version"),
        ("kh/v2", "unknown_version"),
        ("kh/v1", "bad_topic"),
        ("kh/v0/gw-1/up/readings", "bad_topic"),
        ("kh/v01/gw-1/up/readings", "bad_topic"),
        ("kh/V1/gw-1/up/readings", "bad_topic"),
        ("kh/x/gw-1/up/readings", "bad_topic"),
        ("kx/v1/gw-1/up/readings", "bad_topic"),
        ("/kh/v1/gw-1/up/readings", "bad_topic"),
        ("$share/g/kh/v1/gw-1/up/readings", "bad_topic"),
        ("kh/v1/gw-1", "bad_topic"),
        ("kh/v1/gw-1/", "bad_topic"),
        ("kh/v1//up/readings", "bad_topic"),
        ("kh/v1/GW-1/up/readings", "bad_topic"),
        ("kh/v1/gw_1/up/readings", "bad_topic"),
        ("kh/v1/-gw/up/readings", "bad_topic"),
        ("kh/v1/+/up/readings", "bad_topic"),
        ("kh/v1/gw-1/up/#", "bad_topic"),
        ("kh/v1/gw-1/up/readings/extra", "bad_topic"),
        ("kh/v1/gw-1/up/readings/", "bad_topic"),
        ("kh/v1/gw-1/up", "bad_topic"),
        ("kh/v1/gw-1/down/telemetry", "bad_topic"),
        ("kh/v1/gw-1/status/x", "bad_topic"),
        ("kh/v1/gw-1/Status", "bad_topic"),
        ("", "bad_topic"),
        ("kh/v1/" + "a" * 300 + "/status", "bad_topic"),
    ],
)
def test_parse_topic_rejects(topic: str, reason: str) -> None:
    expect(reason, parse_topic, topic)


@pytest.mark.parametrize("gateway_id", ["", "GW-1", "gw/1", "gw+", "#", "gw-", "a" * 64])
def test_topic_for_rejects_bad_gateway_id(gateway_id: str) -> None:
    expect("bad_topic", topic_for, gateway_id, Channel.READINGS)
    expect("bad_topic", gateway_subscriptions, gateway_id)


def test_topic_for_rejects_a_non_channel() -> None:
    expect("bad_topic", topic_for, GW, "up/readings")


@pytest.mark.parametrize(
    ("group", "filters"),
    [
        (None, ["kh/v1/+/up/#", "kh/v1/+/status"]),
        ("ingest", ["$share/ingest/kh/v1/+/up/#", "$share/ingest/kh/v1/+/status"]),
        ("agents-2", ["$share/agents-2/kh/v1/+/up/#", "$share/agents-2/kh/v1/+/status"]),
    ],
)
def test_uplink_subscriptions(group: str | None, filters: list[str]) -> None:
    assert uplink_subscriptions(group) == filters


@pytest.mark.parametrize("group", ["", "In/gest", "a+b", "#", "x" * 64, "-a"])
def test_uplink_subscriptions_rejects_bad_group(group: str) -> None:
    expect("bad_topic", uplink_subscriptions, group)


def test_gateway_subscriptions() -> None:
    assert gateway_subscriptions(GW) == ["kh/v1/gw-kakogawa-0012/down/#"]


def test_content_types_cover_every_channel() -> None:
    assert set(CONTENT_TYPES) == set(Channel)
    assert CONTENT_TYPES[Channel.READINGS] == "application/vnd.kakehashi.readings+json; v=1"
    assert CONTENT_TYPES[Channel.CRL] == "application/pkix-crl"


def test_wire_error_is_a_kakehashi_error_and_pickles_with_its_reason() -> None:
    error = WireError("senml[3].v must be a number", reason="bad_value")
    assert isinstance(error, KakehashiError)
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.reason, copy.message) == (WireError, "bad_value", error.message)


# ------------------------------------------------------------------------------------------------------------
# Readings: hand-written SenML packs


def readings_payload(senml: object, **envelope: object) -> bytes:
    doc: dict[str, object] = {"v": 1, "seq": 7, "ts": T0 + 60, "cq": "synced", "senml": senml}
    doc.update(envelope)
    return dumps(doc)


def r(device: str, quantity: str, value: Any, unit: str | None, at: float, clock: str = "synced") -> Reading:
    return Reading(device, quantity, value, unit, at, ClockQuality(clock))


GOOD_PACKS: list[tuple[str, list[dict[str, Any]], list[Reading]]] = [
    (
        "rfc-style base name, base time, base unit",
        [
            {"bn": "wl-0007:", "bt": T0, "bu": "m", "n": "level", "v": 1.25},
            {"n": "level", "v": 1.5, "t": 60},
            {"n": "temp", "u": "Cel", "v": 23.1, "t": 60},
        ],
        [
            r("wl-0007", "level", 1.25, "m", T0),
            r("wl-0007", "level", 1.5, "m", T0 + 60),
            r("wl-0007", "temp", 23.1, "Cel", T0 + 60),
        ],
    ),
    (
        "full names without bn, absolute t",
        [
            {"n": "wl-0007:level", "v": 2, "t": T0},
            {"n": "pm-0001:energy.total", "u": "kWh", "v": 10.5, "t": T0 + 1.5},
        ],
        [r("wl-0007", "level", 2.0, None, T0), r("pm-0001", "energy.total", 10.5, "kWh", T0 + 1.5)],
    ),
    (
        "base name carries part of the quantity (plain concatenation)",
        [{"bn": "wl-0007:lev", "bt": T0, "n": "el", "v": 0}],
        [r("wl-0007", "level", 0.0, None, T0)],
    ),
    (
        "name entirely in bn",
        [{"bn": "wl-0007:level", "bt": T0, "v": 3}],
        [r("wl-0007", "level", 3.0, None, T0)],
    ),
    (
        "string, boolean and base64url data values",
        [
            {"bn": "tag-01:", "bt": T0, "n": "state", "vs": "open"},
            {"n": "alarm", "vb": True},
            {"n": "raw", "vd": "-_8"},
            {"n": "empty", "vd": ""},
            {"n": "label", "vs": ""},
        ],
        [
            r("tag-01", "state", "open", None, T0),
            r("tag-01", "alarm", True, None, T0),
            r("tag-01", "raw", b"\xfb\xff", None, T0),
            r("tag-01", "empty", b"", None, T0),
            r("tag-01", "label", "", None, T0),
        ],
    ),
    (
        "bt changes mid-pack, device changes, negative t, millisecond rounding",
        [
            {"bn": "a:", "bt": T0, "n": "x", "v": 1},
            {"bn": "b:", "bt": T0 + 100, "n": "x", "v": 2, "t": -0.5},
            {"n": "x", "v": 3, "t": 0.0004},
            {"n": "x", "v": 4, "t": 0.0006},
        ],
        [
            r("a", "x", 1.0, None, T0),
            r("b", "x", 2.0, None, T0 + 99.5),
            r("b", "x", 3.0, None, T0 + 100),
            r("b", "x", 4.0, None, T0 + 100.001),
        ],
    ),
    (
        "base value is added to v",
        [{"bn": "m-1:", "bt": T0, "bv": 100, "n": "flow", "v": 0.5}, {"n": "flow", "v": -1}],
        [r("m-1", "flow", 100.5, None, T0), r("m-1", "flow", 99.0, None, T0)],
    ),
    (
        "cq label overrides the message default on one record",
        [{"bn": "n-1:", "bt": T0, "n": "t", "v": 1, "cq": "estimated"}, {"n": "t", "v": 2}],
        [r("n-1", "t", 1.0, None, T0, "estimated"), r("n-1", "t", 2.0, None, T0)],
    ),
    (
        "bver, ut, sums and other unknown fields are ignored",
        [
            {
                "bver": 10,
                "bn": "n-1:",
                "bt": T0,
                "n": "t",
                "v": 1,
                "ut": 60,
                "s": 5,
                "x-vendor": [1],
                "note": "hi",
            }
        ],
        [r("n-1", "t", 1.0, None, T0)],
    ),
    ("empty pack", [], []),
]


@pytest.mark.parametrize(("pack", "expected"), [case[1:] for case in GOOD_PACKS], ids=[c[0] for c in GOOD_PACKS])
def test_decode_readings_examples(pack: list[dict[str, Any]], expected: list[Reading]) -> None:
    msg = decode_readings(readings_payload(pack))
    assert msg == ReadingsMessage(7, T0 + 60, tuple(expected))
    for got, want in zip(msg.readings, expected, strict=True):
        assert type(got.value) is type(want.value)


BAD_RECORDS: list[tuple[str, object, str, str]] = [
    # (case, senml, reason, text expected in the message)
    ("record not an object", [1], "bad_field", "senml[0]"),
    ("relative t, no bt", [{"n": "a:x", "v": 1, "t": 10}], "relative_time", "senml[0].t"),
    ("no time at all", [{"n": "a:x", "v": 1}], "relative_time", "relative"),
    ("negative relative time", [{"n": "a:x", "v": 1, "t": -5}], "relative_time", "relative"),
    ("bt just below 2**28", [{"n": "a:x", "v": 1, "bt": MIN_EPOCH - 1}], "relative_time", "relative"),
    ("time at 2**33", [{"n": "a:x", "v": 1, "bt": MAX_EPOCH}], "bad_field", "2**33"),
    ("time rounding up to 2**33", [{"n": "a:x", "v": 1, "bt": MAX_EPOCH - 0.0001}], "bad_field", "2**33"),
    ("bt a string", [{"n": "a:x", "v": 1, "bt": "1700000000"}], "bad_field", "senml[0].bt"),
    ("bt a boolean", [{"n": "a:x", "v": 1, "bt": True}], "bad_field", "senml[0].bt"),
    ("t null", [{"n": "a:x", "v": 1, "bt": T0, "t": None}], "bad_field", "senml[0].t"),
    ("v true", [{"n": "a:x", "v": True, "bt": T0}], "bad_value", "senml[0].v"),
    ("v false", [{"n": "a:x", "v": False, "bt": T0}], "bad_value", "vb for booleans"),
    ("v a string", [{"n": "a:x", "v": "1.5", "bt": T0}], "bad_value", "senml[0].v"),
    ("v null", [{"n": "a:x", "v": None, "bt": T0}], "bad_value", "senml[0].v"),
    ("vb a number", [{"n": "a:x", "vb": 1, "bt": T0}], "bad_value", "senml[0].vb"),
    ("vs a number", [{"n": "a:x", "vs": 1, "bt": T0}], "bad_value", "senml[0].vs"),
    ("vs too long", [{"n": "a:x", "vs": "x" * (MAX_STRING + 1), "bt": T0}], "bad_value", "1024"),
    ("vd with padding", [{"n": "a:x", "vd": "AA==", "bt": T0}], "bad_value", "senml[0].vd"),
    ("vd standard alphabet", [{"n": "a:x", "vd": "+/8", "bt": T0}], "bad_value", "senml[0].vd"),
    ("vd impossible length", [{"n": "a:x", "vd": "A", "bt": T0}], "bad_value", "senml[0].vd"),
    ("vd not a string", [{"n": "a:x", "vd": [1], "bt": T0}], "bad_value", "senml[0].vd"),
    ("no value field", [{"n": "a:x", "bt": T0}], "bad_value", "no value"),
    ("sum only", [{"n": "a:x", "s": 4, "bt": T0}], "bad_value", "no value"),
    ("two value fields", [{"n": "a:x", "v": 1, "vs": "1", "bt": T0}], "bad_value", "several"),
    ("two non-numeric values", [{"n": "a:x", "vb": True, "vs": "1", "bt": T0}], "bad_value", "several"),
    ("bv a boolean", [{"n": "a:x", "v": 1, "bv": True, "bt": T0}], "bad_value", "senml[0].bv"),
    ("bv overflows", [{"n": "a:x", "v": 1.5e308, "bv": 1.5e308, "bt": T0}], "bad_value", "finite"),
    ("name without colon", [{"n": "wl-0007", "v": 1, "bt": T0}], "bad_name", "wl-0007"),
    ("empty quantity", [{"bn": "wl-0007:", "v": 1, "bt": T0}], "bad_name", "senml[0]"),
    ("uppercase device", [{"n": "WL-1:x", "v": 1, "bt": T0}], "bad_name", "senml[0]"),
    ("colon in quantity", [{"n": "a:x:y", "v": 1, "bt": T0}], "bad_name", "senml[0]"),
    ("urn-style name", [{"n": "urn:dev:ow:10e2073a01080063", "v": 1, "bt": T0}], "bad_name", "senml[0]"),
    ("quantity too long", [{"n": "a:" + "q" * 65, "v": 1, "bt": T0}], "bad_name", "senml[0]"),
    ("huge name", [{"n": "a:" + "q" * 100_000, "v": 1, "bt": T0}], "bad_name", "senml[0]"),
    ("n a number", [{"n": 5, "v": 1, "bt": T0}], "bad_name", "senml[0].n"),
    ("bn null", [{"bn": None, "n": "a:x", "v": 1, "bt": T0}], "bad_name", "senml[0].bn"),
    ("bad name on 2nd record", [{"n": "a:x", "v": 1, "bt": T0}, {"n": "x", "v": 1}], "bad_name", "senml[1]"),
    ("must-understand field", [{"n": "a:x", "v": 1, "bt": T0, "crit_": 1}], "must_understand", "crit_"),
    ("u empty", [{"n": "a:x", "v": 1, "bt": T0, "u": ""}], "bad_field", "senml[0].u"),
    ("u a number", [{"n": "a:x", "v": 1, "bt": T0, "u": 3}], "bad_field", "senml[0].u"),
    ("bu null", [{"n": "a:x", "v": 1, "bt": T0, "bu": None}], "bad_field", "senml[0].bu"),
    ("cq unknown", [{"n": "a:x", "v": 1, "bt": T0, "cq": "gps"}], "bad_field", "senml[0].cq"),
    ("cq a list", [{"n": "a:x", "v": 1, "bt": T0, "cq": ["synced"]}], "bad_field", "senml[0].cq"),
    ("senml an object", {"n": "a:x"}, "bad_field", "senml"),
    ("too many records", [{}] * (MAX_RECORDS + 1), "too_many_records", "10000"),
]


@pytest.mark.parametrize(
    ("senml", "reason", "text"), [case[1:] for case in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS]
)
def test_decode_readings_rejects_records(senml: object, reason: str, text: str) -> None:
    error = expect(reason, decode_readings, readings_payload(senml))
    assert text in error.message


GOOD_PACK = [{"bn": "a:", "bt": T0, "n": "x", "v": 1}]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "malformed_json"),
        (b"{", "malformed_json"),
        (
            b'{"v":1,"seq":1,"ts":1.7e9,"cq":"synced","senml":[{"n":"a:x","v":NaN,"bt":1.7e9}]}',
            "malformed_json",
        ),
        (
            b'{"v":1,"seq":1,"ts":1.7e9,"cq":"synced","senml":[{"n":"a:x","v":1e999,"bt":1.7e9}]}',
            "malformed_json",
        ),
        (b'{"v":1,"x":"\xff"}', "malformed_json"),
        (b"[]", "not_object"),
        (b"null", "not_object"),
        (b'"v"', "not_object"),
        (b" " * (MAX_PAYLOAD_BYTES + 1), "oversize"),
        (dumps({"seq": 1, "ts": T0, "cq": "synced", "senml": []}), "missing_field"),
        (readings_payload(GOOD_PACK, v=2), "unknown_version"),
        (readings_payload(GOOD_PACK, v=0), "unknown_version"),
        (readings_payload(GOOD_PACK, v="1"), "bad_field"),
        (readings_payload(GOOD_PACK, v=True), "bad_field"),
        (readings_payload(GOOD_PACK, v=1.0), "bad_field"),
        (readings_payload(GOOD_PACK, seq=0), "bad_field"),
        (readings_payload(GOOD_PACK, seq=MAX_SEQ + 1), "bad_field"),
        (readings_payload(GOOD_PACK, seq=True), "bad_field"),
        (readings_payload(GOOD_PACK, seq="1"), "bad_field"),
        (readings_payload(GOOD_PACK, ts=12.5), "relative_time"),
        (readings_payload(GOOD_PACK, ts="now"), "bad_field"),
        (readings_payload(GOOD_PACK, cq="atomic"), "bad_field"),
        (readings_payload(GOOD_PACK, cq=None), "bad_field"),
        (readings_payload(GOOD_PACK, ext_=True), "must_understand"),
        (dumps({"v": 1, "seq": 1, "ts": T0, "senml": []}), "missing_field"),
        (dumps({"v": 1, "seq": 1, "cq": "synced", "senml": []}), "missing_field"),
        (dumps({"v": 1, "ts": T0, "cq": "synced", "senml": []}), "missing_field"),
        (dumps({"v": 1, "seq": 1, "ts": T0, "cq": "synced"}), "missing_field"),
    ],
)
def test_decode_readings_rejects_envelopes(payload: bytes, reason: str) -> None:
    expect(reason, decode_readings, payload)


def test_unknown_envelope_fields_are_ignored() -> None:
    msg = decode_readings(readings_payload(GOOD_PACK, gateway_note="hello", seq=9))
    assert msg.seq == 9
    assert msg.readings == (r("a", "x", 1.0, None, T0),)


def test_v2_is_refused_before_anything_else_is_judged() -> None:
    expect("unknown_version", decode_readings, dumps({"v": 2, "whatever": [1, 2, 3]}))


def test_encode_readings_shape() -> None:
    msg = ReadingsMessage(
        seq=12,
        sent_at=T0 + 5,
        readings=(
            r("wl-0007", "level", 1.25, "m", T0 + 0.0004),
            r("wl-0007", "level", 1.5, "m", T0 + 1.2341),
            r("wl-0007", "temp", 21, "Cel", T0 + 1.2341, "unsynced"),
            r("wl-0008", "open", True, None, T0 - 2),
            r("wl-0008", "raw", b"\xfb\xff", None, T0),
            r("wl-0007", "state", "ok", None, T0),
        ),
    )
    assert orjson.loads(encode_readings(msg)) == {
        "v": 1,
        "seq": 12,
        "ts": T0 + 5,
        "cq": "synced",
        "senml": [
            {"bn": "wl-0007:", "bt": T0, "n": "level", "u": "m", "v": 1.25},
            {"n": "level", "u": "m", "v": 1.5, "t": 1.234},
            {"n": "temp", "u": "Cel", "v": 21.0, "t": 1.234, "cq": "unsynced"},
            {"bn": "wl-0008:", "n": "open", "vb": True, "t": -2.0},
            {"n": "raw", "vd": "-_8"},
            {"bn": "wl-0007:", "n": "state", "vs": "ok"},
        ],
    }


def test_encode_readings_picks_the_most_common_clock_as_default() -> None:
    readings = (
        r("a", "x", 1, None, T0, "unsynced"),
        r("a", "x", 2, None, T0),
        r("a", "x", 3, None, T0, "unsynced"),
    )
    doc = orjson.loads(encode_readings(ReadingsMessage(1, T0, readings)))
    assert doc["cq"] == "unsynced"
    assert [rec.get("cq") for rec in doc["senml"]] == [None, "synced", None]


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        (r("A", "x", 1.0, None, T0), "bad_name"),
        (r("a:b", "x", 1.0, None, T0), "bad_name"),
        (r("a", "x:y", 1.0, None, T0), "bad_name"),
        (r("a", "", 1.0, None, T0), "bad_name"),
        (r("a", "x", float("nan"), None, T0), "bad_value"),
        (r("a", "x", float("inf"), None, T0), "bad_value"),
        (r("a", "x", 10**400, None, T0), "bad_value"),
        (r("a", "x", [1], None, T0), "bad_value"),
        (r("a", "x", None, None, T0), "bad_value"),
        (r("a", "x", "s" * (MAX_STRING + 1), None, T0), "bad_value"),
        (r("a", "x", b"b" * 800, None, T0), "bad_value"),
        (r("a", "x", "\ud800", None, T0), "bad_value"),
        (r("a", "x", 1.0, "", T0), "bad_field"),
        (r("a", "x", 1.0, None, 12.0), "relative_time"),
        (r("a", "x", 1.0, None, float(MAX_EPOCH)), "bad_field"),
        (r("a", "x", 1.0, None, MAX_EPOCH - 0.0001), "bad_field"),
        (r("a", "x", 1.0, None, float("nan")), "bad_field"),
        (Reading("a", "x", 1.0, None, True, ClockQuality.SYNCED), "bad_field"),
        (Reading("a", "x", 1.0, None, T0, "gps"), "bad_field"),  # type: ignore[arg-type]
    ],
)
def test_encode_readings_refuses_what_the_decoder_would(reading: Reading, reason: str) -> None:
    # A second, valid reading first makes sure the bad one is not the default-clock source.
    msg = ReadingsMessage(1, T0, (r("ok", "x", 1.0, None, T0), r("ok", "x", 1.0, None, T0), reading))
    expect(reason, encode_readings, msg)


@pytest.mark.parametrize(
    ("seq", "sent_at", "reason"),
    [
        (0, T0, "bad_field"),
        (MAX_SEQ + 1, T0, "bad_field"),
        (True, T0, "bad_field"),
        (1, 5.0, "relative_time"),
    ],
)
def test_encode_readings_checks_the_envelope(seq: int, sent_at: float, reason: str) -> None:
    expect(reason, encode_readings, ReadingsMessage(seq, sent_at, ()))


def test_encode_readings_limits() -> None:
    many = tuple(r("a", "x", 1.0, None, T0) for _ in range(MAX_RECORDS + 1))
    expect("too_many_records", encode_readings, ReadingsMessage(1, T0, many))
    big = tuple(r(f"d-{i}", "x", "s" * 1000, None, T0 + i) for i in range(300))
    expect("oversize", encode_readings, ReadingsMessage(1, T0, big))


# ------------------------------------------------------------------------------------------------------------
# Events, reported, acks, status, desired, command, CRL: examples and rejections


def envelope(**body: object) -> dict[str, object]:
    doc: dict[str, object] = {"v": 1, "seq": 50, "ts": T0}
    doc.update(body)
    return doc


def test_events_example() -> None:
    doc = envelope(
        events=[
            {"kind": "gap", "from_seq": 10, "to_seq": 20, "count": 1234, "reason": "disk_budget"},
            {"kind": "alarm", "at": T0 - 1, "device": "wl-0007", "attrs": {"level": 3.2, "threshold": 3.0}},
            {"kind": "source_error", "at": T0, "device": None, "attrs": {}},
            {"kind": "restart", "at": T0},
        ]
    )
    msg = decode_events(dumps(doc))
    assert msg == EventsMessage(
        50,
        T0,
        (
            GapReport(10, 20, 1234, "disk_budget"),
            Event("alarm", T0 - 1, "wl-0007", {"level": 3.2, "threshold": 3.0}),
            Event("source_error", T0, None, {}),
            Event("restart", T0, None, {}),
        ),
    )
    assert orjson.loads(encode_events(msg))["events"][3] == {
        "kind": "restart",
        "at": T0,
        "device": None,
        "attrs": {},
    }


GAP = {"kind": "gap", "from_seq": 10, "to_seq": 20, "count": 5, "reason": "disk_budget"}
EVENT = {"kind": "alarm", "at": T0, "device": "wl-1", "attrs": {}}


@pytest.mark.parametrize(
    ("events", "reason", "text"),
    [
        ("not a list", "bad_field", "events"),
        ([1], "bad_field", "events[0]"),
        ([{**GAP, "to_seq": 9}], "bad_field", "events[0].to_seq"),
        ([{**GAP, "to_seq": 50}], "bad_field", "events[0].to_seq"),  # must precede the message's own seq
        ([{**GAP, "from_seq": 0}], "bad_field", "events[0].from_seq"),
        ([{**GAP, "count": -1}], "bad_field", "events[0].count"),
        ([{**GAP, "reason": "Disk Budget"}], "bad_field", "events[0].reason"),
        ([{k: v for k, v in GAP.items() if k != "count"}], "missing_field", "events[0].count"),
        ([EVENT, {k: v for k, v in EVENT.items() if k != "at"}], "missing_field", "events[1].at"),
        ([{**EVENT, "kind": "Alarm"}], "bad_field", "events[0].kind"),
        ([{**EVENT, "kind": None}], "bad_field", "events[0].kind"),
        ([{**EVENT, "device": "WL"}], "bad_field", "events[0].device"),
        ([{**EVENT, "attrs": []}], "bad_field", "events[0].attrs"),
        ([{**EVENT, "attrs": {"x": "y" * MAX_DOC_BYTES}}], "oversize", "events[0].attrs"),
        ([{**EVENT, "at": 0}], "relative_time", "events[0].at"),
        ([{**EVENT, "urgent_": True}], "must_understand", "urgent_"),
        ([{**GAP, "urgent_": True}], "must_understand", "urgent_"),
        ([EVENT] * (MAX_EVENTS + 1), "too_many_records", "1000"),
    ],
)
def test_events_rejections(events: object, reason: str, text: str) -> None:
    error = expect(reason, decode_events, dumps(envelope(events=events)))
    assert text in error.message


def test_encode_events_refuses_bad_events() -> None:
    expect("bad_field", encode_events, EventsMessage(5, T0, (GapReport(3, 5, 1, "disk_budget"),)))
    expect("bad_field", encode_events, EventsMessage(5, T0, (Event("gap", T0),)))
    expect("bad_field", encode_events, EventsMessage(5, T0, ("alarm",)))  # type: ignore[arg-type]
    expect("bad_field", encode_events, EventsMessage(5, T0, (Event("alarm", T0, attrs={1: 2}),)))  # type: ignore[dict-item]
    expect("too_many_records", encode_events, EventsMessage(5, T0, (Event("a", T0),) * (MAX_EVENTS + 1)))


def test_reported_example_and_rejections() -> None:
    doc = envelope(version=3, state={"firmware": "1.2.0", "modbus": {"poll_s": 10}})
    assert decode_reported(dumps(doc)) == ReportedMessage(50, T0, 3, {"firmware": "1.2.0", "modbus": {"poll_s": 10}})
    assert decode_reported(dumps(envelope(version=0, state={}))).version == 0
    expect("bad_field", decode_reported, dumps(envelope(version=-1, state={})))
    expect("bad_field", decode_reported, dumps(envelope(version=1, state=[])))
    expect("missing_field", decode_reported, dumps(envelope(version=1)))
    expect("oversize", decode_reported, dumps(envelope(version=1, state={"x": "y" * MAX_DOC_BYTES})))
    too_deep = b'{"v":1,"seq":1,"ts":1.7e9,"version":1,"state":' + b'{"d":' * 300 + b"1" + b"}" * 301
    expect("bad_field", decode_reported, too_deep)
    expect("oversize", encode_reported, ReportedMessage(1, T0, 1, {"x": "y" * MAX_DOC_BYTES}))


def nested(levels: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(levels - 1):
        doc = {"d": doc}
    return doc


@pytest.mark.parametrize(("levels", "ok"), [(251, True), (252, False)])
def test_document_nesting_limit_holds_inside_every_envelope(levels: int, ok: bool) -> None:
    doc = nested(levels)
    messages: list[tuple[Callable[[Any], bytes], Any]] = [
        (encode_events, EventsMessage(1, T0, (Event("alarm", T0, None, doc),))),
        (encode_acks, AcksMessage(1, T0, (CommandAck("c-1", AckStatus.SUCCEEDED, T0, None, doc),))),
        (encode_reported, ReportedMessage(1, T0, 1, doc)),
        (encode_status, StatusMessage(StatusState.ONLINE, StatusReason.HEARTBEAT, T0, doc)),
    ]
    for encode, msg in messages:
        if ok:
            encode(msg)
        else:
            expect("bad_field", encode, msg)


ACK = {"command": "c-0001", "status": "succeeded", "at": T0, "reason": None, "result": {"written": 1}}


def test_acks_example() -> None:
    doc = envelope(acks=[ACK, {"command": "c-0002", "status": "failed", "at": T0, "reason": "timeout"}])
    assert decode_acks(dumps(doc)) == AcksMessage(
        50,
        T0,
        (
            CommandAck("c-0001", AckStatus.SUCCEEDED, T0, None, {"written": 1}),
            CommandAck("c-0002", AckStatus.FAILED, T0, "timeout", None),
        ),
    )


@pytest.mark.parametrize(
    ("ack", "reason", "text"),
    [
        ({**ACK, "status": "cancelled"}, "bad_field", "acks[0].status"),
        ({**ACK, "command": "C-1"}, "bad_field", "acks[0].command"),
        ({**ACK, "command": "c" * 65}, "bad_field", "acks[0].command"),
        ({**ACK, "reason": ""}, "bad_field", "acks[0].reason"),
        ({**ACK, "reason": 5}, "bad_field", "acks[0].reason"),
        ({**ACK, "result": "ok"}, "bad_field", "acks[0].result"),
        ({**ACK, "at": -1}, "relative_time", "acks[0].at"),
        ({k: v for k, v in ACK.items() if k != "status"}, "missing_field", "acks[0].status"),
        ({**ACK, "sig_": "x"}, "must_understand", "sig_"),
        ("c-0001", "bad_field", "acks[0]"),
    ],
)
def test_acks_rejections(ack: object, reason: str, text: str) -> None:
    error = expect(reason, decode_acks, dumps(envelope(acks=[ack])))
    assert text in error.message


def test_acks_limit() -> None:
    expect("too_many_records", decode_acks, dumps(envelope(acks=[ACK] * (MAX_ACKS + 1))))
    ack = CommandAck("c-1", AckStatus.DELIVERED, T0)
    expect("too_many_records", encode_acks, AcksMessage(1, T0, (ack,) * (MAX_ACKS + 1)))


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"v": 1, "state": "online", "ts": T0, "reason": "connected", "health": {"cpu": 0.2}},
            StatusMessage(StatusState.ONLINE, StatusReason.CONNECTED, T0, {"cpu": 0.2}),
        ),
        (
            {"v": 1, "state": "offline", "ts": T0, "reason": "will", "health": None},
            StatusMessage(StatusState.OFFLINE, StatusReason.WILL, T0),
        ),
        (
            {"v": 1, "state": "offline", "ts": T0, "reason": "shutdown"},
            StatusMessage(StatusState.OFFLINE, StatusReason.SHUTDOWN, T0),
        ),
    ],
)
def test_status_examples(doc: dict[str, object], expected: StatusMessage) -> None:
    assert decode_status(dumps(doc)) == expected


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"v": 1, "state": "online", "ts": T0, "reason": "will"}, "bad_field"),
        ({"v": 1, "state": "offline", "ts": T0, "reason": "heartbeat"}, "bad_field"),
        ({"v": 1, "state": "up", "ts": T0, "reason": "connected"}, "bad_field"),
        ({"v": 1, "state": "online", "ts": T0, "reason": "hello"}, "bad_field"),
        ({"v": 1, "state": "online", "reason": "connected"}, "missing_field"),
        ({"v": 1, "state": "online", "ts": T0, "reason": "connected", "health": [1]}, "bad_field"),
        ({"v": 3, "state": "online"}, "unknown_version"),
    ],
)
def test_status_rejections(doc: dict[str, object], reason: str) -> None:
    expect(reason, decode_status, dumps(doc))


def test_encode_status_refuses_inconsistent_state() -> None:
    expect("bad_field", encode_status, StatusMessage(StatusState.ONLINE, StatusReason.WILL, T0))


def test_desired_example_and_rejections() -> None:
    doc = {"v": 1, "version": 4, "ts": T0, "delta": {"modbus": {"poll_s": 5}}}
    assert decode_desired(dumps(doc)) == DesiredMessage(4, T0, {"modbus": {"poll_s": 5}})
    expect("bad_field", decode_desired, dumps({**doc, "version": 0}))
    expect("bad_field", decode_desired, dumps({**doc, "delta": None}))
    expect("missing_field", decode_desired, dumps({"v": 1, "version": 4, "ts": T0}))
    expect("bad_field", encode_desired, DesiredMessage(0, T0, {}))


COMMAND = {
    "v": 1,
    "id": "01hzx3k9q8w2e7r5t6y4u3i2o1-valve",
    "device": "valve-0003",
    "name": "set_position",
    "params": {"percent": 40},
    "deadline": T0 + 30,
    "idempotency_key": "op-7f3a/2024-06-01T10:00",
    "precondition": {"reported_version": 12},
    "ts": T0,
}


def test_command_example() -> None:
    expected = CommandMessage(
        command_id="01hzx3k9q8w2e7r5t6y4u3i2o1-valve",
        device_id="valve-0003",
        name="set_position",
        params={"percent": 40},
        deadline=T0 + 30,
        idempotency_key="op-7f3a/2024-06-01T10:00",
        sent_at=T0,
        precondition=Precondition(12),
    )
    assert decode_command(dumps(COMMAND)) == expected
    assert orjson.loads(encode_command(expected)) == COMMAND
    no_precondition = decode_command(dumps({**COMMAND, "precondition": None}))
    assert no_precondition.precondition is None


@pytest.mark.parametrize(
    ("change", "reason", "text"),
    [
        ({"id": "x" * 65}, "bad_field", "id"),
        ({"id": "Cmd"}, "bad_field", "id"),
        ({"device": "Valve"}, "bad_field", "device"),
        ({"name": "SetPosition"}, "bad_field", "name"),
        ({"name": "set-position"}, "bad_field", "name"),
        ({"params": [40]}, "bad_field", "params"),
        ({"deadline": 30}, "relative_time", "deadline"),
        ({"idempotency_key": ""}, "bad_field", "idempotency_key"),
        ({"idempotency_key": "k" * 129}, "bad_field", "idempotency_key"),
        ({"precondition": {"reported_version": -1}}, "bad_field", "reported_version"),
        ({"precondition": {}}, "missing_field", "reported_version"),
        ({"precondition": 12}, "bad_field", "precondition"),
        ({"precondition": {"reported_version": 1, "hash_": "x"}}, "must_understand", "hash_"),
        ({"id": None}, "bad_field", "id"),
    ],
)
def test_command_rejections(change: dict[str, object], reason: str, text: str) -> None:
    error = expect(reason, decode_command, dumps({**COMMAND, **change}))
    assert text in error.message


@pytest.mark.parametrize("missing", ["id", "device", "name", "deadline", "idempotency_key", "ts", "v"])
def test_command_missing_fields(missing: str) -> None:
    expect("missing_field", decode_command, dumps({k: v for k, v in COMMAND.items() if k != missing}))


def der(content: bytes) -> bytes:
    if len(content) < 0x80:
        return b"\x30" + bytes([len(content)]) + content
    length = len(content).to_bytes((len(content).bit_length() + 7) // 8, "big")
    return b"\x30" + bytes([0x80 | len(length)]) + length + content


@pytest.mark.parametrize("size", [0, 5, 127, 128, 300, 70_000])
def test_crl_accepts_der_sequences(size: int) -> None:
    payload = der(b"\x02" * size)
    assert decode_crl(payload) == payload
    assert encode_crl(payload) == payload
    assert decode_downlink(Channel.CRL, payload) == payload


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "malformed_der"),
        (b"\x30", "malformed_der"),
        (b"-----BEGIN X509 CRL-----", "malformed_der"),
        (b"\x31\x00", "malformed_der"),
        (b"\x30\x05\x00", "malformed_der"),
        (b"\x30\x01\x00\x00", "malformed_der"),
        (b"\x30\x80\x00\x00", "malformed_der"),
        (b"\x30\x85" + b"\x00" * 10, "malformed_der"),
        (b"\x30\x82\x01", "malformed_der"),
        (der(b"\x00" * MAX_PAYLOAD_BYTES), "oversize"),
    ],
)
def test_crl_rejections(payload: bytes, reason: str) -> None:
    expect(reason, decode_crl, payload)


def test_dispatch_by_channel() -> None:
    readings = readings_payload(GOOD_PACK)
    assert isinstance(decode_uplink(Channel.READINGS, readings), ReadingsMessage)
    assert isinstance(decode_uplink(Channel.EVENTS, dumps(envelope(events=[]))), EventsMessage)
    assert isinstance(decode_uplink(Channel.REPORTED, dumps(envelope(version=0, state={}))), ReportedMessage)
    assert isinstance(decode_uplink(Channel.ACKS, dumps(envelope(acks=[]))), AcksMessage)
    assert isinstance(decode_downlink(Channel.COMMANDS, dumps(COMMAND)), CommandMessage)
    desired = dumps({"v": 1, "version": 1, "ts": T0, "delta": {}})
    assert isinstance(decode_downlink(Channel.DESIRED, desired), DesiredMessage)
    for channel in (Channel.STATUS, Channel.DESIRED, "up/readings"):
        expect("bad_topic", decode_uplink, channel, readings)
    for channel in (Channel.STATUS, Channel.READINGS):
        expect("bad_topic", decode_downlink, channel, readings)
    expect("malformed_json", decode_uplink, Channel.ACKS, b"\x00")


# ------------------------------------------------------------------------------------------------------------
# Property tests

ids = st.from_regex(ID_PATTERN, fullmatch=True)
quantities = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9./_-]{0,63}", fullmatch=True)
codes = st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True)
command_ids = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?", fullmatch=True)
utf8_text = st.text(st.characters(codec="utf-8"), max_size=40)
epochs_ms = st.integers(MIN_EPOCH * 1000, MAX_EPOCH * 1000 - 1)
epochs = st.floats(MIN_EPOCH, MAX_EPOCH, exclude_max=True, allow_nan=False)
seqs = st.integers(1, MAX_SEQ)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | finite | utf8_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(utf8_text, inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(utf8_text, json_values, max_size=5)
values = st.one_of(
    finite,
    st.text(st.characters(codec="utf-8"), max_size=MAX_STRING),
    st.booleans(),
    st.binary(max_size=200),
)
clocks = st.sampled_from(ClockQuality)


@st.composite
def readings_messages(draw: st.DrawFn, exact_ms: bool = True) -> ReadingsMessage:
    devices = draw(st.lists(ids, min_size=1, max_size=3))
    # Unquantised times stop 1 ms short of 2**33: the last half millisecond would round up to it.
    times = epochs_ms.map(lambda ms: ms / 1000) if exact_ms else st.floats(MIN_EPOCH, MAX_EPOCH - 0.001)
    reading = st.builds(
        Reading,
        device_id=st.sampled_from(devices),
        quantity=quantities,
        value=values,
        unit=st.none() | st.sampled_from(["Cel", "m", "m3/s", "%RH", "kWh", "lx"]),
        observed_at=times,
        clock=clocks,
    )
    return ReadingsMessage(draw(seqs), draw(epochs), tuple(draw(st.lists(reading, max_size=15))))


@st.composite
def events_messages(draw: st.DrawFn) -> EventsMessage:
    seq = draw(st.integers(2, MAX_SEQ))
    gap = st.integers(1, seq - 1).flatmap(
        lambda low: st.builds(GapReport, st.just(low), st.integers(low, seq - 1), st.integers(0, 10**9), codes)
    )
    event = st.builds(Event, codes.filter(lambda k: k != "gap"), epochs, st.none() | ids, json_objects)
    return EventsMessage(seq, draw(epochs), tuple(draw(st.lists(gap | event, max_size=5))))


reported_messages = st.builds(ReportedMessage, seqs, epochs, st.integers(0, MAX_SEQ), json_objects)
acks_messages = st.builds(
    AcksMessage,
    seqs,
    epochs,
    st.lists(
        st.builds(
            CommandAck,
            command_ids,
            st.sampled_from(AckStatus),
            epochs,
            st.none() | utf8_text.filter(bool),
            st.none() | json_objects,
        ),
        max_size=5,
    ).map(tuple),
)
status_messages = st.sampled_from(
    [
        (StatusState.ONLINE, StatusReason.CONNECTED),
        (StatusState.ONLINE, StatusReason.HEARTBEAT),
        (StatusState.OFFLINE, StatusReason.SHUTDOWN),
        (StatusState.OFFLINE, StatusReason.WILL),
    ]
).flatmap(lambda pair: st.builds(StatusMessage, st.just(pair[0]), st.just(pair[1]), epochs, st.none() | json_objects))
desired_messages = st.builds(DesiredMessage, st.integers(1, MAX_SEQ), epochs, json_objects)
command_messages = st.builds(
    CommandMessage,
    command_ids,
    ids,
    st.from_regex(r"[a-z][a-z0-9_]{0,63}", fullmatch=True),
    json_objects,
    epochs,
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=128),
    epochs,
    st.none() | st.builds(Precondition, st.integers(0, MAX_SEQ)),
)

CODECS: list[tuple[str, Any, Callable[[Any], bytes], Callable[[bytes], Any]]] = [
    ("readings", readings_messages(), encode_readings, decode_readings),
    ("events", events_messages(), encode_events, decode_events),
    ("reported", reported_messages, encode_reported, decode_reported),
    ("acks", acks_messages, encode_acks, decode_acks),
    ("status", status_messages, encode_status, decode_status),
    ("desired", desired_messages, encode_desired, decode_desired),
    ("command", command_messages, encode_command, decode_command),
]


@pytest.mark.parametrize(("strategy", "encode", "decode"), [c[1:] for c in CODECS], ids=[c[0] for c in CODECS])
@PROPERTY
@given(data=st.data())
def test_round_trip_and_deterministic_encoding(data: st.DataObject, strategy: Any, encode: Any, decode: Any) -> None:
    msg = data.draw(strategy)
    payload = encode(msg)
    assert encode(msg) == payload
    decoded = decode(payload)
    assert decoded == msg
    assert encode(decoded) == payload  # the encoding is canonical: re-encoding a decoded message is identical
    assert len(payload) <= MAX_PAYLOAD_BYTES


@PROPERTY
@given(readings_messages(exact_ms=False))
def test_readings_times_are_quantised_to_the_millisecond(msg: ReadingsMessage) -> None:
    decoded = decode_readings(encode_readings(msg))
    assert [x.observed_at for x in decoded.readings] == [round(x.observed_at * 1000) / 1000 for x in msg.readings]


@PROPERTY
@given(readings_messages())
def test_value_types_survive_the_round_trip(msg: ReadingsMessage) -> None:
    # True == 1.0 in Python, so equality alone cannot tell a boolean from a number.
    decoded = decode_readings(encode_readings(msg))
    for sent, got in zip(msg.readings, decoded.readings, strict=True):
        expected_type = float if type(sent.value) in (int, float) else type(sent.value)
        assert type(got.value) is expected_type


@PROPERTY
@given(st.booleans() | st.integers(-(2**53), 2**53) | finite)
def test_booleans_are_never_numbers(value: bool | int | float) -> None:
    payload = encode_readings(ReadingsMessage(1, T0, (Reading("a", "x", value, None, T0, ClockQuality.SYNCED),)))
    record = orjson.loads(payload)["senml"][0]
    if isinstance(value, bool):
        assert record == {"bn": "a:", "bt": T0, "n": "x", "vb": value}
        assert decode_readings(payload).readings[0].value is value
    else:
        assert "vb" not in record
        assert type(record["v"]) is float
        assert type(decode_readings(payload).readings[0].value) is float
    tampered = orjson.loads(payload)
    tampered["senml"][0] = {"bn": "a:", "bt": T0, "n": "x", "v": True}
    expect("bad_value", decode_readings, dumps(tampered))


@PROPERTY
@given(st.binary(max_size=768))
def test_vd_is_unpadded_base64url(data: bytes) -> None:
    payload = encode_readings(ReadingsMessage(1, T0, (Reading("a", "x", data, None, T0, ClockQuality.SYNCED),)))
    text = orjson.loads(payload)["senml"][0]["vd"]
    assert not set(text) & set("=+/")
    assert base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) == data
    assert decode_readings(payload).readings[0].value == data


@PROPERTY
@given(ids, st.sampled_from(Channel))
def test_topic_round_trip(gateway_id: str, channel: Channel) -> None:
    assert parse_topic(topic_for(gateway_id, channel)) == (gateway_id, channel)


def only_wire_errors(decode: Callable[[bytes], object], payload: bytes) -> None:
    try:
        decode(payload)
    except WireError as error:
        reason, message = error.reason, error.message
    else:
        return
    assert reason in WIRE_REASONS
    assert message


@PROPERTY
@given(st.binary(max_size=300))
def test_decoders_survive_arbitrary_bytes(payload: bytes) -> None:
    for decode in DECODERS.values():
        only_wire_errors(decode, payload)


@PROPERTY
@given(st.text(max_size=100))
def test_parse_topic_survives_arbitrary_text(topic: str) -> None:
    try:
        gateway_id, channel = parse_topic(topic)
    except WireError as error:
        reason = error.reason
    else:
        assert topic == topic_for(gateway_id, channel)
        return
    assert reason in {"bad_topic", "unknown_version"}


@PROPERTY
@given(json_values)
def test_decoders_survive_arbitrary_json(value: object) -> None:
    payload = dumps(value)
    for decode in JSON_DECODERS.values():
        only_wire_errors(decode, payload)


FIELDS = {
    "readings": ["seq", "ts", "cq", "senml"],
    "events": ["seq", "ts", "events"],
    "reported": ["seq", "ts", "version", "state"],
    "acks": ["seq", "ts", "acks"],
    "status": ["state", "ts", "reason", "health"],
    "desired": ["version", "ts", "delta"],
    "command": ["id", "device", "name", "params", "deadline", "idempotency_key", "precondition", "ts"],
}
record_like = st.dictionaries(
    st.sampled_from(["bn", "bt", "bu", "bv", "n", "u", "v", "vs", "vb", "vd", "t", "cq", "x_"]),
    json_values | st.sampled_from(["a:", "a:x", "x", T0, "synced", "AA", 1.0]),
    max_size=6,
)


@pytest.mark.parametrize("kind", sorted(FIELDS))
@PROPERTY
@given(data=st.data())
def test_decoders_survive_plausible_documents(data: st.DataObject, kind: str) -> None:
    # Right field names, arbitrary values: reaches the per-field checks that arbitrary JSON rarely does.
    keys = data.draw(st.lists(st.sampled_from(FIELDS[kind]), unique=True))
    doc: dict[str, object] = {"v": 1}
    for key in keys:
        doc[key] = data.draw(json_values | st.lists(record_like, max_size=3) | record_like, label=key)
    only_wire_errors(JSON_DECODERS[kind], dumps(doc))


def _set(path: tuple[object, ...], value: object) -> Callable[[Any], None]:
    def apply(doc: Any) -> None:
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value

    return apply


def _drop(key: str) -> Callable[[Any], None]:
    return lambda doc: doc.pop(key)


@st.composite
def mutated_readings(draw: st.DrawFn) -> tuple[bytes, str]:
    msg = draw(readings_messages())
    if not msg.readings:
        msg = ReadingsMessage(msg.seq, msg.sent_at, (Reading("a", "x", 1.0, None, T0, ClockQuality.SYNCED),))
    doc = orjson.loads(encode_readings(msg))
    index = draw(st.integers(0, len(doc["senml"]) - 1))
    mutations: list[tuple[Callable[[Any], None], str]] = [
        (_drop(draw(st.sampled_from(["v", "seq", "ts", "cq", "senml"]))), "missing_field"),
        (_set(("v",), draw(st.integers(2, 10**6))), "unknown_version"),
        (_set(("seq",), draw(st.sampled_from(["1", 0, -1, 1.5, True, None, MAX_SEQ + 1]))), "bad_field"),
        (_set(("ts",), draw(st.floats(-1e9, MIN_EPOCH, exclude_max=True))), "relative_time"),
        (_set(("senml", 0, "bt"), draw(st.floats(-1e6, 1e6))), "relative_time"),
        (_set(("senml", index, "v"), draw(st.booleans())), "bad_value"),
        (_set(("senml", index, "vs"), "x" * (MAX_STRING + 1)), "bad_value"),
        (_set(("senml", index, draw(st.from_regex(r"[a-z]{1,5}_", fullmatch=True))), 1), "must_understand"),
        (_set(("senml", index, "n"), draw(st.sampled_from(["", ":", "a:b:c", "A:x", 7]))), "bad_name"),
        (_set(("senml", index), draw(json_scalars)), "bad_field"),
    ]
    mutate, reason = draw(st.sampled_from(mutations))
    mutate(doc)
    return dumps(doc), reason


@PROPERTY
@given(mutated_readings())
def test_mutated_readings_are_rejected_with_the_right_reason(case: tuple[bytes, str]) -> None:
    payload, reason = case
    expect(reason, decode_readings, payload)


@PROPERTY
@given(readings_messages(), st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]))
def test_non_finite_numbers_are_malformed_json(msg: ReadingsMessage, literal: str) -> None:
    payload = encode_readings(msg).replace(b'"ts":', b'"ts":' + literal.encode() + b',"was":', 1)
    expect("malformed_json", decode_readings, payload)


ENVELOPE_MUTATIONS = [
    ("drop v", _drop("v"), "missing_field"),
    ("v=2", _set(("v",), 2), "unknown_version"),
    ("v string", _set(("v",), "1"), "bad_field"),
    ("ts relative", _set(("ts",), 3600), "relative_time"),
    ("ts string", _set(("ts",), "2024-01-01T00:00:00Z"), "bad_field"),
    ("ts far future", _set(("ts",), float(MAX_EPOCH)), "bad_field"),
    ("unknown critical field", _set(("future_",), {}), "must_understand"),
]


@pytest.mark.parametrize(
    ("mutate", "reason"), [m[1:] for m in ENVELOPE_MUTATIONS], ids=[m[0] for m in ENVELOPE_MUTATIONS]
)
@pytest.mark.parametrize(("strategy", "encode", "decode"), [c[1:] for c in CODECS], ids=[c[0] for c in CODECS])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_envelopes_are_rejected(
    data: st.DataObject, strategy: Any, encode: Any, decode: Any, mutate: Any, reason: str
) -> None:
    doc = orjson.loads(encode(data.draw(strategy)))
    mutate(doc)
    expect(reason, decode, dumps(doc))


@pytest.mark.parametrize(("strategy", "encode", "decode"), [c[1:] for c in CODECS], ids=[c[0] for c in CODECS])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_dropping_any_required_field_is_missing_field(
    data: st.DataObject, strategy: Any, encode: Any, decode: Any
) -> None:
    doc = orjson.loads(encode(data.draw(strategy)))
    optional = {"health", "precondition", "params"}
    key = data.draw(st.sampled_from(sorted(set(doc) - optional)))
    del doc[key]
    expect("missing_field", decode, dumps(doc))


@pytest.mark.parametrize(("strategy", "encode", "decode"), [c[1:] for c in CODECS], ids=[c[0] for c in CODECS])
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_oversize_payloads_are_refused_before_parsing(
    data: st.DataObject, strategy: Any, encode: Any, decode: Any
) -> None:
    payload = encode(data.draw(strategy))
    padded = payload[:-1] + b" " * (MAX_PAYLOAD_BYTES - len(payload) + 1) + payload[-1:]
    assert orjson.loads(padded) == orjson.loads(payload)  # still valid JSON: only the size is wrong
    expect("oversize", decode, padded)
