"""LPWA payload profiles: the shipped TOML profiles, the struct format, decode errors, and property round trips."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw.lpwa.build import encode_payload
from hw.lpwa.payload import PayloadError, Value, decode_payload
from hw.lpwa.profile import FIELD_TYPES, Profile, ProfileError, builtin_profiles, load_profile, parse_profile

PROFILES = builtin_profiles()


def test_shipped_profiles() -> None:
    assert {"watch-tag-v1", "water-level-v1", "water-level-id-v1"} <= set(PROFILES)
    tag = PROFILES["watch-tag-v1"]
    assert (tag.length, tag.id_field, tag.priority, tag.match_bytes) == (7, "tag_id", "event", b"\x01")
    assert tag.field("flags").flags[0].priority == "alarm"
    assert PROFILES["water-level-v1"].id_field is None


@pytest.mark.parametrize(
    ("profile", "payload", "expected"),
    [
        (
            "watch-tag-v1",
            "01A1B200015F01",
            {"type": 1, "tag_id": 0xA1B20001, "battery": 95, "flags": 1, "sos": True, "low_battery": False},
        ),
        (
            "watch-tag-v1",
            "01000000071202",
            {"type": 1, "tag_id": 7, "battery": 18, "flags": 2, "sos": False, "low_battery": True},
        ),
        (
            "water-level-v1",
            "00C85A00",
            {"level": 200, "battery": 90, "flags": 0, "sensor_fault": False, "flood": False},
        ),
        ("water-level-v1", "FFFB1403", {"level": -5, "battery": 20, "flags": 3, "sensor_fault": True, "flood": True}),
        (
            "water-level-id-v1",
            "020201019A5002",
            {
                "type": 2,
                "node_id": 0x0201,
                "level": 410,
                "battery": 80,
                "flags": 2,
                "sensor_fault": False,
                "flood": True,
            },
        ),
    ],
)
def test_decode_shipped_profiles(profile: str, payload: str, expected: dict[str, Value]) -> None:
    assert decode_payload(PROFILES[profile], bytes.fromhex(payload)) == expected


@pytest.mark.parametrize(
    ("profile", "payload", "message"),
    [
        ("watch-tag-v1", "01A1B200015F", "6 bytes, expected 7"),
        ("watch-tag-v1", "01A1B200015F0100", "8 bytes, expected 7"),
        ("watch-tag-v1", "02A1B200015F01", "expected 01"),
        ("water-level-v1", "", "0 bytes"),
    ],
)
def test_payload_errors(profile: str, payload: str, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode_payload(PROFILES[profile], bytes.fromhex(payload))


def _profile(fields: list[dict[str, Any]], length: int, **extra: Any) -> Profile:
    return parse_profile({"name": "test-v1", "length": length, "fields": fields, **extra})


def test_struct_types_endianness_and_scale() -> None:
    profile = _profile(
        [
            {"name": "temp", "offset": 0, "type": "int16", "endian": "little", "scale": 0.01, "unit": "Cel"},
            {"name": "pressure", "offset": 2, "type": "uint32", "scale": 0.1, "unit": "hPa"},
            {"name": "ratio", "offset": 6, "type": "float32"},
            {"name": "count", "offset": 10, "type": "int8"},
        ],
        11,
    )
    values = decode_payload(profile, bytes.fromhex("2EF6" + "000027AC" + "3FC00000" + "FE"))
    assert values["temp"] == pytest.approx(-25.14)
    assert values["pressure"] == pytest.approx(1015.6)
    assert values == {"temp": values["temp"], "pressure": values["pressure"], "ratio": 1.5, "count": -2}


def test_non_finite_float_is_a_payload_error() -> None:
    profile = _profile([{"name": "ratio", "offset": 0, "type": "float32"}], 4)
    with pytest.raises(PayloadError, match="not a finite number"):
        decode_payload(profile, bytes.fromhex("7FC00000"))


def _doc(*fields: dict[str, Any], length: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": "x-v1", "length": length, "fields": list(fields), **extra}


_U8 = {"name": "a", "offset": 0, "type": "uint8"}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_doc({**_U8, "type": "int64"}), "fields[0].type"),
        (_doc({**_U8, "type": "int16"}), "run past"),
        (_doc(), "at least one"),
        ({**_doc(_U8), "name": "X"}, "name"),
        (_doc(_U8, length=0), "length"),
        (_doc({**_U8, "bogus": 1}), "bogus"),
        (_doc(_U8, extra=1), "extra"),
        (_doc(_U8, {**_U8, "offset": 1}, length=2), "used twice"),
        (_doc({**_U8, "flags": [{"name": "b", "bit": 8}]}), "flags[0].bit"),
        (_doc({**_U8, "type": "float32", "flags": [{"name": "b", "bit": 0}]}, length=4), "only integer fields"),
        (_doc({**_U8, "type": "int8"}, id_field="a"), "id_field"),
        (_doc(_U8, time_field="a"), "time_field"),
        (_doc(_U8, match={"offset": 1, "hex": "01"}), "match"),
        (_doc(_U8, match={"hex": "zz"}), "match.hex"),
        (_doc({**_U8, "name": "a b"}), "fields[0].name"),
        (_doc({**_U8, "offset": True}), "offset"),
        (_doc({**_U8, "scale": 0}), "scale"),
        (_doc(_U8, priority="alarm"), "priority"),
    ],
)
def test_profile_errors_name_the_key(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_profile(doc)


def test_load_profile_file_checks(tmp_path: Path) -> None:
    good = tmp_path / "meter-v1.toml"
    good.write_text('name = "meter-v1"\nlength = 2\n[[fields]]\nname = "kwh"\noffset = 0\ntype = "uint16"\n')
    assert load_profile(good).field("kwh").type == "uint16"
    renamed = tmp_path / "other.toml"
    renamed.write_text(good.read_text())
    with pytest.raises(ProfileError, match="must match the file name"):
        load_profile(renamed)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = ")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(broken)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.toml")


# --- properties ---------------------------------------------------------------------------------------------------


@given(st.sampled_from(sorted(PROFILES)), st.binary(max_size=16))
def test_decode_arbitrary_bytes_returns_values_or_payload_error(name: str, payload: bytes) -> None:
    try:
        values = decode_payload(PROFILES[name], payload)
    except PayloadError:
        return
    assert all(isinstance(value, int | float | bool) for value in values.values())


_INT_RANGES = {"int8": 7, "uint8": 8, "int16": 15, "uint16": 16, "int32": 31, "uint32": 32}


@st.composite
def _profiles_and_values(draw: st.DrawFn) -> tuple[Profile, dict[str, Value]]:
    count = draw(st.integers(1, 6))
    fields: list[dict[str, Any]] = []
    offset = 0
    for index in range(count):
        type_ = draw(st.sampled_from(sorted(FIELD_TYPES)))
        field: dict[str, Any] = {
            "name": f"f{index}",
            "offset": offset,
            "type": type_,
            "endian": draw(st.sampled_from(["big", "little"])),
        }
        if type_ != "float32" and draw(st.booleans()):
            bits = FIELD_TYPES[type_][1] * 8
            chosen = draw(st.lists(st.integers(0, bits - 1), unique=True, max_size=3))
            field["flags"] = [{"name": f"f{index}_b{bit}", "bit": bit} for bit in chosen]
        fields.append(field)
        offset += FIELD_TYPES[type_][1] + draw(st.integers(0, 2))
    profile = _profile(fields, offset)
    values: dict[str, Value] = {}
    for spec in profile.fields:
        if spec.type == "float32":
            values[spec.name] = draw(st.floats(width=32, allow_nan=False, allow_infinity=False))
            continue
        bits = _INT_RANGES[spec.type]
        low, high = (0, 2**bits - 1) if spec.type.startswith("u") else (-(2**bits), 2**bits - 1)
        raw = draw(st.integers(low, high))
        values[spec.name] = raw
        for flag in spec.flags:
            values[flag.name] = bool((raw >> flag.bit) & 1)
    return profile, values


@given(_profiles_and_values())
def test_encode_decode_round_trip(case: tuple[Profile, dict[str, Value]]) -> None:
    profile, values = case
    assert decode_payload(profile, encode_payload(profile, values)) == values


@given(st.integers(-(2**15), 2**15 - 1), st.sampled_from([0.1, 0.5, 2.0, 0.001]))
def test_scaled_round_trip(raw: int, scale: float) -> None:
    profile = _profile([{"name": "v", "offset": 0, "type": "int16", "scale": scale}], 2)
    value = decode_payload(profile, encode_payload(profile, {"v": raw * scale}))["v"]
    assert math.isclose(value, raw * scale, rel_tol=1e-9, abs_tol=1e-9)


@given(st.integers(0, 2**32 - 1), st.integers(0, 100), st.booleans(), st.booleans())
def test_watch_tag_round_trip(tag_id: int, battery: int, sos: bool, low: bool) -> None:
    profile = PROFILES["watch-tag-v1"]
    payload = encode_payload(profile, {"tag_id": tag_id, "battery": battery, "sos": sos, "low_battery": low})
    assert payload[0] == 0x01
    values = decode_payload(profile, payload)
    assert (values["tag_id"], values["battery"], values["sos"], values["low_battery"]) == (tag_id, battery, sos, low)
    assert profile.format_id(int(values["tag_id"])) == f"{tag_id:08X}"


def test_encode_rejects_missing_and_out_of_range_values() -> None:
    profile = PROFILES["water-level-v1"]
    with pytest.raises(PayloadError, match="no value for field level"):
        encode_payload(profile, {"battery": 1})
    with pytest.raises(PayloadError, match="does not fit int16"):
        encode_payload(profile, {"level": 40_000, "battery": 1})
