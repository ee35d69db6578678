"""Alarms as Smart Data Models ``Alert`` entities: river threshold crossings, a gauge's flood flag, a watch tag's SOS.

Two pure functions, both table-driven and deterministic (the same readings always give the same entities, so a
re-sent message is an idempotent upsert):

* :func:`device_alerts` -- the alarm readings of a node, gauge or gateway. :func:`~cloud_agent.northbound.mapping.
  map_readings` calls it only when a message holds a quantity of :data:`ALARM_QUANTITIES` (a set look-up on the
  message's quantities: messages without alarms cost nothing more). Which readings are alarms is decided from the
  stored reading alone (the wire carries no priority):

  ``alarm``  the MicroPython river node's threshold crossing, ``rise:<code>`` or ``fall:<code>`` with a code of
             :data:`THRESHOLDS` (水防団待機 standby, 氾濫注意 caution, 避難判断 evacuate, 氾濫危険 danger);
             severity by the threshold: rising to standby is ``low`` ... to danger ``critical``; falling below a
             threshold gives the severity of the one beneath it (below standby: ``informational``).
  ``flood``  an LPWA gauge's flood-alert flag (profiles ``water-level-v1``, ``water-level-id-v1``) when set; the
             gauge uses a threshold of its own, so the level is unknown and the severity is ``high``.

  Both are category ``naturalDisaster``, subCategory ``floodRisk`` (the thresholds are warning levels: the river
  has not necessarily left its banks). Entity id ``urn:ngsi-ld:Alert:<device id>:<quantity>:<observed epoch ms>``;
  ``alertSource`` is a relationship to the device's ``Device`` entity.

* :func:`tag_alerts` -- a watch tag's ``sos`` flag, *without personal data*: no tag id, no pseudonym, nothing
  derived from either. Only the zone (the seeing gateway's ``zone`` label, else its id, as for crowd counts), the
  seeing gateway's location and the time go out; ``alertSource`` is the seeing gateway's ``Device``. Only a
  consented, active tag raises one (the consent rule of :func:`~cloud_agent.northbound.privacy.share_scopes`). Category
  ``security`` (見守り, the watching over of children and elderly residents), severity ``high``, no subCategory
  (none of the schema's fits a call for help). Entity id
  ``urn:ngsi-ld:Alert:sos:<zone, percent-encoded>:<observed epoch ms>``: two SOS in one zone in the same
  millisecond are one alert.

Every alert has ``dateIssued`` = ``validFrom`` = the reading's observed time (with ``clockQuality`` when the clock
was not synced); ``validTo`` is left out: a threshold crossing or an SOS holds until someone acts on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

from cloud_agent.northbound.entities import JSON, Attr, Entity, Kind
from cloud_agent.northbound.privacy import zone_of
from device_registry.lifecycle import WATCH_TAG, State
from device_registry.models import Device, Gateway, Location, StoredReading
from kakehashi.wire import ClockQuality

__all__ = [
    "ALARM_QUANTITIES",
    "FLOOD_FLAG_SEVERITY",
    "SEVERITIES",
    "SOS_QUANTITY",
    "SOS_SEVERITY",
    "THRESHOLDS",
    "Threshold",
    "device_alerts",
    "sos_urn",
    "tag_alerts",
]

SEVERITIES: Final = ("informational", "low", "medium", "high", "critical")
"""The schema's ``severity`` values, least to most severe."""


@dataclass(frozen=True, slots=True)
class Threshold:
    """One of the four named thresholds of the Japanese river crisis rhythm, as the node's alarm code names it."""

    code: str
    japanese: str
    english: str
    rise: str
    """Severity when the level rises to this threshold."""
    fall: str
    """Severity when it falls back below it (that of the threshold beneath)."""


THRESHOLDS: Final[Mapping[str, Threshold]] = {
    t.code: t
    for t in (
        Threshold("suibodan_taiki", "水防団待機水位", "flood-fighting standby level", "low", "informational"),
        Threshold("hanran_chui", "氾濫注意水位", "flood caution level", "medium", "low"),
        Threshold("hinan_handan", "避難判断水位", "evacuation decision level", "high", "medium"),
        Threshold("hanran_kiken", "氾濫危険水位", "flood danger level", "critical", "high"),
    )
}
"""Alarm code (``edge/khnode/stages.py`` ``ALARM_CODES``) -> threshold."""

ALARM_QUANTITIES: Final = frozenset({"alarm", "flood"})
"""Quantities that can raise a device ``Alert``; a message holding none of them is not looked at further."""
FLOOD_FLAG_SEVERITY: Final = "high"
SOS_QUANTITY: Final = "sos"
SOS_SEVERITY: Final = "high"

_FLOOD_CATEGORY: Final = ("naturalDisaster", "floodRisk")
_SOS_CATEGORY: Final = "security"
_FLOOD_FLAG_TEXT: Final = "水位計の氾濫警報 / the water-level gauge raised its flood alert (at its own threshold)"


def _point(location: Location | None) -> dict[str, JSON] | None:
    if location is None or location.latitude is None or location.longitude is None:
        return None
    return {"type": "Point", "coordinates": [location.longitude, location.latitude]}


def _flag(value: float | str | bool | bytes) -> bool | None:
    """A flag's state: a boolean, or the number 0 / 1; ``None`` for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return value == 1
    return None


def _alert(
    entity_id: str,
    reading: StoredReading,
    category: str,
    sub_category: str | None,
    severity: str,
    description: str,
    source: str,
    location: dict[str, JSON] | None,
    area: str | None = None,
) -> Entity:
    issued = datetime.fromtimestamp(reading.observed_at, UTC)
    clock = None if reading.clock is ClockQuality.SYNCED else reading.clock.value
    attrs: dict[str, Attr] = {"category": Attr(category)}
    if sub_category is not None:
        attrs["subCategory"] = Attr(sub_category)
    attrs["severity"] = Attr(severity)
    attrs["description"] = Attr(description)
    attrs["dateIssued"] = Attr(issued, Kind.PROPERTY, reading.observed_at, None, clock)
    attrs["validFrom"] = Attr(issued)
    attrs["alertSource"] = Attr(f"urn:ngsi-ld:Device:{source}", Kind.RELATIONSHIP)
    if location is not None:
        attrs["location"] = Attr(location, Kind.GEO_PROPERTY)
    if area is not None:
        attrs["areaServed"] = Attr(area)
    return Entity(entity_id, "Alert", attrs)


_LAST_EPOCH: Final = 2**34
"""Observed times at or beyond this (the year 2514), or before 1970, raise no alert (refused as out of range)."""


def _epoch_ms(t: float) -> int | None:
    return round(t * 1000) if math.isfinite(t) and 0 <= t < _LAST_EPOCH else None


def _node_alarm(value: float | str | bool | bytes) -> tuple[str, str] | str:
    """``(severity, description)`` of a node's alarm code, or the reason it is not one."""
    if not isinstance(value, str):
        return "alarm code must be text"
    direction, _, code = value.partition(":")
    threshold = THRESHOLDS.get(code)
    if threshold is None or direction not in ("rise", "fall"):
        return f"unknown alarm code {value[:40]!r}"
    if direction == "rise":
        return threshold.rise, f"{threshold.japanese}に到達 / the water level rose to the {threshold.english}"
    return threshold.fall, f"{threshold.japanese}を下回る / the water level fell below the {threshold.english}"


def device_alerts(
    device_id: str, readings: Iterable[StoredReading], location: dict[str, JSON] | None
) -> tuple[list[Entity], list[tuple[str, str]]]:
    """The ``Alert`` entities of a device's alarm readings, and ``(quantity, reason)`` for each alarm refused.

    ``readings`` of other devices and quantities outside :data:`ALARM_QUANTITIES` are skipped; a cleared flood flag
    is no alert (and no refusal). ``location`` is the GeoJSON point of the device (or its gateway), if known.
    """
    out: dict[str, Entity] = {}
    refused: list[tuple[str, str]] = []
    for reading in readings:
        quantity = reading.quantity
        if quantity not in ALARM_QUANTITIES or reading.device_id != device_id:
            continue
        ms = _epoch_ms(reading.observed_at)
        if ms is None:
            refused.append((quantity, "no Alert: observed time out of range"))
            continue
        if quantity == "alarm":
            judged = _node_alarm(reading.value)
            if isinstance(judged, str):
                refused.append((quantity, f"no Alert: {judged}"))
                continue
            severity, description = judged
        else:
            state = _flag(reading.value)
            if state is None:
                refused.append((quantity, "no Alert: a flag must be true/false or 0/1"))
                continue
            if not state:
                continue
            severity, description = FLOOD_FLAG_SEVERITY, _FLOOD_FLAG_TEXT
        entity_id = f"urn:ngsi-ld:Alert:{device_id}:{quantity}:{ms}"
        category, sub_category = _FLOOD_CATEGORY
        out[entity_id] = _alert(entity_id, reading, category, sub_category, severity, description, device_id, location)
    return list(out.values()), refused


def sos_urn(zone: str, observed_at_ms: int) -> str:
    """The ``Alert`` id of an SOS seen in ``zone`` at ``observed_at_ms`` (epoch milliseconds)."""
    return f"urn:ngsi-ld:Alert:sos:{quote(zone, safe='-._~')}:{observed_at_ms}"


def tag_alerts(tag: Device, readings: Iterable[StoredReading], gateway: Gateway | None = None) -> list[Entity]:
    """The SOS ``Alert`` entities of a watch tag's readings, without any personal data; nothing unless the tag is
    a consented, active watch tag.

    ``gateway`` is the gateway that received the readings (its zone and location); readings relayed by another
    gateway are zoned by their ``gateway_id`` and carry no location.
    """
    if tag.kind != WATCH_TAG or tag.consent is not True or tag.state is not State.ACTIVE:
        return []
    out: dict[str, Entity] = {}
    for reading in readings:
        if reading.quantity != SOS_QUANTITY or reading.device_id != tag.id or _flag(reading.value) is not True:
            continue
        ms = _epoch_ms(reading.observed_at)
        if ms is None:
            continue
        here = gateway if gateway is not None and gateway.id == reading.gateway_id else None
        zone = zone_of(reading.gateway_id, here)
        entity_id = sos_urn(zone, ms)
        description = f"見守りタグのSOS（{zone}）/ SOS from a watch tag in zone {zone}"
        location = _point(here.location) if here is not None else None
        out[entity_id] = _alert(
            entity_id, reading, _SOS_CATEGORY, None, SOS_SEVERITY, description, reading.gateway_id, location, zone
        )
    return list(out.values())
