"""Tests of the Modbus profiles (hw/modbus/profiles/*.toml) and their loader: every shipped profile loads, its points
decode what the simulator shows, its reads coalesce as planned, and each kind of mistake is reported as one line
naming the file, the point and the fix."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.sources.modbus_plan import plan_reads
from hw.modbus.codec import decode_point, encode_point
from hw.modbus.model import DataType, Function, WordOrder
from hw.modbus.profile import ProfileError, list_profiles, load_profile, parse_profile
from hw.modbus.sim_device import SimulatedDevice

SHIPPED = ["bench-seq", "sdm120", "sdm630", "water-level", "water-meter"]


def test_the_shipped_profiles_are_listed() -> None:
    assert set(SHIPPED) <= set(list_profiles())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_and_its_points_decode(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.manufacturer
    assert profile.model
    assert profile.points
    device = SimulatedDevice(1, profile, random.Random(1), lambda: 1234.5)
    for point in profile.points:
        value = device.value(point.name)
        assert decode_point(point, encode_point(point, value)) == value
        assert isinstance(value, bool) == (point.type is DataType.BOOL)
    for command in profile.commands.values():
        assert profile.point(command.point).writable


def test_sdm120_uses_the_eastron_register_map() -> None:
    profile = load_profile("sdm120")
    expected = {"voltage": 0x0000, "current": 0x0006, "active_power": 0x000C, "frequency": 0x0046}
    for name, address in expected.items():
        point = profile.point(name)
        assert (point.address, point.function, point.type, point.order) == (
            address,
            Function.INPUT,
            DataType.FLOAT32,
            WordOrder.ABCD,
        )
    energy = profile.point("import_energy")
    assert (energy.address, energy.scale, energy.unit) == (0x0048, 1000.0, "Wh")


def test_water_meter_and_gauge_carry_their_writable_points_and_commands() -> None:
    meter = load_profile("water-meter")
    total = meter.point("total_volume")
    assert (total.type, total.order, total.unit) == (DataType.UINT32, WordOrder.CDAB, "m3")
    assert meter.point("valve_open").writable
    assert meter.commands["open"].resolve() is True
    assert meter.commands["close"].resolve() is False
    gauge = load_profile("water-level")
    assert gauge.point("water_level").type is DataType.INT16
    assert gauge.commands["set_mode"].resolve("flood") == 1
    assert gauge.commands["set_sample_interval"].resolve(30) == 30
    with pytest.raises(ValueError, match="takes one of: flood, normal"):
        gauge.commands["set_mode"].resolve("storm")


@pytest.mark.parametrize(
    ("name", "blocks"),
    [
        ("sdm120", [(Function.INPUT, 0x00, 0x20), (Function.INPUT, 0x46, 8), (Function.INPUT, 0x156, 2)]),
        (
            "sdm630",
            [
                (Function.INPUT, 0x00, 0x24),
                (Function.INPUT, 0x34, 0x18),
                (Function.INPUT, 0xC8, 6),
                (Function.INPUT, 0xE0, 2),
                (Function.INPUT, 0x156, 2),
            ],
        ),
        ("water-meter", [(Function.INPUT, 0, 9), (Function.COIL, 0, 1), (Function.DISCRETE, 0, 1)]),
        ("bench-seq", [(Function.HOLDING, 0, 20)]),
    ],
)
def test_reads_coalesce_into_blocks(name: str, blocks: list[tuple[Function, int, int]]) -> None:
    profile = load_profile(name)
    planned = plan_reads(profile.points, max_gap=profile.max_gap, max_registers=profile.max_read)
    assert [(b.function, b.start, b.count) for b in planned] == blocks
    assert sum(len(b.points) for b in planned) == len(profile.points)


def test_blocks_respect_the_gap_and_size_limits() -> None:
    profile = load_profile("bench-seq")
    assert [b.count for b in plan_reads(profile.points, max_gap=0, max_registers=8)] == [8, 8, 4]
    sdm = load_profile("sdm120")
    assert len(plan_reads(sdm.points, max_gap=0, max_registers=125)) == 8  # only touching points merge


GOOD_POINT = 'name = "level"\nfunction = "holding"\naddress = 0\ntype = "int16"\n'
HEADER = 'manufacturer = "Acme"\nmodel = "G1"\n'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "[[points]]\n" + GOOD_POINT.replace("int16", "float"),
            "point 'level': unknown type 'float'; use one of int16",
        ),
        ("[[points]]\n" + GOOD_POINT + 'order = "ADBC"\n', "point 'level': unknown order 'ADBC'; use one of ABCD"),
        ("[[points]]\n" + GOOD_POINT.replace("holding", "register"), "unknown function 'register'"),
        (
            "[[points]]\n" + GOOD_POINT.replace("address = 0", "address = 65535").replace("int16", "int32"),
            "out of range",
        ),
        (
            "[[points]]\n" + GOOD_POINT.replace("address = 0", "address = -1"),
            "point 'level': address -1 is out of range",
        ),
        (
            "[[points]]\n" + GOOD_POINT + "[[points]]\n" + GOOD_POINT.replace("level", "status").replace("= 0", "= 0"),
            "point 'status': holding address 0 overlaps point 'level' (0..0); move one of them",
        ),
        (
            "[[points]]\n"
            + GOOD_POINT.replace("int16", "float32")
            + "[[points]]\n"
            + GOOD_POINT.replace("level", "status").replace("= 0", "= 1"),
            "overlaps point 'level' (0..1)",
        ),
        ("[[points]]\n" + GOOD_POINT + "[[points]]\n" + GOOD_POINT, "point 'level': is defined twice"),
        ("[[points]]\n" + GOOD_POINT + 'unit = "kWh/d"\n', "unit 'kWh/d' is not a SenML unit"),
        ("[[points]]\n" + GOOD_POINT + "scale = 0\n", "scale must not be 0"),
        ("[[points]]\n" + GOOD_POINT + "sacle = 2\n", "point 'level': unknown key 'sacle'"),
        ("[[points]]\n" + GOOD_POINT.replace("holding", "input") + "writable = true\n", "the input table is read-only"),
        ("[[points]]\n" + GOOD_POINT.replace("holding", "coil"), "type int16 does not fit the coil table"),
        ("[[points]]\n" + GOOD_POINT + "min = 1\n", "min/max bound writes; set writable = true"),
        ("[[points]]\n" + GOOD_POINT + "writable = true\nmin = 5\nmax = 1\n", "min 5.0 is above max 1.0; swap"),
        ("[[points]]\n" + GOOD_POINT + "alarm_when = true\n", "alarm_when is for bool points"),
        ("[[points]]\n" + GOOD_POINT + 'sim = { kind = "sine" }\n', "sim must be a table with kind = one of"),
        ('[[points]]\nname = "Level"\nfunction = "holding"\naddress = 0\ntype = "int16"\n', "points[0]: name 'Level'"),
        ("", "no points; add at least one [[points]]"),
        (
            "[[points]]\n" + GOOD_POINT + '[commands.open]\npoint = "level"\nvalue = 1\n',
            "point 'level' is not writable",
        ),
        ("[[points]]\n" + GOOD_POINT + '[commands.go]\npoint = "nope"\n', "command 'go': point 'nope' is not a point"),
        (
            "[[points]]\n" + GOOD_POINT + 'writable = true\nmax = 3\n[commands.go]\npoint = "level"\nvalue = 4\n',
            "value 4 is outside the min..max of 'level'",
        ),
        ("poll_interval_s = 0\n[[points]]\n" + GOOD_POINT, "poll_interval_s must be above 0"),
        ("max_read = 500\n[[points]]\n" + GOOD_POINT, "max_read must be 2..125"),
        ("[[points]\n", "not valid TOML"),
    ],
)
def test_profile_errors_name_the_file_the_point_and_the_fix(body: str, message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile("gauge", HEADER + body)
    text = str(caught.value)
    assert text.startswith("gauge.toml: ")
    assert message in text
    assert "\n" not in text


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError, match="no Modbus profile 'sdm999'; use one of bench-seq, sdm120"):
        load_profile("sdm999")


def test_a_profile_loads_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "gauge-x.toml"
    path.write_text(HEADER + "[[points]]\n" + GOOD_POINT + "scale = 0.01\nunit = 'm'\n", encoding="utf-8")
    profile = load_profile(path)
    assert profile.name == "gauge-x"
    assert decode_point(profile.point("level"), [1234]) == 12.34
    with pytest.raises(ProfileError, match="cannot read the profile"):
        load_profile(tmp_path / "missing.toml")
