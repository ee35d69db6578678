"""A neutral entity model for the City OS feed and its three serialisations.

The mapping (:mod:`cloud_agent.northbound.mapping`) builds :class:`Entity` objects once; the transport then picks the
form its broker speaks:

* :func:`to_ngsi_ld` -- NGSI-LD *normalized* form: every attribute is ``{"type": "Property" | "GeoProperty" |
  "Relationship", ...}``, with ``observedAt`` (ISO 8601 UTC, ``Z``), ``unitCode`` (UN/CEFACT common code) and the
  ``@context`` list the caller passes.
* :func:`to_ngsi_v2` -- NGSI v2 *normalized* form: ``{"type": <Number|Text|...>, "value": ..., "metadata": {...}}``
  with ``dateObserved`` and ``unitCode`` metadata.
* :func:`to_key_values` -- the bare ``{"id", "type", attr: value}`` projection that Smart Data Models schemas
  validate.

A date-time attribute value is a :class:`datetime.datetime`; the serialisers render it as ``{"@type": "DateTime",
"@value": ...}`` (NGSI-LD), type ``DateTime`` (NGSI v2) or a plain ISO string (key-values). An attribute may carry a
``clock_quality`` (``unsynced`` / ``estimated``): the reading's observed time is not from a synchronised clock. It is
sent as the sub-property / metadata ``clockQuality`` and left out of the key-values form.

Everything here is pure and allocation-light: the serialisers run once per entity per push.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypeAlias

__all__ = [
    "JSON",
    "Attr",
    "AttrValue",
    "Entity",
    "Kind",
    "iso_utc",
    "to_key_values",
    "to_ngsi_ld",
    "to_ngsi_v2",
]

JSON: TypeAlias = "bool | int | float | str | list[JSON] | dict[str, JSON] | None"
AttrValue: TypeAlias = "bool | int | float | str | datetime | list[JSON] | dict[str, JSON] | None"
"""What an attribute holds: JSON, or a timezone-aware datetime for date-time attributes."""


class Kind(enum.StrEnum):
    """The NGSI-LD attribute kind."""

    PROPERTY = "Property"
    GEO_PROPERTY = "GeoProperty"
    RELATIONSHIP = "Relationship"


@dataclass(frozen=True, slots=True)
class Attr:
    """One attribute of an entity.

    ``value`` is the target entity id (a URN) for a relationship and a GeoJSON geometry for a geo-property.
    ``observed_at`` is epoch seconds (the reading's observed time), ``unit_code`` a UN/CEFACT common code.
    """

    value: AttrValue
    kind: Kind = Kind.PROPERTY
    observed_at: float | None = None
    unit_code: str | None = None
    clock_quality: str | None = None
    """``None`` when the observed time comes from a synchronised clock; else the reading's clock quality."""


@dataclass(frozen=True, slots=True)
class Entity:
    """A context entity: a URN id, a Smart Data Models type and its attributes (name -> :class:`Attr`)."""

    id: str
    type: str
    attrs: Mapping[str, Attr]


def iso_utc(t: float | datetime) -> str:
    """Epoch seconds or an aware datetime as ISO 8601 UTC with a ``Z`` (milliseconds when not whole seconds)."""
    if isinstance(t, datetime):
        return _iso_of_datetime(t)
    return _iso_of_epoch(t)


@functools.lru_cache(maxsize=4096)
def _iso_of_epoch(t: float) -> str:
    """Cached: the attributes of one sample, and the entities of one message, share their observed time."""
    return _iso(datetime.fromtimestamp(t, UTC))


@functools.lru_cache(maxsize=4096)
def _iso_of_datetime(t: datetime) -> str:
    """Cached as :func:`_iso_of_epoch` (equal instants in other zones hash alike and give the same text)."""
    return _iso(t.astimezone(UTC))


def _iso(dt: datetime) -> str:
    whole = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    if dt.microsecond:
        return f"{whole}.{dt.microsecond // 1000:03d}Z"
    return f"{whole}Z"


def _plain(value: AttrValue) -> JSON:
    return iso_utc(value) if isinstance(value, datetime) else value


_RELATIONSHIP: Final = Kind.RELATIONSHIP
_GEO_PROPERTY: Final = Kind.GEO_PROPERTY
_LD_TYPE: Final[dict[Kind, str]] = {kind: str(kind.value) for kind in Kind}
"""Looked up once here: an enum member's ``.value`` is a property, and this runs for every attribute sent."""


def _ld_attr(attr: Attr) -> dict[str, JSON]:
    out: dict[str, JSON]
    kind, value = attr.kind, attr.value
    if kind is _RELATIONSHIP:
        out = {"type": "Relationship", "object": _plain(value)}
    elif isinstance(value, datetime):
        out = {"type": "Property", "value": {"@type": "DateTime", "@value": iso_utc(value)}}
    else:
        out = {"type": _LD_TYPE[kind], "value": value}
    if attr.observed_at is not None:
        out["observedAt"] = _iso_of_epoch(attr.observed_at)
    if attr.unit_code is not None:
        out["unitCode"] = attr.unit_code
    if attr.clock_quality is not None:
        out["clockQuality"] = {"type": "Property", "value": attr.clock_quality}
    return out


def to_ngsi_ld(entity: Entity, contexts: str | Sequence[str]) -> dict[str, JSON]:
    """The entity in NGSI-LD normalized form, with ``@context`` set to ``contexts`` (a URL or a list of URLs)."""
    out: dict[str, JSON] = {"id": entity.id, "type": entity.type}
    for name, attr in entity.attrs.items():
        out[name] = _ld_attr(attr)
    out["@context"] = contexts if isinstance(contexts, str) else list(contexts)
    return out


_V2_TYPE_OF: Final[dict[type, str]] = {float: "Number", int: "Number", str: "Text", bool: "Boolean", type(None): "None"}
"""NGSI v2 attribute type by the value's exact Python type (checked first: the common case)."""


def _v2_type(attr: Attr) -> str:
    value = attr.value
    if attr.kind is _RELATIONSHIP:
        return "Relationship"
    if attr.kind is _GEO_PROPERTY:
        return "geo:json"
    exact = _V2_TYPE_OF.get(type(value))
    if exact is not None:
        return exact
    if isinstance(value, datetime):
        return "DateTime"
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int | float):
        return "Number"
    if isinstance(value, str):
        return "Text"
    return "StructuredValue"


def _v2_attr(attr: Attr) -> dict[str, JSON]:
    out: dict[str, JSON] = {"type": _v2_type(attr), "value": _plain(attr.value)}
    if attr.observed_at is None and attr.unit_code is None and attr.clock_quality is None:
        return out
    metadata: dict[str, JSON] = {}
    if attr.observed_at is not None:
        metadata["dateObserved"] = {"type": "DateTime", "value": _iso_of_epoch(attr.observed_at)}
    if attr.unit_code is not None:
        metadata["unitCode"] = {"type": "Text", "value": attr.unit_code}
    if attr.clock_quality is not None:
        metadata["clockQuality"] = {"type": "Text", "value": attr.clock_quality}
    out["metadata"] = metadata
    return out


def to_ngsi_v2(entity: Entity) -> dict[str, JSON]:
    """The entity in NGSI v2 normalized form (``metadata`` carries ``dateObserved``, ``unitCode``, ``clockQuality``)."""
    out: dict[str, JSON] = {"id": entity.id, "type": entity.type}
    for name, attr in entity.attrs.items():
        out[name] = _v2_attr(attr)
    return out


def to_key_values(entity: Entity) -> dict[str, JSON]:
    """The key-values projection ``{"id", "type", name: value}`` (date-times as ISO strings): what schemas check."""
    out: dict[str, JSON] = {"id": entity.id, "type": entity.type}
    for name, attr in entity.attrs.items():
        out[name] = _plain(attr.value)
    return out
