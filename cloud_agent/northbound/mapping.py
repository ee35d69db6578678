"""Registry data to Smart Data Models entities: the table that says which reading becomes which attribute.

:func:`entities_for` takes one gateway or device, the readings of one stored message (or the latest value of each
quantity) and returns the entities to upsert; :func:`map_readings` does the same and also says which readings it
refused and why. Everything is decided by dictionary look-ups in tables built at import time (this runs for every
stored readings message): no schema is read at run time; the tests validate every emitted type against its schema.

What goes where (see ``docs/northbound.md`` for the full table):

* every gateway and device -> ``Device`` (state, battery, RSSI, firmware, last seen, location, owner, serial);
* water levels (kind ``water_level`` or a water-level profile) -> ``WaterObserved`` (``height``) and
  ``FloodMonitoring`` (current level, stage and the Japanese threshold levels);
* water meters -> ``WaterConsumptionObserved``; energy meters -> ``ACMeasurement`` (single phase) or
  ``ThreePhaseAcMeasurement``;
* any other reading -> one ``DeviceMeasurement`` per device and quantity (the latest value);
* alarm readings (a node's ``alarm`` code, a gauge's ``flood`` flag) -> also an ``Alert`` each
  (:mod:`cloud_agent.northbound.alerts`; only messages holding such a quantity are looked at);
* watch tags -> nothing here: their sightings go through :mod:`cloud_agent.northbound.privacy`, their SOS through
  :func:`cloud_agent.northbound.alerts.tag_alerts`.

Entity ids (stable, built only from registry ids, which are not personal data; a watch tag's id never appears)::

    urn:ngsi-ld:Device:<gateway or device id>
    urn:ngsi-ld:<measurement type>:<device id>          (WaterObserved, FloodMonitoring, WaterConsumptionObserved,
                                                         ACMeasurement, ThreePhaseAcMeasurement)
    urn:ngsi-ld:DeviceMeasurement:<device id>:<quantity>
    urn:ngsi-ld:Alert:<device id>:<quantity>:<observed epoch ms>   (one per alarm: a re-send is the same upsert)
    urn:ngsi-ld:Organisation:<organisation id>          (the owner of a Device)

Every measured attribute carries ``observedAt`` = the reading's observed time; a reading whose clock is not
``synced`` is still sent, with ``clockQuality`` (``unsynced`` / ``estimated``) on the attribute.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cloud_agent.northbound.alerts import ALARM_QUANTITIES, device_alerts
from cloud_agent.northbound.entities import JSON, Attr, AttrValue, Entity, Kind
from cloud_agent.northbound.units import UnitError, convert, unit_code
from device_registry.lifecycle import WATCH_TAG
from device_registry.models import Device, Gateway, Location, Presence, StoredReading
from kakehashi.wire import ClockQuality

__all__ = [
    "CONTEXTS",
    "CORE_CONTEXT",
    "DEFAULT_LEVELS",
    "Family",
    "Mapped",
    "Refusal",
    "contexts_for",
    "device_urn",
    "entities_for",
    "family_of",
    "map_readings",
    "model_quantities",
    "stage_of",
    "urn",
]

CORE_CONTEXT: Final = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
_SDM: Final = "https://raw.githubusercontent.com/smart-data-models/{}/master/context.jsonld"
CONTEXTS: Final[Mapping[str, str]] = {
    "Device": _SDM.format("dataModel.Device"),
    "DeviceMeasurement": _SDM.format("dataModel.Device"),
    "WaterObserved": _SDM.format("dataModel.Environment"),
    "FloodMonitoring": _SDM.format("dataModel.Environment"),
    "WaterConsumptionObserved": _SDM.format("dataModel.WaterConsumption"),
    "ACMeasurement": _SDM.format("dataModel.Energy"),
    "ThreePhaseAcMeasurement": _SDM.format("dataModel.Energy"),
    "CrowdFlowObserved": _SDM.format("dataModel.Transportation"),
    "Alert": _SDM.format("dataModel.Alert"),
}
"""Entity type -> the Smart Data Models subject @context that defines its attributes."""

DEFAULT_LEVELS: Final[Mapping[str, float]] = {
    "observe": 1.0,
    "standby": 2.0,
    "caution": 2.5,
    "evacuate": 3.0,
    "danger": 3.5,
}
"""Threshold levels (m) of the MicroPython node's defaults (docs/edge.md), used when the twin has none:
観測開始水位 observe, 水防団待機水位 standby, 氾濫注意水位 caution, 避難判断水位 evacuate, 氾濫危険水位 danger."""

_LEVEL_ORDER: Final = ("observe", "standby", "caution", "evacuate", "danger")
_LEVEL_ATTRS: Final[Mapping[str, str]] = {
    "observe": "observationLevel",
    "standby": "standbyLevel",
    "caution": "alertLevel",
    "evacuate": "evacuationLevel",
    "danger": "dangerLevel",
}
_STATUS: Final = ("normal", "observation", "standby", "caution", "evacuation", "danger")
"""``floodLevelStatus`` by stage 0..5."""


def contexts_for(entity_type: str) -> list[str]:
    """The ``@context`` list for an entity type: its subject context, then the NGSI-LD core context."""
    return [CONTEXTS[entity_type], CORE_CONTEXT]


def urn(entity_type: str, *parts: str) -> str:
    """``urn:ngsi-ld:<type>:<part>[:<part>...]``."""
    return ":".join(("urn:ngsi-ld", entity_type, *parts))


def device_urn(entity_id: str) -> str:
    """The ``Device`` entity id of a gateway or device (one namespace: registry ids are unique across both)."""
    return urn("Device", entity_id)


class Family(enum.StrEnum):
    """How a device's readings are modelled."""

    WATER_LEVEL = "water_level"
    WATER_METER = "water_meter"
    SINGLE_PHASE = "single_phase"
    THREE_PHASE = "three_phase"
    WATCH_TAG = "watch_tag"
    GATEWAY = "gateway"
    GENERIC = "generic"


_WATER_LEVEL_PROFILES: Final = frozenset({"water-level", "water-level-v1", "water-level-id-v1", "khnode"})
_THREE_PHASE_PROFILES: Final = frozenset({"sdm630"})
_SINGLE_PHASE_PROFILES: Final = frozenset({"sdm120"})


def family_of(device: Device | Gateway) -> Family:
    """The model family of a gateway or device, from its kind and hardware profile."""
    if isinstance(device, Gateway):
        return Family.GATEWAY
    if device.kind == WATCH_TAG:
        return Family.WATCH_TAG
    if device.kind == "water_level" or device.profile in _WATER_LEVEL_PROFILES:
        return Family.WATER_LEVEL
    if device.kind == "water_meter" or device.profile == "water-meter":
        return Family.WATER_METER
    if device.profile in _THREE_PHASE_PROFILES:
        return Family.THREE_PHASE
    if device.kind == "energy_meter" or device.profile in _SINGLE_PHASE_PROFILES:
        return Family.SINGLE_PHASE
    return Family.GENERIC


@dataclass(frozen=True, slots=True)
class _Rule:
    """A quantity that becomes (part of) an attribute: ``attr`` or ``attr[key]``, in ``unit``, within bounds."""

    attr: str
    unit: str | None
    key: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False


def _phased(
    attr: str, quantity: str, unit: str, minimum: float | None = None, maximum: float | None = None
) -> dict[str, _Rule]:
    """Rules for ``<quantity>_l1..l3`` -> ``attr.L1..L3``."""
    return {f"{quantity}_l{n}": _Rule(attr, unit, f"L{n}", minimum, maximum) for n in (1, 2, 3)}


_ENERGY_TOTALS: Final[dict[str, _Rule]] = {
    "frequency": _Rule("frequency", "Hz", minimum=0),
    "import_energy": _Rule("totalActiveEnergyImport", "kWh", minimum=0),
    "export_energy": _Rule("totalActiveEnergyExport", "kWh", minimum=0),
    "import_reactive_energy": _Rule("totalReactiveEnergyImport", "kvarh", minimum=0),
    "export_reactive_energy": _Rule("totalReactiveEnergyExport", "kvarh", minimum=0),
}

_RULES: Final[Mapping[Family, Mapping[str, _Rule]]] = {
    Family.SINGLE_PHASE: {
        **_ENERGY_TOTALS,
        "voltage": _Rule("phaseVoltage", "V", "L1", minimum=0),
        "current": _Rule("current", "A", "L1"),
        "active_power": _Rule("totalActivePower", "W"),
        "apparent_power": _Rule("totalApparentPower", "VA", minimum=0),
        "reactive_power": _Rule("totalReactivePower", "kvar"),
        "power_factor": _Rule("totalPowerFactor", "/", minimum=-1, maximum=1),
    },
    Family.THREE_PHASE: {
        **_ENERGY_TOTALS,
        **_phased("phaseVoltage", "voltage", "V", minimum=0),
        **_phased("current", "current", "A"),
        **_phased("activePower", "active_power", "W"),
        **_phased("apparentPower", "apparent_power", "VA"),
        **_phased("reactivePower", "reactive_power", "kvar"),
        **_phased("powerFactor", "power_factor", "/", minimum=-1, maximum=1),
        "voltage_l1_l2": _Rule("phaseToPhaseVoltage", "V", "L12", minimum=0),
        "voltage_l2_l3": _Rule("phaseToPhaseVoltage", "V", "L23", minimum=0),
        "voltage_l3_l1": _Rule("phaseToPhaseVoltage", "V", "L31", minimum=0),
        "neutral_current": _Rule("current", "A", "N"),
        "total_active_power": _Rule("totalActivePower", "W"),
        "total_apparent_power": _Rule("totalApparentPower", "VA", minimum=0),
        "total_reactive_power": _Rule("totalReactivePower", "kvar"),
        "total_power_factor": _Rule("totalPowerFactor", "/", minimum=-1, maximum=1),
    },
    Family.WATER_METER: {
        "total_volume": _Rule("waterConsumption", "l", minimum=0, integer=True),
    },
}
"""Family -> quantity -> the measurement entity's attribute. Quantities not listed become ``DeviceMeasurement``."""

_MEASUREMENT_TYPE: Final[Mapping[Family, str]] = {
    Family.SINGLE_PHASE: "ACMeasurement",
    Family.THREE_PHASE: "ThreePhaseAcMeasurement",
    Family.WATER_METER: "WaterConsumptionObserved",
}

_LEVEL_QUANTITIES: Final = frozenset({"level", "water_level"})
_DEVICE_HEALTH: Final = frozenset({"rssi"})
"""Quantities that are attributes of the ``Device`` entity rather than measurements (``battery`` in % also is)."""

_CONTROLLED: Final[Mapping[Family, tuple[str, ...]]] = {
    Family.WATER_LEVEL: ("waterLevel",),
    Family.WATER_METER: ("waterConsumption", "waterFlow"),
    Family.SINGLE_PHASE: ("electricityConsumption", "power", "energy"),
    Family.THREE_PHASE: ("electricityConsumption", "power", "energy"),
}
"""``controlledProperty`` of a family's ``Device`` (fixed, so that it does not change from message to message)."""
_CONTROLLED_BY_QUANTITY: Final[Mapping[str, str]] = {
    "temperature": "temperature",
    "water_temperature": "temperature",
    "humidity": "humidity",
    "pressure": "pressure",
    "flow_rate": "waterFlow",
    "level": "waterLevel",
    "water_level": "waterLevel",
}
"""``controlledProperty`` terms of a generic device, from the quantities it reports."""
_CATEGORY: Final[Mapping[Family, str]] = {
    Family.GATEWAY: "network",
    Family.WATER_METER: "meter",
    Family.SINGLE_PHASE: "meter",
    Family.THREE_PHASE: "meter",
}


def model_quantities(family: Family) -> frozenset[str]:
    """Quantities a family puts into its model entities (``Device`` included) instead of a ``DeviceMeasurement``.

    ``battery`` counts only in % (as ``batteryLevel``); in volts it is a ``DeviceMeasurement``.
    """
    quantities = set(_DEVICE_HEALTH) | set(_RULES.get(family, {}))
    if family is Family.WATER_LEVEL:
        quantities |= {"stage", *_LEVEL_QUANTITIES}
    return frozenset(quantities)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A reading (or an entity) that was not sent, and why."""

    device_id: str
    quantity: str
    reason: str


@dataclass(frozen=True, slots=True)
class Mapped:
    """What :func:`map_readings` produced: entities to upsert and the readings it refused."""

    entities: tuple[Entity, ...]
    refused: tuple[Refusal, ...]


def _strings(items: Iterable[str]) -> list[JSON]:
    return list(items)


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _clock(reading: StoredReading) -> str | None:
    return None if reading.clock is ClockQuality.SYNCED else reading.clock.value


def _point(location: Location) -> dict[str, JSON] | None:
    if location.latitude is None or location.longitude is None:
        return None
    return {"type": "Point", "coordinates": [location.longitude, location.latitude]}


def _number(value: float | str | bool | bytes) -> float | None:
    """A finite number from a reading value (booleans count as 0/1), or ``None``."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _latest(readings: Iterable[StoredReading]) -> dict[str, StoredReading]:
    """The newest reading of each quantity (a message may hold several samples of one quantity)."""
    latest: dict[str, StoredReading] = {}
    for reading in readings:
        seen = latest.get(reading.quantity)
        if seen is None or reading.observed_at >= seen.observed_at:
            latest[reading.quantity] = reading
    return latest


def _measured(reading: StoredReading, value: AttrValue, unit: str | None) -> Attr:
    return Attr(value, Kind.PROPERTY, reading.observed_at, unit_code(unit), _clock(reading))


def _in_rule(rule: _Rule, reading: StoredReading) -> float | str:
    """The reading's value converted for ``rule``, or the reason it cannot be."""
    number = _number(reading.value)
    if number is None or isinstance(reading.value, bool):
        return "not a finite number"
    unit = reading.unit if reading.unit is not None else rule.unit if rule.unit in ("/", None) else None
    if rule.unit is not None:
        try:
            number = convert(number, unit, rule.unit)
        except UnitError as exc:
            return str(exc)
    if rule.minimum is not None and number < rule.minimum:
        return f"below {rule.minimum} for {rule.attr}"
    if rule.maximum is not None and number > rule.maximum:
        return f"above {rule.maximum} for {rule.attr}"
    if rule.integer:
        return float(round(number))
    return number


def _device_measurement(device: Device | Gateway, reading: StoredReading, location: dict[str, JSON] | None) -> Entity:
    value = reading.value
    number = _number(value)
    attrs: dict[str, Attr] = {}
    if number is not None:
        attrs["numValue"] = _measured(reading, number, reading.unit)
    else:
        attrs["textValue"] = _measured(reading, str(value), None)
    if reading.unit is not None:
        attrs["unit"] = Attr(unit_code(reading.unit) or reading.unit)
    attrs["controlledProperty"] = Attr(reading.quantity)
    attrs["dateObserved"] = Attr(_dt(reading.observed_at), observed_at=reading.observed_at)
    attrs["refDevice"] = Attr(device_urn(device.id), Kind.RELATIONSHIP)
    attrs["deviceType"] = Attr(device.kind if isinstance(device, Device) else "gateway")
    if location is not None:
        attrs["location"] = Attr(location, Kind.GEO_PROPERTY)
    return Entity(urn("DeviceMeasurement", device.id, reading.quantity), "DeviceMeasurement", attrs)


def _levels(settings: Mapping[str, object] | None) -> dict[str, float]:
    """Threshold levels: the twin's ``levels`` (any subset) over the node defaults; non-numbers are ignored."""
    levels = dict(DEFAULT_LEVELS)
    given = settings.get("levels") if settings is not None else None
    if isinstance(given, Mapping):
        for name in _LEVEL_ORDER:
            value = given.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                levels[name] = float(value)
    return levels


def stage_of(level: float, levels: Mapping[str, float]) -> int:
    """Stage 0..5: how many thresholds (observe, standby, caution, evacuate, danger) the level is at or above."""
    return sum(1 for name in _LEVEL_ORDER if level >= levels[name])


def _water_level(
    device: Device,
    latest: Mapping[str, StoredReading],
    location: dict[str, JSON] | None,
    settings: Mapping[str, object] | None,
    refused: list[Refusal],
) -> list[Entity]:
    level_reading = next((latest[q] for q in _LEVEL_QUANTITIES if q in latest), None)
    stage_reading = latest.get("stage")
    if level_reading is None and stage_reading is None:
        return []
    out: list[Entity] = []
    levels = _levels(settings)
    ref = Attr(device_urn(device.id), Kind.RELATIONSHIP)
    flood: dict[str, Attr] = {"stationID": Attr(device.id), "refDevice": ref}
    for name in _LEVEL_ORDER:
        flood[_LEVEL_ATTRS[name]] = Attr(levels[name], unit_code=unit_code("m"))
    level: float | None = None
    if level_reading is not None:
        number = _number(level_reading.value)
        try:
            if number is None or isinstance(level_reading.value, bool):
                raise UnitError("not a finite number")
            level = convert(number, level_reading.unit or "m", "m")
        except UnitError as exc:
            refused.append(Refusal(device.id, level_reading.quantity, str(exc)))
    if level is not None and level_reading is not None:
        flood["currentLevel"] = _measured(level_reading, level, "m")
        if location is None:
            refused.append(Refusal(device.id, level_reading.quantity, "WaterObserved needs a location; none known"))
        elif level < 0:
            refused.append(Refusal(device.id, level_reading.quantity, "below 0 for WaterObserved.height"))
        else:
            observed = {
                "height": _measured(level_reading, level, "m"),
                "dateObserved": Attr(_dt(level_reading.observed_at), observed_at=level_reading.observed_at),
                "location": Attr(location, Kind.GEO_PROPERTY),
                "refDevice": ref,
            }
            out.append(Entity(urn("WaterObserved", device.id), "WaterObserved", observed))
    stage: int | None = None
    source: StoredReading | None = None
    if stage_reading is not None:
        number = _number(stage_reading.value)
        if number is not None and number == int(number) and 0 <= number <= len(_LEVEL_ORDER):
            stage, source = int(number), stage_reading
        else:
            refused.append(Refusal(device.id, "stage", "stage must be an integer 0..5"))
    if stage is None and level is not None:
        stage, source = stage_of(level, levels), level_reading
    if stage is not None and source is not None:
        flood["stage"] = _measured(source, stage, None)
        flood["floodLevelStatus"] = _measured(source, _STATUS[stage], None)
    when = max((r for r in (level_reading, stage_reading) if r is not None), key=lambda r: r.observed_at)
    flood["observationDateTime"] = Attr(_dt(when.observed_at), observed_at=when.observed_at)
    if location is not None:
        flood["location"] = Attr(location, Kind.GEO_PROPERTY)
    out.append(Entity(urn("FloodMonitoring", device.id), "FloodMonitoring", flood))
    return out


def _measurement(
    family: Family,
    device: Device,
    latest: Mapping[str, StoredReading],
    location: dict[str, JSON] | None,
    refused: list[Refusal],
) -> tuple[list[Entity], set[str]]:
    """The family's measurement entity and the quantities it took."""
    rules = _RULES[family]
    entity_type = _MEASUREMENT_TYPE[family]
    attrs: dict[str, Attr] = {}
    parts: dict[str, dict[str, JSON]] = {}
    part_reading: dict[str, StoredReading] = {}
    taken: set[str] = set()
    newest: StoredReading | None = None
    for quantity, reading in latest.items():
        rule = rules.get(quantity)
        if rule is None:
            continue
        taken.add(quantity)
        value = _in_rule(rule, reading)
        if isinstance(value, str):
            refused.append(Refusal(device.id, quantity, value))
            continue
        if newest is None or reading.observed_at > newest.observed_at:
            newest = reading
        number: int | float = int(value) if rule.integer else value
        if rule.key is None:
            attrs[rule.attr] = _measured(reading, number, rule.unit)
        else:
            parts.setdefault(rule.attr, {})[rule.key] = number
            seen = part_reading.get(rule.attr)
            if seen is None or reading.observed_at > seen.observed_at:
                part_reading[rule.attr] = reading
    for attr, value_map in parts.items():
        reading = part_reading[attr]
        unit = next(r.unit for q, r in rules.items() if r.attr == attr)
        attrs[attr] = _measured(reading, dict(value_map), unit)
    if newest is None:
        return [], taken
    if family is Family.SINGLE_PHASE or family is Family.THREE_PHASE:
        attrs["refDevice"] = Attr(_strings([device_urn(device.id)]), Kind.RELATIONSHIP)
    else:
        attrs["refDevice"] = Attr(device_urn(device.id), Kind.RELATIONSHIP)
    if family is Family.SINGLE_PHASE:
        if location is None:
            reason = "ACMeasurement needs a location; sent as DeviceMeasurement"
            refused.extend(Refusal(device.id, q, reason) for q in taken)
            return [], set()
        attrs["phaseType"] = Attr("singlePhase")
    attrs["dateObserved"] = Attr(_dt(newest.observed_at), observed_at=newest.observed_at)
    if location is not None:
        attrs["location"] = Attr(location, Kind.GEO_PROPERTY)
    return [Entity(urn(entity_type, device.id), entity_type, attrs)], taken


def _device_entity(
    device: Device | Gateway,
    family: Family,
    latest: Mapping[str, StoredReading],
    location: dict[str, JSON] | None,
    presence: Presence | None,
    settings: Mapping[str, object] | None,
    refused: list[Refusal],
) -> tuple[Entity, set[str]]:
    """The ``Device`` entity and the quantities it took (battery in %, RSSI)."""
    if family is Family.GENERIC:
        controlled = {_CONTROLLED_BY_QUANTITY[q] for q in latest if q in _CONTROLLED_BY_QUANTITY}
    else:
        controlled = set(_CONTROLLED.get(family, ()))
    attrs: dict[str, Attr] = {
        "name": Attr(device.id),
        "controlledProperty": Attr(_strings(sorted(controlled))),
        "deviceCategory": Attr(_strings([_CATEGORY.get(family, "sensor")])),
        "deviceState": Attr(device.state.value),
        "owner": Attr(_strings([urn("Organisation", device.organisation_id)])),
    }
    if device.hardware_serial:
        attrs["serialNumber"] = Attr(device.hardware_serial)
    firmware = _firmware(settings)
    if firmware is not None:
        attrs["firmwareVersion"] = Attr(firmware)
    taken: set[str] = set()
    battery = latest.get("battery")
    if battery is not None and battery.unit == "%":
        taken.add("battery")
        number = _number(battery.value)
        if number is not None and 0 <= number <= 100 and not isinstance(battery.value, bool):
            level = convert(number, "%", "/")
            attrs["batteryLevel"] = Attr(level, Kind.PROPERTY, battery.observed_at, None, _clock(battery))
        else:
            refused.append(Refusal(device.id, "battery", "battery must be 0..100 %"))
    rssi = latest.get("rssi")
    if rssi is not None:
        taken.add("rssi")
        number = _number(rssi.value)
        if number is not None and not isinstance(rssi.value, bool):
            attrs["rssi"] = _measured(rssi, number, rssi.unit or "dBm")
        else:
            refused.append(Refusal(device.id, "rssi", "not a finite number"))
    last = presence.last_seen if presence is not None else None
    if latest:
        newest = max(r.received_at for r in latest.values())
        last = newest if last is None else max(last, newest)
    if last is not None:
        attrs["dateLastValueReported"] = Attr(_dt(last))
    if presence is not None:
        attrs["online"] = Attr(presence.online, Kind.PROPERTY, presence.changed_at)
    if location is not None:
        attrs["location"] = Attr(location, Kind.GEO_PROPERTY)
    return Entity(device_urn(device.id), "Device", attrs), taken


def _firmware(settings: Mapping[str, object] | None) -> str | None:
    if settings is None:
        return None
    for key in ("firmware_version", "firmware", "fw"):
        value = settings.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def map_readings(
    device: Device | Gateway,
    readings: Sequence[StoredReading],
    presence: Presence | None = None,
    *,
    gateway: Gateway | None = None,
    settings: Mapping[str, object] | None = None,
) -> Mapped:
    """Entities for one gateway or device and its readings, with the readings refused and why.

    ``readings`` are one stored message's readings of this device or the latest value of each quantity (several
    samples of one quantity: the newest wins). ``presence`` is the gateway's (for a gateway: its own). ``gateway`` (the
    device's) supplies the location when the device has none. ``settings`` is the device's twin document (reported,
    else desired): ``levels`` (threshold levels, any subset of observe/standby/caution/evacuate/danger, metres) and
    ``firmware_version`` are read from it. An alarm reading also yields an ``Alert`` (every sample, not only the
    newest; an alarm that cannot be one is refused with a reason and still sent as a ``DeviceMeasurement``). A watch
    tag yields nothing (see :mod:`cloud_agent.northbound.privacy` and :func:`~cloud_agent.northbound.alerts.
    tag_alerts`).
    """
    family = family_of(device)
    if family is Family.WATCH_TAG:
        return Mapped((), tuple(Refusal(device.id, r.quantity, "watch tag: aggregated by privacy") for r in readings))
    refused = [
        Refusal(r.device_id, r.quantity, f"not a reading of {device.id}") for r in readings if r.device_id != device.id
    ]
    latest = _latest(r for r in readings if r.device_id == device.id)
    location = _point(device.location)
    if location is None and gateway is not None:
        location = _point(gateway.location)
    device_entity, taken = _device_entity(device, family, latest, location, presence, settings, refused)
    entities = [device_entity]
    if isinstance(device, Device):
        if family is Family.WATER_LEVEL:
            entities.extend(_water_level(device, latest, location, settings, refused))
            taken.update(q for q in ("stage", *_LEVEL_QUANTITIES) if q in latest)
        elif family in _RULES:
            measured, took = _measurement(family, device, latest, location, refused)
            entities.extend(measured)
            taken.update(took)
    for quantity, reading in latest.items():
        if quantity in taken:
            continue
        if isinstance(reading.value, bytes):
            refused.append(Refusal(device.id, quantity, "binary value"))
        elif isinstance(reading.value, float) and not math.isfinite(reading.value):
            refused.append(Refusal(device.id, quantity, "not a finite number"))
        else:
            entities.append(_device_measurement(device, reading, location))
    if not latest.keys().isdisjoint(ALARM_QUANTITIES):  # all a message without alarms costs
        alerts, problems = device_alerts(device.id, readings, location)
        entities.extend(alerts)
        refused.extend(Refusal(device.id, quantity, reason) for quantity, reason in problems)
    return Mapped(tuple(entities), tuple(refused))


def entities_for(
    device: Device | Gateway,
    readings: Sequence[StoredReading],
    presence: Presence | None = None,
    *,
    gateway: Gateway | None = None,
    settings: Mapping[str, object] | None = None,
) -> list[Entity]:
    """The entities to upsert for one gateway or device and its readings (see :func:`map_readings`)."""
    return list(map_readings(device, readings, presence, gateway=gateway, settings=settings).entities)
