"""Watch-tag privacy rules: consent scopes, pseudonyms, zones, and the entities the City OS may receive.

A watch tag is carried by a person (a child, an elderly resident), so its id and its sightings are personal data. The
City OS receives only what the tag's consent record allows:

* **Always** (every consented, active tag): the tag is *counted* in ``CrowdFlowObserved`` entities, one per zone and
  hour (:func:`crowd_entity`) -- ``peopleCount`` is the number of distinct tags seen in that zone during that hour.
  No tag id, pseudonym or per-tag time goes out in them.
* **More, only if the tag's labels say so**: the label ``share`` holds a comma-separated list of consent scopes
  (:func:`share_scopes`), shared by :func:`tag_entity`:

  ``zone``      a ``Device`` entity with a pseudonymised id and ``areaServed`` = the zone where it was last seen;
  ``location``  as ``zone``, plus ``location`` = the position of the gateway that saw it (implies ``zone``);
  ``battery``   ``batteryLevel`` on that entity (only together with ``zone`` or ``location``).

  Unknown scopes are ignored; a tag without ``consent=True`` or not ``active`` shares nothing (and the registry does
  not store its readings at all, so it is not counted either).

This module holds only these rules and builders; the counting lives in
:class:`~cloud_agent.northbound.crowd_counts.StoredCrowdCounts`, which recounts distinct tags from the registry's
stored readings (so a restart changes no count) and pseudonymises the shared tags.

The pseudonym (:class:`Pseudonymiser`) is HMAC-SHA256 of the tag id under a per-deployment secret, truncated to 20 hex
digits (80 bits): stable for one deployment (so the City OS can follow a consented tag), not linkable across
deployments, and not reversible without the secret. The raw id never reaches an entity: :func:`tag_entity` takes
the pseudonym, :func:`crowd_entity` only a count.

The zone of a sighting is the ``zone`` label of the gateway that saw the tag, else that gateway's id
(:func:`zone_of`). Entity ids::

    urn:ngsi-ld:CrowdFlowObserved:<zone, percent-encoded>:<YYYYMMDDTHH>Z      (the hour's start, UTC)
    urn:ngsi-ld:Device:tag-<pseudonym>
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

from cloud_agent.northbound.entities import JSON, Attr, Entity, Kind
from device_registry.lifecycle import WATCH_TAG, State
from device_registry.models import Gateway, Location

__all__ = [
    "HOUR",
    "SCOPES",
    "Pseudonymiser",
    "TagShare",
    "crowd_entity",
    "hour_of",
    "share_scopes",
    "tag_entity",
    "tag_urn",
    "zone_of",
    "zone_urn",
]

HOUR: Final = 3600
SCOPES: Final = frozenset({"zone", "location", "battery"})
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


def zone_of(gateway_id: str, gateway: Gateway | None) -> str:
    """The zone of a sighting: the seeing gateway's ``zone`` label, else its id."""
    if gateway is not None and gateway.labels.get(ZONE_LABEL):
        return gateway.labels[ZONE_LABEL]
    return gateway_id


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
