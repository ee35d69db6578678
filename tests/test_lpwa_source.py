"""The LPWA source against the module simulator over a real socat PTY, for each module type; plus its config."""

from __future__ import annotations

import asyncio
import contextlib
import random
import tomllib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.model import ClockQuality, Priority, Reading
from gateway.sources.base import SourceHealth
from gateway.sources.lpwa import LpwaSourceConfig, build_lpwa_source, parse_lpwa_config
from gateway.sources.lpwa_devices import DeviceMap
from gateway.sources.lpwa_readings import frame_readings
from hw.lpwa.build import MALFORMED_KINDS, encode_payload
from hw.lpwa.frames import RadioFrame
from hw.lpwa.payload import decode_payload
from hw.lpwa.population import SimDevice, SimWatchTag, SimWaterLevel
from hw.lpwa.profile import builtin_profiles
from hw.lpwa.simulator import LpwaModuleSimulator, default_population, main
from kakehashi.errors import ConfigError

MODULE_NAMES = ["im920", "es920lr", "rak3172"]
PROFILES = builtin_profiles()


class CollectingSink:
    """A sink that keeps every reading and lets a test wait for the ones it expects."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self._changed = asyncio.Event()

    async def submit(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[list[Reading]], bool], within_s: float = 3.0) -> None:
        async with asyncio.timeout(within_s):
            while not predicate(self.readings):
                self._changed.clear()
                await self._changed.wait()

    def of(self, device_id: str, quantity: str) -> list[Reading]:
        return [r for r in self.readings if r.device_id == device_id and r.quantity == quantity]


async def wait_until(condition: Callable[[], bool], within_s: float = 3.0) -> None:
    """Poll ``condition`` (health counters are plain attributes: there is no event to wait on)."""
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@dataclass
class Rig:
    sim: LpwaModuleSimulator
    sink: CollectingSink
    health: SourceHealth
    devices: list[SimDevice]

    @property
    def tag(self) -> SimDevice:
        return self.devices[0]

    @property
    def gauge(self) -> SimDevice:
        return self.devices[-1]


def source_config(module: str, link: Path, devices: Sequence[SimDevice], **overrides: Any) -> LpwaSourceConfig:
    return parse_lpwa_config(
        {
            "port": str(link),
            "module": module,
            "init_timeout_s": 0.3,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
            "devices": [device.gateway_device() for device in devices],
            **overrides,
        }
    )


@contextlib.asynccontextmanager
async def running_source(config: LpwaSourceConfig) -> AsyncIterator[tuple[CollectingSink, SourceHealth]]:
    sink, health = CollectingSink(), SourceHealth(config.name)
    task = asyncio.create_task(build_lpwa_source(config).run(sink, health))
    try:
        yield sink, health
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled(), "the source must only stop when cancelled"


@contextlib.asynccontextmanager
async def rig(
    module: str, tmp_path: Path, *, sim_options: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[Rig]:
    devices = default_population(module, tags=2, gauges=1, sos_probability=0.0)
    link = tmp_path / "lpwa0"
    simulator = LpwaModuleSimulator(module, link_path=link, devices=devices, seed=1, **(sim_options or {}))
    config = source_config(module, link, devices, **overrides)
    async with simulator as sim, running_source(config) as (sink, health):
        await wait_until(lambda: "initialised" in health.detail)
        yield Rig(sim, sink, health, devices)


# --- against the simulator ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULE_NAMES)
async def test_readings_arrive_with_link_quality(module: str, tmp_path: Path) -> None:
    async with rig(module, tmp_path) as r:
        assert r.health.state == "ok"
        assert r.health.detail["initialised"] is True
        assert r.sim.commands == list(r.sim.spec.init_commands(source_config(module, Path("x"), []).p2p_radio))
        await r.sim.send_device(r.tag, rssi_dbm=-91, snr_db=-3)
        await r.sim.send_device(r.gauge, rssi_dbm=-70, snr_db=8)
        await r.sink.wait_for(lambda _: bool(r.sink.of("wl-0001", "rssi")))
        (battery,) = r.sink.of("tag-0001", "battery")
        assert (battery.value, battery.unit, battery.priority) == (95.0, "%", Priority.EVENT)
        assert battery.clock is ClockQuality.ESTIMATED
        (rssi,) = r.sink.of("tag-0001", "rssi")
        assert (rssi.value, rssi.unit, rssi.priority) == (-91.0, "dBm", Priority.TELEMETRY)
        (level,) = r.sink.of("wl-0001", "level")
        assert (level.unit, level.priority) == ("cm", Priority.TELEMETRY)
        snr = r.sink.of("wl-0001", "snr")
        if module == "rak3172":
            assert [(s.value, s.unit) for s in snr] == [(8.0, "dB")]
        else:
            assert snr == []  # IM920 and ES920LR report no SNR
        assert r.health.readings == len(r.sink.readings)
        assert not r.health.errors


@pytest.mark.parametrize("module", MODULE_NAMES)
async def test_sos_and_flood_are_alarms(module: str, tmp_path: Path) -> None:
    async with rig(module, tmp_path) as r:
        await r.sim.send_device(r.tag, sos=True)
        await r.sim.send_device(r.gauge, flood=True)
        await r.sink.wait_for(lambda _: bool(r.sink.of("wl-0001", "flood")))
        (sos,) = r.sink.of("tag-0001", "sos")
        assert (sos.value, sos.priority) == (True, Priority.ALARM)
        (flood,) = r.sink.of("wl-0001", "flood")
        assert (flood.value, flood.priority) == (True, Priority.ALARM)
        (fault,) = r.sink.of("wl-0001", "sensor_fault")
        assert (fault.value, fault.priority) == (False, Priority.TELEMETRY)


@pytest.mark.parametrize("module", MODULE_NAMES)
async def test_unknown_malformed_and_bad_payloads_are_counted_and_dropped(module: str, tmp_path: Path) -> None:
    async with rig(module, tmp_path) as r:
        stranger = SimWatchTag("tag-9999", "0999", tag_id=0x0BADBEEF)
        await r.sim.send_device(stranger)  # a neighbour's tag: not registered, not forwarded
        await r.sim.send_frame("0998", b"\x00\x10\x50\x00")  # an unregistered gauge
        for kind in MALFORMED_KINDS:
            await r.sim.inject_malformed(kind)
        await r.sim.send_frame(r.gauge.sender, b"\x01" if module != "rak3172" else b"\x02\x02\x01")  # too short
        await r.sim.send_device(r.tag)
        await r.sink.wait_for(lambda _: bool(r.sink.of("tag-0001", "battery")))
        assert {reading.device_id for reading in r.sink.readings} == {"tag-0001"}
        assert r.health.errors["unknown_sender"] == 2
        assert r.health.errors["malformed_frame"] == len(MALFORMED_KINDS)
        assert r.health.errors["bad_payload"] == 1
        assert r.health.state == "ok"
        assert r.health.last_error is not None
        assert "expected 4" in r.health.last_error or "expected 7" in r.health.last_error


@pytest.mark.parametrize("module", MODULE_NAMES)
async def test_unplug_and_replug_recovers(module: str, tmp_path: Path) -> None:
    async with rig(module, tmp_path) as r:
        await r.sim.send_device(r.tag)
        await r.sink.wait_for(lambda readings: len(readings) > 0)
        before = len(r.sink.readings)
        await r.sim.unplug()
        assert not r.sim.link_path.exists()
        await wait_until(lambda: r.health.errors["unplugged"] == 1)
        assert r.health.state == "degraded"
        assert r.health.last_error is not None
        assert f"serial port {r.sim.link_path} disappeared: check the USB cable" in r.health.last_error
        await r.sim.send_device(r.tag)  # lost: the cable is out
        assert r.sim.frames_lost == 1
        await asyncio.sleep(0.3)  # a few reconnect attempts while the port is gone
        await r.sim.replug()
        await wait_until(lambda: r.health.detail["reconnects"] == 1 and r.health.state == "ok")
        assert r.sim.commands.count(r.sim.spec.init_commands(None)[0]) == 2  # the module was initialised again
        await r.sim.send_device(r.gauge)
        await r.sink.wait_for(lambda _: bool(r.sink.of("wl-0001", "level")))
        assert len(r.sink.readings) > before
        assert r.health.errors["unplugged"] == 1
        assert "open_failed" not in r.health.errors  # retries within one outage are not new errors


async def test_init_errors_are_tolerated(tmp_path: Path) -> None:
    async with rig("es920lr", tmp_path, sim_options={"init_reply": "error"}) as r:
        assert r.health.errors["init"] == 5
        assert r.health.state == "degraded"
        assert r.health.last_error is not None
        assert "answered 'NG 001' to 'start'" in r.health.last_error
        await r.sim.send_device(r.tag)
        await r.sink.wait_for(lambda _: bool(r.sink.of("tag-0001", "battery")))


async def test_silent_module_times_out_init_but_frames_still_count(tmp_path: Path) -> None:
    devices = default_population("rak3172", tags=1, gauges=0, sos_probability=0.0)
    link = tmp_path / "lpwa0"
    async with LpwaModuleSimulator("rak3172", link_path=link, devices=devices, init_reply="none") as sim:
        config = source_config("rak3172", link, devices, init_timeout_s=0.2)
        async with running_source(config) as (sink, health):
            await sim.wait_for_command("AT")
            await sim.send_device(devices[0])  # received while the source still waits for answers
            await sink.wait_for(lambda _: bool(sink.of("tag-0001", "battery")))
            await wait_until(lambda: "initialised" in health.detail)
            assert health.errors["init"] == 5
            assert health.detail["initialised"] is False
            assert "did not answer 'AT+PRECV=65534' within 0.2 s" in (health.last_error or "")


async def test_port_missing_at_start_then_plugged_in(tmp_path: Path) -> None:
    devices = default_population("im920", tags=1, gauges=0, sos_probability=0.0)
    link = tmp_path / "lpwa0"
    async with running_source(source_config("im920", link, devices)) as (sink, health):
        await wait_until(lambda: health.errors["open_failed"] == 1)
        assert health.state == "degraded"
        assert "cannot open serial port" in (health.last_error or "")
        await asyncio.sleep(0.3)
        assert health.errors["open_failed"] == 1  # one outage, one error, however many retries
        async with LpwaModuleSimulator("im920", link_path=link, devices=devices) as sim:
            await wait_until(lambda: health.state == "ok")
            await sim.send_device(devices[0])
            await sink.wait_for(lambda _: bool(sink.of("tag-0001", "battery")))


async def test_a_stop_that_comes_as_the_port_fails_to_open_stops_the_source(tmp_path: Path) -> None:
    """The gateway stops its sources by cancelling them: a cancel that lands just as opening the port fails must
    still stop the source (Python 3.11's ``asyncio.wait_for`` dropped such a cancel, and the gateway hung on stop)."""
    task: asyncio.Task[None] | None = None
    attempts = 0

    async def open_as_the_gateway_stops(port: str, baudrate: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        nonlocal attempts
        attempts += 1
        assert task is not None
        task.cancel()
        raise FileNotFoundError(2, "No such file or directory", port)

    config = source_config(
        "im920", tmp_path / "lpwa0", default_population("im920", tags=1, gauges=0, sos_probability=0.0)
    )
    source = build_lpwa_source(config, open_port=open_as_the_gateway_stops)
    task = asyncio.create_task(source.run(CollectingSink(), SourceHealth(config.name)))
    try:
        done, _ = await asyncio.wait({task}, timeout=3)
        assert task in done, f"the source ignored the stop and tried the port {attempts} times"
        assert task.cancelled()
        assert attempts == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_rak3172_old_firmware_two_line_frames(tmp_path: Path) -> None:
    async with rig("rak3172", tmp_path, sim_options={"legacy": True}) as r:
        await r.sim.send_device(r.tag, rssi_dbm=-101, snr_db=-7)
        await r.sink.wait_for(lambda _: bool(r.sink.of("tag-0001", "snr")))
        assert [x.value for x in r.sink.of("tag-0001", "rssi")] == [-101.0]
        assert [x.value for x in r.sink.of("tag-0001", "snr")] == [-7.0]


async def test_quiet_module_and_noise_do_not_stop_the_source(tmp_path: Path) -> None:
    async with rig("im920", tmp_path) as r:
        r.sim.go_silent()
        await r.sim.send_device(r.tag)
        await asyncio.sleep(0.1)
        assert r.sink.readings == []
        r.sim.resume()
        await r.sim.write_line("X" * 5000)  # line noise longer than any frame
        await r.sim.write_line("IM920sL VER.01.05")
        await r.sim.send_device(r.tag)
        await r.sink.wait_for(lambda _: bool(r.sink.of("tag-0001", "battery")))
        assert r.health.errors["malformed_frame"] == 1
        assert r.health.state == "ok"


async def test_emitting_population(tmp_path: Path) -> None:
    async with rig("es920lr", tmp_path, sim_options={"interval_s": 0.05, "malformed_every": 3}) as r:
        await r.sink.wait_for(lambda _: {x.device_id for x in r.sink.readings} == {"tag-0001", "tag-0002", "wl-0001"})
        await wait_until(lambda: r.health.errors["malformed_frame"] >= 1)


# --- readings from decoded frames ---------------------------------------------------------------------------------


def _custom_profile_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "profiles"
    directory.mkdir()
    (directory / "river-gauge-v2.toml").write_text(
        """
name = "river-gauge-v2"
length = 8
endian = "little"
time_field = "ts"

[[fields]]
name = "ts"
offset = 0
type = "uint32"

[[fields]]
name = "level"
offset = 4
type = "int16"
scale = 0.01
unit = "m"
alarm_above = 3.5

[[fields]]
name = "temperature"
offset = 6
type = "int16"
scale = 0.1
unit = "Cel"
quantity = "water_temperature"
"""
    )
    return directory


def test_new_device_needs_only_a_toml_file(tmp_path: Path) -> None:
    config = parse_lpwa_config(
        {
            "port": "/dev/ttyUSB0",
            "module": "im920",
            "profile_dir": str(_custom_profile_dir(tmp_path)),
            "devices": [{"id": "wl-0100", "sender": "0100", "profile": "river-gauge-v2"}],
        }
    )
    profile = config.profiles["river-gauge-v2"]
    device_map = DeviceMap([("wl-0100", "0100", profile)])
    payload = encode_payload(profile, {"ts": 1_790_000_000, "level": 3.62, "temperature": 12.5})
    frame = RadioFrame("im920", "0100", payload, -80)
    match = device_map.resolve(frame)
    assert match is not None
    readings = {r.quantity: r for r in frame_readings("wl-0100", profile, match.values, frame, 1_800_000_000.0)}
    assert set(readings) == {"level", "water_temperature", "rssi"}
    assert readings["level"].value == pytest.approx(3.62)
    assert readings["level"].priority is Priority.ALARM  # above alarm_above
    assert readings["water_temperature"].priority is Priority.TELEMETRY
    assert (readings["level"].observed_at, readings["level"].clock) == (1_790_000_000, ClockQuality.UNSYNCED)
    assert (readings["rssi"].observed_at, readings["rssi"].clock) == (1_800_000_000.0, ClockQuality.ESTIMATED)
    stale = encode_payload(profile, {"ts": 12, "level": 1.0, "temperature": 0})  # device clock not set
    values = decode_payload(profile, stale)
    (level,) = [r for r in frame_readings("wl-0100", profile, values, frame, 5e8) if r.quantity == "level"]
    assert (level.observed_at, level.clock, level.priority) == (5e8, ClockQuality.ESTIMATED, Priority.TELEMETRY)


def test_device_map_keys() -> None:
    tag, gauge = PROFILES["watch-tag-v1"], PROFILES["water-level-v1"]
    device_map = DeviceMap([("tag-0001", "a1b20001", tag), ("wl-0001", "201", gauge)])
    tag_payload = encode_payload(tag, {"tag_id": 0xA1B20001, "battery": 50})
    # a tag is found by its payload id whatever radio address it used
    for sender in ("0101", "7777", None):
        match = device_map.resolve(RadioFrame("im920", sender, tag_payload, -60))
        assert match is not None
        assert match.device.device_id == "tag-0001"
    gauge_frame = RadioFrame("im920", "0201", b"\x00\x64\x50\x00", -60)
    match = device_map.resolve(gauge_frame)
    assert match is not None
    assert match.device.device_id == "wl-0001"
    assert device_map.resolve(RadioFrame("im920", "0202", b"\x00\x64\x50\x00", -60)) is None


# --- configuration ------------------------------------------------------------------------------------------------


def test_config_defaults() -> None:
    for module, baud in (("im920", 19_200), ("es920lr", 115_200), ("rak3172", 115_200)):
        config = parse_lpwa_config({"port": "/dev/ttyUSB0", "module": module})
        assert config.effective_baudrate == baud
        assert config.name == "lpwa"
    rak = parse_lpwa_config({"port": "/dev/ttyUSB0", "module": "rak3172", "radio": {"frequency_hz": 923_200_000}})
    assert rak.p2p_radio is not None
    assert rak.p2p_radio.at_command() == "AT+P2P=923200000:7:125:0:8:13"
    assert parse_lpwa_config({"port": "/dev/ttyUSB0", "module": "im920", "baudrate": 115_200}).effective_baudrate == (
        115_200
    )


_BASE = {"port": "/dev/ttyUSB0", "module": "im920"}
_TAG = {"id": "tag-0001", "sender": "A1B20001", "profile": "watch-tag-v1"}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"module": "im920"}, "lpwa.port: required key is missing"),
        ({**_BASE, "module": "lora"}, "lpwa.module"),
        ({**_BASE, "speed": 9600}, "lpwa.speed: unknown key"),
        ({**_BASE, "baudrate": 12345}, "lpwa.baudrate: 12345 is not a module UART speed"),
        ({**_BASE, "radio": {}}, "apply only to module rak3172: remove the radio section"),
        ({**_BASE, "module": "rak3172", "radio": {"frequency_hz": 868_000_000}}, "lpwa.radio.frequency_hz: 868000000"),
        ({**_BASE, "module": "rak3172", "radio": {"frequency_hz": 920_700_000}}, "not a 920 MHz channel centre"),
        ({**_BASE, "module": "rak3172", "radio": {"tx_power_dbm": 20}}, "lpwa.radio.tx_power_dbm"),
        ({**_BASE, "module": "rak3172", "radio": {"spreading_factor": 13}}, "lpwa.radio.spreading_factor"),
        ({**_BASE, "module": "rak3172", "radio": {"bandwidth_khz": 62}}, "lpwa.radio.bandwidth_khz"),
        ({**_BASE, "devices": [{**_TAG, "id": "Tag_1"}]}, "lpwa.devices[0].id: invalid id 'Tag_1'"),
        ({**_BASE, "devices": [{**_TAG, "sender": "xyz"}]}, "lpwa.devices[0].sender: 'xyz' is not a sender id"),
        ({**_BASE, "devices": [{**_TAG, "mac": "x"}]}, "lpwa.devices[0].mac: unknown key"),
        ({**_BASE, "devices": [{**_TAG, "profile": "nope"}]}, "devices[0].profile: unknown profile 'nope'"),
        ({**_BASE, "devices": [_TAG, {**_TAG, "sender": "1"}]}, "devices[1].id: tag-0001 is listed twice"),
        ({**_BASE, "devices": [_TAG, {**_TAG, "id": "tag-0002"}]}, "devices[1].sender: A1B20001 is already used"),
        (
            {**_BASE, "devices": [{"id": "wl-1", "sender": "00001", "profile": "water-level-v1"}]},
            "sender ids are 4 hex digits",
        ),
        (
            {**_BASE, "module": "rak3172", "devices": [{"id": "wl-1", "sender": "0001", "profile": "water-level-v1"}]},
            "carry no sender address",
        ),
        ({**_BASE, "reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_min_s is larger"),
        ({**_BASE, "profile_dir": "/nonexistent/profiles"}, "profile_dir: profile directory"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_lpwa_config(doc)
    assert message in str(info.value)


def test_config_accepts_padded_and_prefixed_senders() -> None:
    config = parse_lpwa_config(
        {
            **_BASE,
            "devices": [
                {"id": "tag-0001", "sender": "0xa1b20001", "profile": "watch-tag-v1"},
                {"id": "wl-0001", "sender": "201", "profile": "water-level-v1"},
            ],
        }
    )
    assert [device.sender for device in config.devices] == ["A1B20001", "201"]


def test_simulator_population_matches_gateway_config() -> None:
    for module in MODULE_NAMES:
        devices = default_population(module, tags=3, gauges=2, sos_probability=0.1)
        config = source_config(module, Path("/dev/null"), devices)
        assert [d.id for d in config.devices] == ["tag-0001", "tag-0002", "tag-0003", "wl-0001", "wl-0002"]
    gauge = SimWaterLevel("wl-0001", "0201", level_cm=399.5, drift_cm=0.0)
    assert gauge.profile == "water-level-v1"
    assert gauge.next_values(random.Random(0))["flood"] is False


def test_simulator_cli_prints_a_gateway_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "lpwa0"
    assert main(["--module", "es920lr", "--link", str(link), "--interval", "0.05", "--duration", "0.3"]) == 0
    out = capsys.readouterr().out
    section = tomllib.loads(out[out.index("[[sources.lpwa]]") : out.index("stopped:")])["sources"]["lpwa"][0]
    config = parse_lpwa_config(section)
    assert (config.port, config.module, len(config.devices)) == (str(link), "es920lr", 4)
    assert "frames sent" in out
    assert not link.exists()
