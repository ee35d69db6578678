"""The BLE source through the real ``BleakScanner`` and the simulated backend: aggregation, privacy, watchdog,
adapter failures, scanning modes; plus the aggregator's arithmetic driven directly with bleak objects."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator, Sequence

import pytest
from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from pydantic import ValidationError

from gateway.model import Priority, Reading
from gateway.sources.base import SourceHealth
from gateway.sources.ble import BleSource, BleSourceConfig, RegisteredTag, build_ble_source
from gateway.sources.ble_aggregate import BleAggregator
from gateway.sources.ble_bench import measure_ble_throughput_async
from gateway.sources.ble_scanner import passive_patterns
from hw.ble import formats
from hw.ble.decoders import EddystoneTlm, EddystoneUid, IBeacon
from hw.ble.frames import MALFORMED, AdvFields, bthome_payload, fields_of
from hw.ble.population import SimulatedTag, bthome_sensor, eddystone_tag, ibeacon_tag, noise_device, population
from hw.ble.simulator import SimulatedAir, SimulatedScannerBackend, attach_air, detach_air, matches_patterns
from kakehashi.errors import ConfigError

BACKEND = "hw.ble.simulator:SimulatedScannerBackend"
FAST = {"interval_s": 0.02, "rotate_s": 0.1}
_ADAPTERS = itertools.count()


class ListSink:
    def __init__(self) -> None:
        self.batches: list[list[Reading]] = []

    async def submit(self, readings: Sequence[Reading]) -> None:
        self.batches.append(list(readings))

    @property
    def readings(self) -> list[Reading]:
        return [r for batch in self.batches for r in batch]


@pytest.fixture
def adapter() -> Iterator[str]:
    name = f"sim{next(_ADAPTERS)}"
    yield name
    detach_air(name)


def registered(tags: Sequence[SimulatedTag], consent: bool = True) -> tuple[RegisteredTag, ...]:
    return tuple(RegisteredTag(id=f"tag-{i:04d}", key=str(t.key), consent=consent) for i, t in enumerate(tags))


def make_source(adapter: str, tags: Sequence[RegisteredTag] = (), **overrides: object) -> BleSource:
    settings: dict[str, object] = {
        "adapter": adapter,
        "window_s": 0.2,
        "watchdog_s": 5,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.1,
        "backend": BACKEND,
        "tags": tags,
    }
    source = build_ble_source(BleSourceConfig.model_validate(settings | overrides))
    assert isinstance(source, BleSource)
    return source


async def run_for(
    source: BleSource, seconds: float, health: SourceHealth | None = None
) -> tuple[ListSink, SourceHealth]:
    sink, health = ListSink(), health or SourceHealth(source.name)
    task = asyncio.create_task(source.run(sink, health))
    await asyncio.sleep(seconds)
    assert not task.done(), "the source must never return or crash on its own"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return sink, health


def by_quantity(readings: Sequence[Reading], device: str, quantity: str) -> list[Reading]:
    return [r for r in readings if r.device_id == device and r.quantity == quantity]


# --------------------------------------------------------------------------------------------- aggregation & privacy
async def test_registered_tags_one_detection_per_window_despite_rotating_addresses(adapter):
    tags = population(5, **FAST)
    air = attach_air(adapter, SimulatedAir(tags))
    source = make_source(adapter, registered(tags))
    addresses: set[str] = set()
    callback = source.opener.callback

    def spy(device: BLEDevice, adv: AdvertisementData) -> None:
        addresses.add(device.address)
        callback(device, adv)

    source.opener.callback = spy
    sink, health = await run_for(source, 0.75)

    assert len(addresses) > 2 * len(tags), "addresses rotate"
    assert len(sink.batches) >= 2
    for batch in sink.batches:
        seen = [r for r in batch if r.quantity == "seen"]
        assert len(seen) == len({r.device_id for r in seen}), "one detection per tag per window"
        assert all(r.priority is Priority.EVENT and r.unit == "count" and r.value > 1 for r in seen)
    assert {r.device_id for r in sink.readings} == {f"tag-{i:04d}" for i in range(5)}
    assert health.state == "ok"
    assert health.readings == len(sink.readings)
    assert health.detail["scanning_mode"] == "passive"
    assert health.detail["advertisements_per_s"] > 0
    assert air.callback_errors == 0


async def test_detection_readings_carry_rssi_tx_power_and_last_seen(adapter):
    tag = ibeacon_tag("t", "fda50693-a4e2-4fb1-afcf-c6eb07647825", 1, 2, rssi=-70, rssi_noise=3, **FAST)
    attach_air(adapter, SimulatedAir([tag]))
    sink, _ = await run_for(make_source(adapter, registered([tag])), 0.5)
    batch = sink.batches[0]
    values = {r.quantity: r for r in batch}
    assert set(values) == {"seen", "first_seen", "rssi_min", "rssi_mean", "rssi_max", "rssi_1m"}
    assert values["rssi_min"].value <= values["rssi_mean"].value <= values["rssi_max"].value
    assert values["rssi_1m"].value == -59
    assert values["first_seen"].value <= values["seen"].observed_at
    assert len({r.observed_at for r in batch}) == 1, "observed at last_seen"


async def test_unknown_tags_are_counted_never_forwarded_or_logged(adapter, caplog):
    tags = population(3, strangers=20, noise=5, seed=3, **FAST)
    attach_air(adapter, SimulatedAir(tags))
    caplog.set_level(logging.DEBUG)
    source = make_source(adapter, registered(tags[:3]), scanning_mode="active")
    sink, health = await run_for(source, 0.5)

    assert {r.device_id for r in sink.readings} == {"tag-0000", "tag-0001", "tag-0002"}
    assert health.detail["unknown_tags_dropped"] > 0
    assert health.detail["other_advertisements"] > 0
    stranger_keys = [str(t.key) for t in tags[3:23]]
    logged = caplog.text + repr(health.to_json())
    assert not any(key.split(":", 1)[1] in logged for key in stranger_keys)


async def test_tags_without_consent_are_dropped(adapter):
    tags = population(4, **FAST)
    attach_air(adapter, SimulatedAir(tags))
    config = registered(tags[:2]) + tuple(
        RegisteredTag(id=f"tag-x{i}", key=str(t.key), consent=False) for i, t in enumerate(tags[2:])
    )
    sink, health = await run_for(make_source(adapter, config), 0.5)
    assert {r.device_id for r in sink.readings} == {"tag-0000", "tag-0001"}
    assert health.detail["no_consent_dropped"] > 0


async def test_malformed_frames_are_counted_and_good_frames_still_aggregated(adapter):
    tags = population(2, malformed=len(MALFORMED), **FAST)
    air = attach_air(adapter, SimulatedAir(tags))
    for _, fields in MALFORMED:
        air.inject(fields, count=3)
    sink, health = await run_for(make_source(adapter, registered(tags[:2]), scanning_mode="active"), 0.5)
    assert health.detail["malformed_frames"] >= 3 * len(MALFORMED)
    assert {r.device_id for r in sink.readings} == {"tag-0000", "tag-0001"}
    assert air.callback_errors == 0


async def test_bthome_values_battery_and_button_events(adapter):
    sensor = bthome_sensor("s", "KK-0001", {0x01: 87, 0x02: 21.5, 0x03: 40.25}, button_every=3, **FAST)
    fixed = bthome_sensor("f", "WL-BOX", {0x0C: 3.01}, fixed_address="c4:7c:8d:6a:3e:01", interval_s=0.02)
    eddy = eddystone_tag(
        "e", bytes(10), b"\x00\x00\x00\x00\x00\x01", battery_mv=2950, temperature=None, tlm_every=2, **FAST
    )
    attach_air(adapter, SimulatedAir([sensor, fixed, eddy]))
    sink, _ = await run_for(make_source(adapter, registered([sensor, fixed, eddy])), 0.5)
    readings = sink.readings

    temperature = by_quantity(readings, "tag-0000", "temperature")[0]
    assert (temperature.value, temperature.unit, temperature.priority) == (21.5, "Cel", Priority.TELEMETRY)
    assert by_quantity(readings, "tag-0000", "battery")[0].unit == "%EL"
    assert by_quantity(readings, "tag-0000", "humidity")[0].value == 40.25
    buttons = by_quantity(readings, "tag-0000", "button")
    assert buttons
    assert all(b.value == "press" and b.priority is Priority.EVENT for b in buttons)
    assert by_quantity(readings, "tag-0001", "voltage")[0].value == 3.01, "fixed-address sensor keyed by address"
    voltage = by_quantity(readings, "tag-0002", "battery_voltage")[0]
    assert (voltage.value, voltage.unit) == (2.95, "V")
    assert by_quantity(readings, "tag-0002", "tx_power")[0].value == -20
    assert not by_quantity(readings, "tag-0002", "temperature"), "TLM without temperature support"


# ----------------------------------------------------------------------------------------------- watchdog & adapter
async def test_watchdog_restarts_a_quiet_scanner(adapter):
    tags = population(2, **FAST)
    air = attach_air(adapter, SimulatedAir(tags))
    source = make_source(adapter, registered(tags), watchdog_s=0.2)
    sink, health = ListSink(), SourceHealth(source.name)
    task = asyncio.create_task(source.run(sink, health))
    await asyncio.sleep(0.3)
    air.stall(recover_on_restart=True)
    await asyncio.sleep(0.2)
    heard_before = len(sink.readings)
    await asyncio.sleep(0.6)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert health.errors["stall"] >= 1
    assert "no advertisement for 0.2 s" in str(health.last_error)
    assert health.detail["restarts"] >= 1
    assert air.starts >= 2
    assert air.stops >= 1
    assert len(sink.readings) > heard_before, "readings resume after the restart"
    assert health.state == "ok"


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(2, "No such file or directory"),
        BleakError("adapter 'hci9' not found"),
        OSError(19, "No device"),
    ],
    ids=["no-bluez", "no-adapter", "os-error"],
)
async def test_missing_adapter_fails_clearly_and_retries(adapter, error):
    tags = population(1, **FAST)
    air = attach_air(adapter, SimulatedAir(tags))
    air.fail_start(error, times=None)
    source = make_source(adapter, registered(tags))
    sink, health = ListSink(), SourceHealth(source.name)
    task = asyncio.create_task(source.run(sink, health))
    await asyncio.sleep(0.4)

    assert not task.done()
    assert health.state == "failed"
    assert health.errors["adapter"] >= 3, "retried with backoff"
    assert health.last_error is not None
    assert health.last_error.startswith(f"no Bluetooth adapter {adapter}: check `bluetoothctl list`")
    assert health.detail["scanning_mode"] is None

    air.heal()
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert health.state == "ok"
    assert sink.readings, "recovers once the adapter is back"


async def test_no_simulated_adapter_at_all(adapter):
    sink, health = await run_for(make_source(adapter), 0.2)
    assert health.state == "failed"
    assert "not found" in str(health.last_error)
    assert not sink.batches


async def test_platform_backend_without_bluez_does_not_crash():
    source = build_ble_source(BleSourceConfig(adapter="hci7", retry_initial_s=0.05, retry_max_s=0.05))
    assert isinstance(source, BleSource)
    _, health = await run_for(source, 0.3)
    assert health.state == "failed"
    assert health.errors["adapter"] >= 1


# ---------------------------------------------------------------------------------------------------- scanning mode
@pytest.mark.parametrize(
    ("mode", "passive_supported", "expected"),
    [("auto", True, "passive"), ("auto", False, "active"), ("active", True, "active"), ("passive", True, "passive")],
)
async def test_scanning_mode_selection(adapter, mode, passive_supported, expected):
    tags = population(1, **FAST)
    air = attach_air(adapter, SimulatedAir(tags, passive_supported=passive_supported))
    sink, health = await run_for(make_source(adapter, registered(tags), scanning_mode=mode), 0.3)
    assert health.detail["scanning_mode"] == expected
    assert air.modes == [expected]
    assert sink.readings


async def test_auto_remembers_that_passive_is_unavailable(adapter):
    tags = population(1, **FAST)
    air = attach_air(adapter, SimulatedAir(tags, passive_supported=False))
    source = make_source(adapter, registered(tags), watchdog_s=0.1)
    sink, health = ListSink(), SourceHealth(source.name)
    task = asyncio.create_task(source.run(sink, health))
    await asyncio.sleep(0.15)
    air.stall()
    await asyncio.sleep(0.4)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert source.opener.passive_unavailable
    assert source.opener.modes() == ["active"]
    assert len(air.modes) >= 2
    assert set(air.modes) == {"active"}


async def test_passive_required_but_unsupported_fails_with_a_hint(adapter):
    attach_air(adapter, SimulatedAir(population(1, **FAST), passive_supported=False))
    _, health = await run_for(make_source(adapter, scanning_mode="passive"), 0.2)
    assert health.state == "failed"
    assert "--experimental" in str(health.last_error)


async def test_passive_scan_hears_only_beacon_formats(adapter):
    tags = population(2, noise=4, **FAST)
    attach_air(adapter, SimulatedAir(tags))
    _, passive = await run_for(make_source(adapter, registered(tags[:2]), scanning_mode="passive"), 0.3)
    _, active = await run_for(make_source(adapter, registered(tags[:2]), scanning_mode="active"), 0.3)
    assert passive.detail["other_advertisements"] == 0
    assert active.detail["other_advertisements"] > 0


def test_passive_patterns_match_every_format_and_nothing_else():
    patterns = passive_patterns()
    beacons = [
        IBeacon("fda50693-a4e2-4fb1-afcf-c6eb07647825", 1, 2, -59),
        EddystoneUid(bytes(10), bytes(6), -20),
        EddystoneTlm(3000, None, 1, 1),
    ]
    for beacon in beacons:
        assert matches_patterns(fields_of(beacon), patterns)
    assert matches_patterns(AdvFields(manufacturer_data={0x0118: b"\xbe\xac" + bytes(22)}), patterns)
    assert matches_patterns(AdvFields(service_data={formats.BTHOME_UUID: b"\x40"}), patterns)
    for noise in range(4):
        assert not matches_patterns(noise_device("n", noise).frame(0, 0), patterns)


async def test_simulated_backend_through_bleak_public_api():
    air = SimulatedAir(population(2, noise=1, **FAST))
    heard: list[tuple[BLEDevice, AdvertisementData]] = []
    scanner = BleakScanner(lambda d, a: heard.append((d, a)), backend=SimulatedScannerBackend, air=air)
    async with scanner:
        await asyncio.sleep(0.15)
    assert scanner.backend_id == "SimulatedScannerBackend"
    assert heard
    assert all(isinstance(d, BLEDevice) and isinstance(a, AdvertisementData) for d, a in heard)
    assert scanner.discovered_devices
    with pytest.raises(BleakError, match="or_patterns"):
        BleakScanner(lambda d, a: None, scanning_mode="passive", backend=SimulatedScannerBackend, air=air)


# ------------------------------------------------------------------------------------------- aggregator arithmetic
def _adv(fields: AdvFields, rssi: int, local_name: str | None = None) -> AdvertisementData:
    return AdvertisementData(
        local_name, fields.manufacturer_data, fields.service_data, fields.service_uuids, fields.tx_power, rssi, ()
    )


def test_aggregator_window_arithmetic_pairing_and_dedup():
    clock = iter(range(100, 200)).__next__
    beacon = IBeacon("fda50693-a4e2-4fb1-afcf-c6eb07647825", 1, 2, -59)
    uid = EddystoneUid(bytes(10), b"\x00" * 5 + b"\x07", -21)
    tags = (
        RegisteredTag(id="child-1", key=beacon.key, consent=True),
        RegisteredTag(id="child-1", key=uid.key, consent=True),
        RegisteredTag(id="sensor-1", key="bthome:name:KK-9", consent=True),
    )
    agg = BleAggregator(tags, clock=lambda: float(clock()))
    a, b = BLEDevice("4A:00:00:00:00:01", None, None), BLEDevice("4A:00:00:00:00:02", None, None)
    for rssi in (-60, -70, -80):
        agg.on_advertisement(a, _adv(fields_of(beacon), rssi))
    merged = AdvFields(fields_of(beacon).manufacturer_data, fields_of(uid).service_data)
    agg.on_advertisement(b, _adv(merged, -50))  # one sender, two formats: one sighting
    agg.on_advertisement(b, _adv(fields_of(EddystoneTlm(2900, 20.5, 9, 9)), -55))  # paired by address
    agg.on_advertisement(BLEDevice("4A:00:00:00:00:03", None, None), _adv(fields_of(EddystoneTlm(1, None, 1, 1)), -55))
    sensor = AdvFields(service_data={formats.BTHOME_UUID: bthome_payload([(0x00, 5), (0x3A, "press"), (0x02, 20.0)])})
    for _ in range(3):  # one packet repeated three times: one button press
        agg.on_advertisement(a, _adv(sensor, -65, "KK-9"))

    readings = agg.flush()
    child = {r.quantity: r.value for r in readings if r.device_id == "child-1"}
    assert child["seen"] == 5
    assert (child["rssi_min"], child["rssi_max"], child["rssi_mean"]) == (-80, -50, -63.0)
    assert child["first_seen"] == 100.0
    assert child["battery_voltage"] == 2.9
    assert child["temperature"] == 20.5
    assert child["tx_power"] == -21
    assert [r.value for r in readings if r.quantity == "button"] == ["press"]
    assert agg.counters.unattributed == 1
    assert agg.flush() == [], "a new window starts empty"


def test_config_validation():
    good = {"id": "tag-0001", "key": "ibeacon:fda50693-a4e2-4fb1-afcf-c6eb07647825:1:2", "consent": True}
    assert BleSourceConfig.model_validate({"tags": [good]}).tags[0].key == good["key"]
    assert BleSourceConfig().window_s == 10
    assert BleSourceConfig().watchdog_s == 60
    assert BleSourceConfig().scanning_mode == "auto"
    bad = [
        {"tags": [good | {"id": "Tag_1"}]},
        {"tags": [good | {"key": "aa:bb:cc:dd:ee:ff"}]},
        {"tags": [{"id": "tag-1", "key": good["key"]}]},  # consent must be recorded
        {"tags": [good, good | {"id": "tag-0002"}]},
        {"tags": [good, good | {"key": "bthome:name:X", "consent": False}]},
        {"scanning_mode": "aggressive"},
        {"adapter": "hci0; rm -rf /"},
        {"window_s": 0},
        {"backend": "not a path"},
        {"colour": "blue"},
    ]
    for settings in bad:
        with pytest.raises(ValidationError):
            BleSourceConfig.model_validate(settings)
    with pytest.raises(ConfigError, match="cannot be loaded"):
        build_ble_source(BleSourceConfig(backend="hw.ble.simulator:Nope"))
    with pytest.raises(ConfigError, match="not a bleak scanner backend"):
        build_ble_source(BleSourceConfig(backend="hw.ble.simulator:SimulatedAir"))


async def test_throughput_benchmark_runs():
    result = await measure_ble_throughput_async(0.3, registered=20, strangers=40, noise=10, malformed=5)
    assert result["advertisements_per_s"] > 0
    assert result["readings"] > 0
    assert result["callback_errors"] == 0


async def test_name_only_in_scan_response_needs_active_scanning(adapter):
    sensor = bthome_sensor("s", "KK-0002", {0x02: 19.0}, name_in_scan_response=True, **FAST)
    attach_air(adapter, SimulatedAir([sensor]))
    passive_sink, passive = await run_for(make_source(adapter, registered([sensor]), scanning_mode="passive"), 0.3)
    active_sink, _ = await run_for(make_source(adapter, registered([sensor]), scanning_mode="active"), 0.3)
    assert not passive_sink.readings
    assert passive.detail["unattributed_frames"] > 0
    assert by_quantity(active_sink.readings, "tag-0000", "temperature")
