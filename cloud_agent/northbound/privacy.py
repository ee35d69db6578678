"""Watch-tag sightings to the City OS without raw personal data: hourly crowd counts, and consented pseudonyms.

A watch tag is carried by a person (a child, an elderly resident), so its id and its sightings are personal data. The
City OS receives only what the tag's consent record allows:

* **Always** (every consented, active tag): the tag is *counted* in ``CrowdFlowObserved`` entities, one per zone and
  hour -- ``peopleCount`` is the number of distinct tags seen in that zone during that hour. No tag id, pseudonym or
  per-tag time goes out in them.
* **More, only if the tag's labels say so**: the label ``share`` holds a comma-separated list of consent scopes:

  ``zone``      a ``Device`` entity with a pseudonymised id and ``areaServed`` = the zone where it was last seen;
  ``location``  as ``zone``, plus ``location`` = the position of the gateway that saw it (implies ``zone``);
  ``battery``   ``batteryLevel`` on that entity (only together with ``zone`` or ``location``).

  Unknown scopes are ignored; a tag without ``consent=True`` or not ``active`` shares nothing (and the registry does
  not store its readings at all).

The pseudonym is HMAC-SHA256 of the tag id under a per-deployment secret, truncated to 20 hex digits (80 bits):
stable for one deployment (so the City OS can follow a consented tag), not linkable across deployments, and not
reversible without the secret. The raw id never reaches an entity, and :class:`CrowdAggregator` never stores it:
:meth:`CrowdAggregator.add` pseudonymises first.

The zone of a sighting is the ``zone`` label of the gateway that saw the tag, else that gateway's id. Entity ids::

    urn:ngsi-ld:CrowdFlowObserved:<zone, percent-encoded>:<YYYYMMDDTHH>Z      (the hour's start, UTC)
    urn:ngsi-ld:Device:tag-<pseudonym>

Retention: the aggregator keeps, per zone and hour, only the set of pseudonyms (to count distinct tags) and drops it
``keep_hours`` after the hour; a sighting older than that is refused and counted in ``refused_late``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

from cloud_agent.northbound.entities import JSON, Attr, Entity, Kind
from device_registry.lifecycle import WATCH_TAG, State
from device_registry.models import Device, Gateway, Location, StoredReading

__all__ = [
    "HOUR",
    "SCOPES",
    "CrowdAggregator",
    "Pseudonymiser",
    "Sighting",
    "TagShare",
    "consent_scopes",
    "crowd_entities",
    "crowd_entity",
    "hour_of",
    "share_scopes",
    "sightings_from",
    "tag_entity",
    "tag_urn",
    "zone_of",
    "zone_urn",
]

HOUR: Final = 3600
SCOPES: Final = frozenset({"zone", "location", "battery"})
SHARE_LABEL: Final = "share"
ZONE_LABEL: Final = "zone"
_PSEUDONYM_HEX: Final = 20
_MIN_SECRET: Final = 16


def hour_of(t: float) -> int:
    """The start (epoch seconds) of the UTC hour holding ``t``."""
    return int(t // HOUR) * HOUR


def share_scopes(kind: str, consent: bool | None, state: State, share: str | None) -> frozenset[str]:
    """What a device's consent allows beyond being counted, from its kind, consent, state and ``share`` label."""
    if kind != WATCH_TAG or consent is not True or state is not State.ACTIVE or not share:
        return frozenset()
    asked = {part.strip().lower() for part in share.split(",")}
    scopes = asked & SCOPES
    if "location" in scopes:
        scopes.add("zone")
    if "zone" not in scopes:
        return frozenset()
    return frozenset(scopes)


def consent_scopes(tag: Device) -> frozenset[str]:
    """What a watch tag's consent allows beyond being counted: scopes from its ``share`` label (see module doc)."""
    return share_scopes(tag.kind, tag.consent, tag.state, tag.labels.get(SHARE_LABEL))


def zone_of(gateway_id: str, gateway: Gateway | None) -> str:
    """The zone of a sighting: the seeing gateway's ``zone`` label, else its id."""
    if gateway is not None and gateway.labels.get(ZONE_LABEL):
        return gateway.labels[ZONE_LABEL]
    return gateway_id


@dataclass(frozen=True, slots=True)
class Sighting:
    """A watch tag seen in a zone at a time (what the aggregator needs; built by :func:`sightings_from`)."""

    tag_id: str
    zone: str
    observed_at: float
    scopes: frozenset[str] = frozenset()
    location: Location | None = None
    """Where the seeing gateway is (only used with the ``location`` scope)."""
    battery: float | None = None
    """Battery in % (only used with the ``battery`` scope)."""


def sightings_from(tag: Device, readings: Iterable[StoredReading], gateway: Gateway | None = None) -> list[Sighting]:
    """One sighting per gateway and observed time in a tag's readings; nothing if the tag may not be counted.

    ``gateway`` is the gateway that received the readings (its zone and location); readings from another gateway
    are zoned by their ``gateway_id``.
    """
    if tag.kind != WATCH_TAG or tag.consent is not True or tag.state is not State.ACTIVE:
        return []
    scopes = consent_scopes(tag)
    seen: dict[tuple[str, float], float | None] = {}
    for reading in readings:
        if reading.device_id != tag.id:
            continue
        key = (reading.gateway_id, reading.observed_at)
        battery = seen.get(key)
        value = reading.value
        is_percent = reading.quantity == "battery" and reading.unit == "%"
        if is_percent and isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
            battery = float(value)
        seen[key] = battery
    out: list[Sighting] = []
    for (gateway_id, observed_at), battery in seen.items():
        here = gateway if gateway is not None and gateway.id == gateway_id else None
        location = here.location if here is not None else None
        out.append(Sighting(tag.id, zone_of(gateway_id, here), observed_at, scopes, location, battery))
    return out


class Pseudonymiser:
    """HMAC-SHA256 pseudonyms of tag ids under a per-deployment secret (truncated to 80 bits, hex)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _MIN_SECRET:
            raise ValueError(f"the pseudonym secret must be at least {_MIN_SECRET} bytes")
        self._secret = secret

    def __repr__(self) -> str:
        return "Pseudonymiser(<secret>)"

    def pseudonym(self, tag_id: str) -> str:
        return hmac.new(self._secret, tag_id.encode(), hashlib.sha256).hexdigest()[:_PSEUDONYM_HEX]


@dataclass(slots=True)
class _Bucket:
    tags: set[str] = field(default_factory=set)
    location: Location | None = None
    dirty: bool = True


@dataclass(frozen=True, slots=True)
class TagShare:
    """What a consented tag shares under its pseudonym: where and when it was last seen (and what its scopes add)."""

    zone: str
    observed_at: float
    scopes: frozenset[str]
    location: Location | None
    """The seeing gateway's position; only with the ``location`` scope."""
    battery: float | None
    """Battery in %; only with the ``battery`` scope."""
    battery_at: float | None = None
    """When the battery was read (default: ``observed_at``)."""


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _point(location: Location | None) -> dict[str, JSON] | None:
    if location is None or location.latitude is None or location.longitude is None:
        return None
    return {"type": "Point", "coordinates": [location.longitude, location.latitude]}


def zone_urn(zone: str, hour: int) -> str:
    """The ``CrowdFlowObserved`` id of a zone and hour."""
    return f"urn:ngsi-ld:CrowdFlowObserved:{quote(zone, safe='-._~')}:{_dt(hour).strftime('%Y%m%dT%H')}Z"


def tag_urn(pseudonym: str) -> str:
    """The ``Device`` id of a consented tag's pseudonym."""
    return f"urn:ngsi-ld:Device:tag-{pseudonym}"


def crowd_entity(zone: str, start: int, count: int, location: Location | None = None) -> Entity:
    """The ``CrowdFlowObserved`` of a zone and hour: ``count`` distinct tags; ``location`` is the zone's position."""
    begin, end = _dt(start), _dt(start + HOUR)
    attrs: dict[str, Attr] = {
        "peopleCount": Attr(count, Kind.PROPERTY, float(start)),
        "dateObserved": Attr(f"{begin.strftime('%Y-%m-%dT%H:%M:%SZ')}/{end.strftime('%Y-%m-%dT%H:%M:%SZ')}"),
        "dateObservedFrom": Attr(begin),
        "dateObservedTo": Attr(end),
        "name": Attr(zone),
    }
    point = _point(location)
    if point is not None:
        attrs["location"] = Attr(point, Kind.GEO_PROPERTY)
    return Entity(zone_urn(zone, start), "CrowdFlowObserved", attrs)


def tag_entity(pseudonym: str, state: TagShare) -> Entity:
    """The pseudonymised ``Device`` of a consented tag: only what ``state`` holds (its scopes chose it)."""
    controlled: list[JSON] = ["location"]
    category: list[JSON] = ["beacon"]
    attrs: dict[str, Attr] = {
        "controlledProperty": Attr(controlled),
        "deviceCategory": Attr(category),
        "areaServed": Attr(state.zone, Kind.PROPERTY, state.observed_at),
        "dateLastValueReported": Attr(_dt(state.observed_at)),
    }
    point = _point(state.location)
    if point is not None:
        attrs["location"] = Attr(point, Kind.GEO_PROPERTY, state.observed_at)
    if state.battery is not None:
        at = state.observed_at if state.battery_at is None else state.battery_at
        attrs["batteryLevel"] = Attr(state.battery / 100, Kind.PROPERTY, at)
    return Entity(tag_urn(pseudonym), "Device", attrs)


class CrowdAggregator:
    """Counts distinct watch tags per zone and hour, and collects what consented tags share; pure and in memory.

    Feed :meth:`add` with sightings (in any order); :meth:`flush` returns the entities of every hour up to the given
    one that changed since the last flush. With ``min_count`` > 1 a zone-hour with fewer distinct tags is held back
    (k-anonymity: a count of one in a quiet zone can single a person out) until enough tags are seen or it expires.
    A late sighting of an hour already flushed (within ``keep_hours``) makes that hour's entity go out again with
    the full, corrected count (same id: an upsert replaces it).
    """

    def __init__(self, secret: bytes, *, keep_hours: int = 24, min_count: int = 1) -> None:
        if min_count < 1:
            raise ValueError("min_count must be at least 1")
        self._pseudonyms = Pseudonymiser(secret)
        self._min_count = min_count
        self._keep = keep_hours * HOUR
        self._buckets: dict[tuple[str, int], _Bucket] = {}
        self._shared: dict[str, TagShare] = {}
        self._flushed_to: int | None = None
        self.refused_late = 0
        """Sightings older than the retention window (``keep_hours`` before the last flushed hour)."""

    def add(self, sighting: Sighting) -> bool:
        """Count a sighting; ``False`` if it is too old to be counted (see ``refused_late``)."""
        hour = hour_of(sighting.observed_at)
        if self._flushed_to is not None and hour < self._flushed_to - self._keep:
            self.refused_late += 1
            return False
        pseudonym = self._pseudonyms.pseudonym(sighting.tag_id)
        bucket = self._buckets.setdefault((sighting.zone, hour), _Bucket())
        if pseudonym not in bucket.tags:
            bucket.tags.add(pseudonym)
            bucket.dirty = True
        if bucket.location is None and sighting.location is not None:
            bucket.location = sighting.location
        if sighting.scopes:
            seen = self._shared.get(pseudonym)
            if seen is None or sighting.observed_at >= seen.observed_at:
                location = sighting.location if "location" in sighting.scopes else None
                battery = sighting.battery if "battery" in sighting.scopes else None
                self._shared[pseudonym] = TagShare(
                    sighting.zone, sighting.observed_at, sighting.scopes, location, battery
                )
        return True

    def counts(self) -> dict[tuple[str, int], int]:
        """Distinct tags per (zone, hour start) held now."""
        return {key: len(bucket.tags) for key, bucket in self._buckets.items()}

    def flush(self, hour: float) -> list[Entity]:
        """Entities for every changed zone-hour up to the hour holding ``hour``, and the consented tags' latest state.

        Zone-hours older than ``keep_hours`` before it are then forgotten.
        """
        upto = hour_of(hour)
        out: list[Entity] = []
        for (zone, start), bucket in sorted(self._buckets.items()):
            if start <= upto and bucket.dirty and len(bucket.tags) >= self._min_count:
                out.append(crowd_entity(zone, start, len(bucket.tags), bucket.location))
                bucket.dirty = False
        shared = [(p, s) for p, s in self._shared.items() if hour_of(s.observed_at) <= upto]
        for pseudonym, state in sorted(shared):
            out.append(tag_entity(pseudonym, state))
            del self._shared[pseudonym]
        self._flushed_to = upto if self._flushed_to is None else max(self._flushed_to, upto)
        horizon = self._flushed_to - self._keep
        for key in [k for k in self._buckets if k[1] < horizon]:
            del self._buckets[key]
        return out


def crowd_entities(aggregator: CrowdAggregator, sightings: Iterable[Sighting], hour: float) -> list[Entity]:
    """Add ``sightings`` and flush up to ``hour`` (a convenience for batch use and tests)."""
    for sighting in sightings:
        aggregator.add(sighting)
    return aggregator.flush(hour)
