"""The command catalogue: specs derived from Modbus profiles and the node profile, and validation of parameters.

Table-driven cases for each kind of command, property tests that validation accepts exactly the values in range and
that the node profile accepts exactly what the node firmware (``edge/khnode/downlink.py``) accepts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw.catalog import CatalogError, commands_for, validate_command
from hw.modbus.profile import ProfileError, parse_profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))

from khnode.downlink import Downlink


@pytest.mark.parametrize(
    ("kind", "profile", "name", "params", "normalised"),
    [
        ("water_meter", "water-meter", "open", {}, {}),
        ("water_meter", "water-meter", "close", {}, {}),
        ("water_level", "water-level", "set_mode", {"value": "flood"}, {"value": "flood"}),
        ("water_level", "water-level", "set_sample_interval", {"value": 30}, {"value": 30}),
        ("water_level", "water-level", "set_sample_interval", {"value": 30.0}, {"value": 30}),
        ("water_level", "water-level", "set_sample_interval", {"value": 3600}, {"value": 3600}),
        ("water_level", "water-level", "set_flood_threshold", {"value": 2.75}, {"value": 2.75}),
        ("water_level", "water-level", "set_flood_threshold", {"value": 0}, {"value": 0}),
        ("water_level", "khnode", "flood_mode", {}, {"on": True, "minutes": 60}),
        ("water_level", "khnode", "flood_mode", {"on": False}, {"on": False, "minutes": 60}),
        ("water_level", "khnode", "flood_mode", {"minutes": 10080}, {"on": True, "minutes": 10080}),
        ("water_level", "khnode", "report_now", {}, {}),
        ("node", None, "report_now", {}, {}),
    ],
)
def test_valid_commands_come_back_normalised(
    kind: str, profile: str | None, name: str, params: dict[str, Any], normalised: dict[str, Any]
) -> None:
    result = validate_command(kind, profile, name, params)
    assert result == normalised
    assert [type(v) for v in result.values()] == [type(v) for v in normalised.values()]


@pytest.mark.parametrize(
    ("profile", "name", "params", "reason", "fragment"),
    [
        ("water-meter", "explode", {}, "unknown_command", "it has: close, open"),
        ("sdm120", "open", {}, "unknown_command", "declares no commands"),
        ("no-such-profile", "open", {}, "unknown_command", "declares no commands"),
        (None, "open", {}, "unknown_command", "without a hardware profile"),
        ("water-meter", "open", {"value": True}, "bad_params", "no parameter 'value' (it takes no parameters)"),
        ("water-meter", "open", [], "bad_params", "JSON object"),
        ("water-level", "set_mode", {}, "bad_params", "needs parameter 'value'"),
        ("water-level", "set_mode", {"value": "storm"}, "bad_params", "flood, normal"),
        ("water-level", "set_mode", {"value": 1}, "bad_params", "flood, normal"),
        ("water-level", "set_sample_interval", {"value": 0}, "out_of_range", "1..3600"),
        ("water-level", "set_sample_interval", {"value": 3601}, "out_of_range", "1..3600"),
        ("water-level", "set_sample_interval", {"value": 1.5}, "bad_params", "whole number"),
        ("water-level", "set_sample_interval", {"value": True}, "bad_params", "a number"),
        ("water-level", "set_sample_interval", {"value": "30"}, "bad_params", "a number"),
        ("water-level", "set_flood_threshold", {"value": 10.01}, "out_of_range", "0..10"),
        ("water-level", "set_flood_threshold", {"value": -0.01}, "out_of_range", "0..10"),
        ("water-level", "set_flood_threshold", {"value": 1.234}, "bad_params", "steps of 0.01"),
        ("water-level", "set_flood_threshold", {"value": float("nan")}, "bad_params", "a number"),
        ("khnode", "flood_mode", {"minutes": 0}, "out_of_range", "1..10080"),
        ("khnode", "flood_mode", {"minutes": 10081}, "out_of_range", "1..10080"),
        ("khnode", "flood_mode", {"on": 1}, "bad_params", "true or false"),
        ("khnode", "flood_mode", {"on": True, "hours": 2}, "bad_params", "no parameter 'hours'"),
        ("khnode", "report_now", {"now": True}, "bad_params", "no parameter 'now'"),
    ],
)
def test_invalid_commands_are_refused_with_a_reason(
    profile: str | None, name: str, params: Any, reason: str, fragment: str
) -> None:
    with pytest.raises(CatalogError) as refused:
        validate_command("valve", profile, name, params)
    assert refused.value.reason == reason
    assert fragment in str(refused.value)


def test_specs_follow_the_profiles() -> None:
    meter = commands_for("water_meter", "water-meter")
    assert (meter["close"].confirm, meter["open"].confirm) == (True, False)
    gauge = commands_for("water_level", "water-level")
    assert gauge["set_mode"].params["value"].choices == ("flood", "normal")
    interval = gauge["set_sample_interval"].params["value"]
    assert (interval.type, interval.minimum, interval.maximum) == ("int", 1, 3600)
    threshold = gauge["set_flood_threshold"].params["value"]
    assert (threshold.type, threshold.decimals) == ("number", 2)
    node = commands_for("water_level", "khnode")
    assert sorted(node) == ["flood_mode", "report_now"]
    assert commands_for("energy_meter", "sdm120") == {}
    assert commands_for("water_level", None) == {}


def test_a_point_without_bounds_is_ranged_by_its_register() -> None:
    profile = parse_profile(
        "relay",
        """
        manufacturer = "x"
        model = "y"
        [[points]]
        name = "setpoint"
        function = "holding"
        address = 0
        type = "int16"
        scale = 0.1
        writable = true
        [commands.set]
        point = "setpoint"
        confirm = true
        """,
    )
    assert profile.commands["set"].confirm is True
    with pytest.raises(ProfileError, match="confirm must be true or false"):
        parse_profile("bad", 'manufacturer="x"\nmodel="y"\n[[points]]\nname="a"\nfunction="coil"\naddress=0\n'
                      'writable=true\n[commands.go]\npoint="a"\nvalue=true\nconfirm="yes"\n')  # fmt: skip


@given(value=st.integers(-10_000, 10_000) | st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_a_setpoint_is_accepted_exactly_within_its_range(value: float) -> None:
    inside = 1 <= value <= 3600 and value == int(value)
    if inside:
        result = validate_command("water_level", "water-level", "set_sample_interval", {"value": value})
        assert result == {"value": int(value)}
        return
    with pytest.raises(CatalogError) as refused:
        validate_command("water_level", "water-level", "set_sample_interval", {"value": value})
    assert refused.value.reason == ("out_of_range" if value == int(value) else "bad_params")


# ----------------------------------------------------------------------------------------------------------------
# The node profile and the firmware agree

_values = st.none() | st.booleans() | st.integers(-5, 10_090) | st.floats(-1, 20_000) | st.text(max_size=3)


def _firmware_accepts(params: dict[str, Any]) -> bool:
    node = Downlink({"node": "wl-0007"}, {}, None, {}, 1_000)
    doc = {"v": 1, "id": "c-1", "device": "wl-0007", "name": "flood_mode", "params": params, "deadline": 2_000}
    node.handle(b"kn/v1/wl-0007/down/commands", json.dumps(doc).encode())
    return bool(node.acks) and node.acks[0][1] == "succeeded"


@given(params=st.dictionaries(st.sampled_from(["on", "minutes"]), _values, max_size=2))
def test_the_node_profile_accepts_exactly_what_the_firmware_accepts(params: dict[str, Any]) -> None:
    firmware = _firmware_accepts(params)
    try:
        normalised = validate_command("water_level", "khnode", "flood_mode", params)
    except CatalogError:  # stricter only where Python lets a bool pass for a whole number of minutes
        assert not firmware or isinstance(params.get("minutes"), bool)
    else:
        assert _firmware_accepts(normalised)
        assert firmware or isinstance(params.get("minutes"), float)  # 30.0 is sent as 30
