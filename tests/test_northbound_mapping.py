"""Registry data -> Smart Data Models entities: every emitted type validates against its schema (offline), the
NGSI-LD and NGSI v2 normalized forms have the specifications' shapes, URNs are valid and stable."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource

from cloud_agent.northbound.entities import Attr, Entity, Kind, iso_utc, to_key_values, to_ngsi_ld, to_ngsi_v2
from cloud_agent.northbound.mapping import (
    CONTEXTS,
    DEFAULT_LEVELS,
    Family,
    contexts_for,
    entities_for,
    family_of,
    map_readings,
    model_quantities,
    stage_of,
)
from cloud_agent.northbound.units import CEFACT, UnitError, convert, unit_code
from device_registry.lifecycle import State
from device_registry.models import Device, Gateway, Location, Presence, StoredReading
from kakehashi.wire import ClockQuality

MODELS = Path(__file__).resolve().parents[1] / "cloud_agent" / "northbound" / "datamodels"
REFS = {
    "https://smart-data-models.github.io/data-models/common-schema.json": "common-schema.json",
    "https://smart-data-models.github.io/dataModel.Device/device-schema.json": "device-schema.json",
    "https://smart-data-models.github.io/dataModel.Alert/alert-schema.json": "alert-schema.json",
    "https://smart-data-models.github.io/dataModel.Environment/Environment-schema.json": "Environment-schema.json",
    "https://smart-data-models.github.io/dataModel.Weather/weather-schema.json": "weather-schema.json",
}
T0 = 1_795_308_828.25
CREATED = datetime(2026, 4, 1, tzinfo=UTC)
URN = re.compile(r"^urn:ngsi-ld:[A-Za-z][A-Za-z0-9]*:[A-Za-z0-9()+,\-.:=@;$_!*'%/?#]+$")
LD_RESERVED = {"value", "object", "observedAt", "unitCode", "datasetId", "createdAt", "modifiedAt"}
"""NGSI-LD core terms that may not be used as attribute names."""
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")


@cache
def validator(entity_type: str) -> jsonschema.protocols.Validator:
    """A validator for the type's schema.json with every ``$ref`` resolved from ``_refs/`` (no network)."""
    resources = [
        (url, Resource.from_contents(json.loads((MODELS / "_refs" / name).read_text()))) for url, name in REFS.items()
    ]
    registry: Registry[Any] = Registry().with_resources(resources)
    schema = json.loads((MODELS / entity_type / "schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)  # type: ignore[call-arg]


def check_schema(entity: Entity) -> None:
    errors = sorted(validator(entity.type).iter_errors(to_key_values(entity)), key=str)
    assert not errors, f"{entity.id}: {[e.message for e in errors]}"


def check_ld(entity: Entity) -> None:
    """NGSI-LD normalized shape: id, type, @context; every attribute typed, with value/object, ISO UTC times."""
    doc = to_ngsi_ld(entity, contexts_for(entity.type))
    assert doc["id"] == entity.id
    assert doc["type"] == entity.type
    assert doc["@context"] == [CONTEXTS[entity.type], "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"]
    json.dumps(doc)
    for name, attr in doc.items():
        if name in ("id", "type", "@context"):
            continue
        assert name not in LD_RESERVED, name
        assert isinstance(attr, dict), name
        assert attr["type"] in ("Property", "GeoProperty", "Relationship"), name
        if attr["type"] == "Relationship":
            assert "object" in attr
            assert "value" not in attr
        else:
            assert "value" in attr
            assert "object" not in attr
        if attr["type"] == "GeoProperty":
            assert attr["value"]["type"] == "Point"
            assert len(attr["value"]["coordinates"]) == 2
        if "observedAt" in attr:
            assert ISO_Z.match(attr["observedAt"]), attr
        if isinstance(attr.get("value"), dict) and "@type" in attr["value"]:
            assert attr["value"]["@type"] == "DateTime"
            assert ISO_Z.match(attr["value"]["@value"])
        if "unitCode" in attr:
            assert attr["unitCode"] in CEFACT.values()
        if "clockQuality" in attr:
            assert attr["clockQuality"] == {"type": "Property", "value": attr["clockQuality"]["value"]}
            assert attr["clockQuality"]["value"] in ("unsynced", "estimated")


def check_v2(entity: Entity) -> None:
    """NGSI v2 normalized shape: each attribute {type, value, metadata?} with typed metadata."""
    doc = to_ngsi_v2(entity)
    json.dumps(doc)
    for name, attr in doc.items():
        if name in ("id", "type"):
            continue
        assert isinstance(attr, dict), name
        assert set(attr) <= {"type", "value", "metadata"}, name
        assert attr["type"] in ("Number", "Text", "Boolean", "DateTime", "geo:json", "StructuredValue", "Relationship")
        if attr["type"] == "DateTime":
            assert ISO_Z.match(attr["value"])
        for meta in attr.get("metadata", {}).values():
            assert set(meta) == {"type", "value"}


def check_all(entities: list[Entity]) -> None:
    ids = [e.id for e in entities]
    assert len(ids) == len(set(ids))
    for entity in entities:
        assert URN.match(entity.id), entity.id
        check_schema(entity)
        check_ld(entity)
        check_v2(entity)


def device(kind: str, profile: str | None, ident: str = "wl-0007", *, located: bool = True, **labels: str) -> Device:
    return Device(
        id=ident,
        organisation_id="kakogawa",
        kind=kind,
        profile=profile,
        state=State.ACTIVE,
        state_changed_at=CREATED,
        gateway_id="gw-kakogawa-0012",
        hardware_serial="SN-0001",
        owner="Kakogawa City River Section",
        location=Location(34.7565, 134.8414, "加古川 bridge") if located else Location(),
        labels=labels,
        consent=None,
        retention=None,
        created_at=CREATED,
        refused_readings=0,
    )


GATEWAY = Gateway(
    id="gw-kakogawa-0012",
    organisation_id="kakogawa",
    state=State.ACTIVE,
    state_changed_at=CREATED,
    hardware_serial="10000000abcdef01",
    owner=None,
    location=Location(34.75, 134.84),
    labels={"zone": "station-east"},
    created_at=CREATED,
    refused_readings=0,
)


def reading(
    quantity: str,
    value: float | str | bool | bytes,
    unit: str | None,
    *,
    at: float = T0,
    clock: ClockQuality = ClockQuality.SYNCED,
    ident: str = "wl-0007",
) -> StoredReading:
    return StoredReading(ident, quantity, value, unit, at, at + 0.5, clock, "gw-kakogawa-0012", 41)


def by_type(entities: list[Entity]) -> dict[str, Entity]:
    return {e.type: e for e in entities}


# --- table-driven: one row per device kind/profile --------------------------------------------------------------

SDM120 = [
    ("voltage", 101.2, "V"),
    ("current", 4.8, "A"),
    ("active_power", 480.0, "W"),
    ("apparent_power", 500.0, "VA"),
    ("reactive_power", 140.0, "var"),
    ("power_factor", 0.96, "/"),
    ("frequency", 60.0, "Hz"),
    ("import_energy", 123456.0, "Wh"),
    ("export_energy", 0.0, "Wh"),
    ("import_reactive_energy", 5000.0, "varh"),
    ("total_energy", 123456.0, "Wh"),
]
SDM630 = [
    *((f"voltage_l{n}", 100.0 + n, "V") for n in (1, 2, 3)),
    *((f"current_l{n}", 3.0 * n, "A") for n in (1, 2, 3)),
    *((f"active_power_l{n}", 300.0, "W") for n in (1, 2, 3)),
    *((f"apparent_power_l{n}", 310.0, "VA") for n in (1, 2, 3)),
    *((f"reactive_power_l{n}", -20.0, "var") for n in (1, 2, 3)),
    *((f"power_factor_l{n}", 0.97, "/") for n in (1, 2, 3)),
    ("total_active_power", 900.0, "W"),
    ("total_apparent_power", 930.0, "VA"),
    ("total_reactive_power", -60.0, "var"),
    ("total_power_factor", 0.97, "/"),
    ("frequency", 50.0, "Hz"),
    ("import_energy", 9_000_000.0, "Wh"),
    ("export_energy", 10.0, "Wh"),
    ("voltage_l1_l2", 202.0, "V"),
    ("voltage_l2_l3", 202.0, "V"),
    ("voltage_l3_l1", 202.0, "V"),
    ("neutral_current", 0.4, "A"),
    ("total_energy", 9_000_010.0, "Wh"),
]
WATER_METER = [
    ("flow_rate", 0.35, "l/s"),
    ("total_volume", 1234.567, "m3"),
    ("reverse_volume", 0.0, "m3"),
    ("water_temperature", 14.5, "Cel"),
    ("status", 0.0, None),
    ("battery_voltage", 3.6, "V"),
    ("valve_open", True, None),
    ("empty_pipe", False, None),
]
NODE = [
    ("level", 2.61, "m"),
    ("level.flags", 0.0, None),
    ("stage", 3.0, None),
    ("stage.from", 2.0, None),
    ("alarm", "rise:hanran_chui", None),
    ("battery", 3.9, "V"),
]
LPWA_GAUGE = [("level", 212.0, "cm"), ("battery", 87.0, "%"), ("rssi", -97.0, "dBm"), ("flood", False, None)]
LPWA_FLOOD = [("level", 362.0, "cm"), ("battery", 80.0, "%"), ("rssi", -99.0, "dBm"), ("flood", True, None)]
MODBUS_GAUGE = [("water_level", 0.8, "m"), ("status", 0.0, None), ("mode", 0.0, None), ("temperature", 16.0, "Cel")]
GENERIC = [("temperature", 21.5, "Cel"), ("humidity", 55.0, "%"), ("door", "open", None)]

CASES = [
    ("energy_meter", "sdm120", SDM120, {"Device", "ACMeasurement", "DeviceMeasurement"}),
    ("energy_meter", "sdm630", SDM630, {"Device", "ThreePhaseAcMeasurement", "DeviceMeasurement"}),
    ("water_meter", "water-meter", WATER_METER, {"Device", "WaterConsumptionObserved", "DeviceMeasurement"}),
    ("water_level", "khnode", NODE, {"Device", "WaterObserved", "FloodMonitoring", "DeviceMeasurement", "Alert"}),
    ("water_level", "water-level-v1", LPWA_GAUGE, {"Device", "WaterObserved", "FloodMonitoring", "DeviceMeasurement"}),
    (
        "water_level",
        "water-level-v1",
        LPWA_FLOOD,
        {"Device", "WaterObserved", "FloodMonitoring", "DeviceMeasurement", "Alert"},
    ),
    ("water_level", "water-level", MODBUS_GAUGE, {"Device", "WaterObserved", "FloodMonitoring", "DeviceMeasurement"}),
    ("node", "khnode", NODE, {"Device", "WaterObserved", "FloodMonitoring", "DeviceMeasurement", "Alert"}),
    ("air_sensor", None, GENERIC, {"Device", "DeviceMeasurement"}),
]


@pytest.mark.parametrize(
    ("kind", "profile", "rows", "types"), CASES, ids=[f"{c[0]}-{c[1]}-{n}" for n, c in enumerate(CASES)]
)
def test_every_kind_maps_to_schema_valid_entities(
    kind: str, profile: str | None, rows: list[tuple[str, Any, str | None]], types: set[str]
) -> None:
    dev = device(kind, profile)
    readings = [reading(q, v, u) for q, v, u in rows]
    mapped = map_readings(dev, readings, gateway=GATEWAY)
    assert mapped.refused == ()
    assert {e.type for e in mapped.entities} == types
    check_all(list(mapped.entities))
    assert entities_for(dev, readings, gateway=GATEWAY) == list(mapped.entities)


def test_single_phase_attributes_and_units() -> None:
    ac = by_type(entities_for(device("energy_meter", "sdm120"), [reading(q, v, u) for q, v, u in SDM120]))
    m = ac["ACMeasurement"].attrs
    assert ac["ACMeasurement"].id == "urn:ngsi-ld:ACMeasurement:wl-0007"
    assert m["phaseType"].value == "singlePhase"
    assert m["phaseVoltage"] == Attr({"L1": 101.2}, Kind.PROPERTY, T0, "VLT")
    assert m["totalActiveEnergyImport"].value == pytest.approx(123.456)
    assert m["totalActiveEnergyImport"].unit_code == "KWH"
    assert m["totalReactivePower"].value == pytest.approx(0.14)
    assert m["totalReactivePower"].unit_code == "KVR"
    assert m["totalReactiveEnergyImport"].unit_code == "K3"
    assert m["refDevice"] == Attr(["urn:ngsi-ld:Device:wl-0007"], Kind.RELATIONSHIP)
    assert ac["DeviceMeasurement"].id == "urn:ngsi-ld:DeviceMeasurement:wl-0007:total_energy"


def test_three_phase_groups_phases() -> None:
    three = by_type(entities_for(device("energy_meter", "sdm630"), [reading(q, v, u) for q, v, u in SDM630]))
    m = three["ThreePhaseAcMeasurement"].attrs
    assert m["phaseVoltage"].value == {"L1": 101.0, "L2": 102.0, "L3": 103.0}
    assert m["current"].value == {"L1": 3.0, "L2": 6.0, "L3": 9.0, "N": 0.4}
    assert m["phaseToPhaseVoltage"].value == {"L12": 202.0, "L23": 202.0, "L31": 202.0}
    assert m["totalActiveEnergyImport"].value == 9000.0


def test_water_meter_volume_in_litres() -> None:
    entities = entities_for(device("water_meter", "water-meter"), [reading(q, v, u) for q, v, u in WATER_METER])
    w = by_type(entities)["WaterConsumptionObserved"].attrs["waterConsumption"]
    assert w.value == 1234567
    assert isinstance(w.value, int)
    assert w.unit_code == "LTR"
    measured = {e.attrs["controlledProperty"].value for e in entities if e.type == "DeviceMeasurement"}
    assert "flow_rate" in measured
    assert "valve_open" in measured


def test_water_level_thresholds_from_twin_else_defaults() -> None:
    dev = device("water_level", "khnode")
    readings = [reading("level", 2.61, "m")]
    flood = by_type(entities_for(dev, readings))["FloodMonitoring"].attrs
    assert flood["standbyLevel"].value == DEFAULT_LEVELS["standby"]
    assert flood["dangerLevel"].value == 3.5
    assert flood["stage"].value == 3
    assert flood["floodLevelStatus"].value == "caution"
    twin = {"levels": {"observe": 1.2, "standby": 2.1, "caution": 2.7, "evacuate": 3.3, "danger": 3.8}}
    flood = by_type(entities_for(dev, readings, settings=twin))["FloodMonitoring"].attrs
    assert [flood[a].value for a in ("observationLevel", "standbyLevel", "alertLevel", "evacuationLevel")] == [
        1.2,
        2.1,
        2.7,
        3.3,
    ]
    assert flood["dangerLevel"].value == 3.8
    assert flood["stage"].value == 2
    assert flood["currentLevel"] == Attr(2.61, Kind.PROPERTY, T0, "MTR")


def test_reported_stage_wins_over_computed() -> None:
    dev = device("water_level", "khnode")
    flood = by_type(entities_for(dev, [reading("level", 2.61, "m"), reading("stage", 3, None)]))["FloodMonitoring"]
    assert flood.attrs["stage"].value == 3
    assert flood.attrs["floodLevelStatus"].value == "caution"


def test_lpwa_centimetres_become_metres_and_device_health() -> None:
    entities = by_type(
        entities_for(device("water_level", "water-level-v1"), [reading(q, v, u) for q, v, u in LPWA_GAUGE])
    )
    assert entities["WaterObserved"].attrs["height"].value == pytest.approx(2.12)
    dev = entities["Device"].attrs
    assert dev["batteryLevel"].value == pytest.approx(0.87)
    assert dev["rssi"].unit_code == "DBM"
    assert dev["controlledProperty"].value == ["waterLevel"]


def test_device_entity_fields() -> None:
    dev = device("water_level", "khnode")
    out = by_type(entities_for(dev, [reading("level", 1.0, "m")], settings={"firmware_version": "1.4.2"}))["Device"]
    assert out.id == "urn:ngsi-ld:Device:wl-0007"
    a = out.attrs
    assert a["deviceState"].value == "active"
    assert a["serialNumber"].value == "SN-0001"
    assert a["firmwareVersion"].value == "1.4.2"
    assert a["owner"].value == ["urn:ngsi-ld:Organisation:kakogawa"]
    assert a["location"] == Attr({"type": "Point", "coordinates": [134.8414, 34.7565]}, Kind.GEO_PROPERTY)
    assert a["dateLastValueReported"].value == datetime.fromtimestamp(T0 + 0.5, UTC)
    assert "Kakogawa City River Section" not in json.dumps(to_ngsi_ld(out, contexts_for("Device")))


def test_gateway_device_entity_with_presence() -> None:
    presence = Presence("gw-kakogawa-0012", True, T0 - 60, T0, "heartbeat")
    entities = entities_for(GATEWAY, [], presence)
    check_all(entities)
    (gw,) = entities
    assert gw.id == "urn:ngsi-ld:Device:gw-kakogawa-0012"
    assert gw.attrs["online"] == Attr(True, Kind.PROPERTY, T0 - 60)
    assert gw.attrs["deviceCategory"].value == ["network"]
    assert family_of(GATEWAY) is Family.GATEWAY


def test_unsynced_clock_is_marked_not_dropped() -> None:
    dev = device("water_level", "khnode")
    readings = [reading("level", 2.0, "m", clock=ClockQuality.UNSYNCED), reading("battery", 3.7, "V")]
    entities = by_type(entities_for(dev, readings))
    height = to_ngsi_ld(entities["WaterObserved"], contexts_for("WaterObserved"))["height"]
    assert height["clockQuality"] == {"type": "Property", "value": "unsynced"}
    assert height["observedAt"] == iso_utc(T0)
    v2 = to_ngsi_v2(entities["WaterObserved"])["height"]
    assert v2["metadata"]["clockQuality"] == {"type": "Text", "value": "unsynced"}
    battery = to_ngsi_ld(entities["DeviceMeasurement"], contexts_for("DeviceMeasurement"))["numValue"]
    assert "clockQuality" not in battery


def test_without_location_water_observed_and_ac_measurement_are_refused_with_reason() -> None:
    dev = device("water_level", "khnode", located=False)
    mapped = map_readings(dev, [reading("level", 2.0, "m")])
    assert {e.type for e in mapped.entities} == {"Device", "FloodMonitoring"}
    assert "location" in mapped.refused[0].reason
    meter = device("energy_meter", "sdm120", located=False)
    mapped = map_readings(meter, [reading("voltage", 100.0, "V")])
    assert {e.type for e in mapped.entities} == {"Device", "DeviceMeasurement"}
    check_all(list(mapped.entities))
    # with the gateway's location the measurement is complete
    assert "ACMeasurement" in {e.type for e in entities_for(meter, [reading("voltage", 100.0, "V")], gateway=GATEWAY)}


def test_watch_tags_never_map_here() -> None:
    tag = device("watch_tag", None, "tag-0001")
    mapped = map_readings(tag, [reading("rssi", -70.0, "dBm", ident="tag-0001")])
    assert mapped.entities == ()
    assert mapped.refused[0].reason.startswith("watch tag")


def test_newest_sample_of_a_quantity_wins() -> None:
    dev = device("air_sensor", None)
    out = entities_for(dev, [reading("temperature", 20.0, "Cel", at=T0 + 10), reading("temperature", 19.0, "Cel")])
    (m,) = [e for e in out if e.type == "DeviceMeasurement"]
    assert m.attrs["numValue"].value == 20.0


def test_serialisers_match_the_upstream_example_shapes() -> None:
    upstream_ld = json.loads((MODELS / "WaterObserved" / "example-normalized.jsonld").read_text())
    upstream_v2 = json.loads((MODELS / "WaterObserved" / "example-normalized.json").read_text())
    ours = by_type(entities_for(device("water_level", "khnode"), [reading("level", 2.0, "m")]))["WaterObserved"]
    ld, v2 = to_ngsi_ld(ours, contexts_for("WaterObserved")), to_ngsi_v2(ours)
    for key in ("height", "location"):
        assert ld[key]["type"] == upstream_ld[key]["type"]
        assert v2[key]["type"] == upstream_v2[key]["type"]
        assert type(ld[key]["value"]) is type(upstream_ld[key]["value"])
    assert v2["dateObserved"]["type"] == upstream_v2["dateObserved"]["type"] == "DateTime"


def test_unit_table() -> None:
    assert [unit_code(u) for u in ("m", "V", "A", "W", "kWh", "l/s", "m3", "Cel", "dBm", "%")] == [
        "MTR",
        "VLT",
        "AMP",
        "WTT",
        "KWH",
        "G51",
        "MTQ",
        "CEL",
        "DBM",
        "P1",
    ]
    assert unit_code("furlong") is None
    assert unit_code(None) is None
    assert convert(250.0, "cm", "m") == 2.5
    with pytest.raises(UnitError):
        convert(1.0, "V", "m")


def test_upstream_key_value_examples_validate_with_our_validator() -> None:
    for entity_type in CONTEXTS:
        example = json.loads((MODELS / entity_type / "example.json").read_text())
        if entity_type == "Device":
            example.pop("ipAddress")  # the upstream oneOf quirk (README)
        assert not list(validator(entity_type).iter_errors(example)), entity_type


def test_stage_of() -> None:
    assert [stage_of(x, DEFAULT_LEVELS) for x in (0.0, 1.0, 2.0, 2.5, 3.0, 3.5, 9.0)] == [0, 1, 2, 3, 4, 5, 5]


# --- properties ----------------------------------------------------------------------------------------------------

QUANTITIES = sorted(
    {q for rows in (SDM120, SDM630, WATER_METER, NODE, LPWA_GAUGE, MODBUS_GAUGE, GENERIC) for q, _, _ in rows}
)
UNITS = [None, *CEFACT, "var", "varh", "furlong"]
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.booleans(),
    st.text(max_size=20),
    st.binary(max_size=4),
)
ids = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    kind_profile=st.sampled_from([(c[0], c[1]) for c in CASES]),
    ident=ids,
    rows=st.lists(
        st.tuples(
            st.sampled_from([*QUANTITIES, "x.y_z-1"]), values, st.sampled_from(UNITS), st.sampled_from(ClockQuality)
        ),
        max_size=12,
    ),
    located=st.booleans(),
)
def test_any_readings_map_to_valid_entities_or_are_refused(
    kind_profile: tuple[str, str | None],
    ident: str,
    rows: list[tuple[str, Any, str | None, ClockQuality]],
    located: bool,
) -> None:
    dev = device(kind_profile[0], kind_profile[1], ident, located=located)
    readings = [reading(q, v, u, at=T0 + i, clock=c, ident=ident) for i, (q, v, u, c) in enumerate(rows)]
    mapped = map_readings(dev, readings)
    check_all(list(mapped.entities))
    # every quantity reached an entity (a model entity's attribute or a DeviceMeasurement) or was refused with a reason
    measured = {e.attrs["controlledProperty"].value for e in mapped.entities if e.type == "DeviceMeasurement"}
    refused = {r.quantity for r in mapped.refused}
    assert all(r.reason for r in mapped.refused)
    model = model_quantities(family_of(dev))
    for quantity, _, unit, _ in rows:
        in_model = quantity in model or (quantity == "battery" and unit == "%")
        assert quantity in measured or quantity in refused or in_model, quantity
    if located or family_of(dev) is not Family.SINGLE_PHASE:  # unlocated AC readings fall back to DeviceMeasurement
        assert not measured & model
    assert map_readings(dev, readings) == mapped  # deterministic: same input, same ids and attributes


@settings(max_examples=100, deadline=None)
@given(ident=ids, quantity=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9./_-]{0,30}", fullmatch=True))
def test_urns_are_valid_stable_and_from_ids_only(ident: str, quantity: str) -> None:
    dev = device("air_sensor", None, ident)
    first = entities_for(dev, [reading(quantity, 1.0, None, ident=ident)])
    again = entities_for(dev, [reading(quantity, 2.0, None, at=T0 + 3600, ident=ident)])
    # an Alert (a set `flood` flag) is an event: its id holds its time; every other id is the same each time
    assert [e.id for e in first if e.type != "Alert"] == [e.id for e in again if e.type != "Alert"]
    for entity in first:
        assert URN.match(entity.id)
        assert entity.id.startswith(f"urn:ngsi-ld:{entity.type}:{ident}")
        assert "Kakogawa" not in entity.id


def test_mapping_is_fast() -> None:
    dev = device("energy_meter", "sdm630")
    readings = [reading(q, v, u) for q, v, u in SDM630]
    start = datetime.now(UTC)
    for _ in range(2000):
        entities_for(dev, readings, gateway=GATEWAY)
    assert datetime.now(UTC) - start < timedelta(seconds=5)


def test_contexts_cover_every_type() -> None:
    for entity_type, url in CONTEXTS.items():
        subject = url.split("/")[-3]
        assert (MODELS / "_contexts" / f"{subject}.context.jsonld").exists(), entity_type


def test_key_values_of_a_mapping_are_plain_json() -> None:
    entities = entities_for(device("water_level", "khnode"), [reading(q, v, u) for q, v, u in NODE])
    for entity in entities:
        doc: Mapping[str, object] = to_key_values(entity)
        assert json.loads(json.dumps(doc)) == doc


def test_readings_of_another_device_are_refused() -> None:
    mapped = map_readings(device("air_sensor", None), [reading("temperature", 20.0, "Cel", ident="other-0001")])
    assert [e.type for e in mapped.entities] == ["Device"]
    assert mapped.refused[0].reason == "not a reading of wl-0007"


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.timezones()))
def test_iso_utc_of_a_datetime_is_its_utc_instant_with_milliseconds(t: datetime) -> None:
    utc = t.astimezone(UTC)
    expected = utc.replace(tzinfo=None).isoformat(timespec="milliseconds" if utc.microsecond else "seconds") + "Z"
    assert iso_utc(t) == expected
    assert iso_utc(utc) == iso_utc(t) == expected  # the cache answers equal instants alike
