"""NGSI-LD geo-queries (ETSI GS CIM 009 §4.10) over entities located by GeoJSON Points.

A :class:`GeoQuery` is built from the request parameters ``georel``, ``geometry``, ``coordinates`` and
``geoproperty`` (default ``location``) by :func:`parse_geoquery`, and :meth:`GeoQuery.matches` tests one entity.
Supported relations: ``near;maxDistance==<m>`` and ``near;minDistance==<m>`` around a Point (great-circle distance on
a sphere of :data:`EARTH_RADIUS_M`, haversine), ``within`` a Polygon, ``intersects`` a Point or Polygon, ``disjoint``
from a Point or Polygon and ``equals`` a Point. Entities are compared by their Point locations; an entity whose geo
property is not a Point (or is missing) never matches. Other combinations raise :class:`GeoUnsupported`; malformed
parameters raise :class:`GeoError`. Polygons follow GeoJSON: rings of ``[longitude, latitude]`` positions, closed, the
first ring the outer boundary and the others holes; a point on the boundary is inside.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = ["EARTH_RADIUS_M", "GeoError", "GeoQuery", "GeoUnsupported", "distance_m", "parse_geoquery", "point_of"]

EARTH_RADIUS_M: Final = 6_371_008.8
"""Mean Earth radius (IUGG), metres."""
_EPSILON: Final = 1e-12

Position: TypeAlias = tuple[float, float]
"""``(longitude, latitude)`` in degrees, as in GeoJSON."""
Ring: TypeAlias = tuple[Position, ...]


class GeoError(ValueError):
    """Geo-query parameters that are missing or malformed (answered as BadRequestData)."""


class GeoUnsupported(ValueError):
    """A well-formed geo-query this context source does not evaluate (answered as OperationNotSupported)."""


def distance_m(a: Position, b: Position) -> float:
    """Great-circle distance in metres between two ``(longitude, latitude)`` positions (haversine)."""
    lon1, lat1, lon2, lat2 = (math.radians(v) for v in (a[0], a[1], b[0], b[1]))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _on_segment(p: Position, a: Position, b: Position) -> bool:
    cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    if abs(cross) > _EPSILON:
        return False
    return min(a[0], b[0]) - _EPSILON <= p[0] <= max(a[0], b[0]) + _EPSILON and (
        min(a[1], b[1]) - _EPSILON <= p[1] <= max(a[1], b[1]) + _EPSILON
    )


def _in_ring(p: Position, ring: Ring) -> tuple[bool, bool]:
    """(inside or on the boundary, on the boundary) of a closed ring, by ray casting."""
    inside = False
    for a, b in itertools.pairwise(ring):
        if _on_segment(p, a, b):
            return True, True
        if (a[1] > p[1]) != (b[1] > p[1]):
            crossing = a[0] + (p[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
            if p[0] < crossing:
                inside = not inside
    return inside, False


def in_polygon(p: Position, rings: Sequence[Ring]) -> bool:
    """Whether ``p`` is inside the polygon (outer ring ``rings[0]``, holes after it) or on its boundary."""
    inside, _ = _in_ring(p, rings[0])
    if not inside:
        return False
    for hole in rings[1:]:
        in_hole, on_edge = _in_ring(p, hole)
        if in_hole and not on_edge:
            return False
    return True


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GeoError(f"{what} must be a number, not {value!r}")
    return float(value)


def _position(value: object) -> Position:
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise GeoError(f"a position is [longitude, latitude], not {value!r}")
    lon, lat = _number(value[0], "a longitude"), _number(value[1], "a latitude")
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise GeoError(f"position [{lon}, {lat}] is outside longitude -180..180, latitude -90..90")
    return lon, lat


def _rings(value: object) -> tuple[Ring, ...]:
    if not isinstance(value, list) or not value:
        raise GeoError("Polygon coordinates are a list of rings: [[[lon, lat], [lon, lat], ...]]")
    rings: list[Ring] = []
    for raw in value:
        if not isinstance(raw, list):
            raise GeoError(f"a Polygon ring is a list of positions, not {raw!r}")
        ring = tuple(_position(item) for item in raw)
        if len(ring) < 4 or ring[0] != ring[-1]:
            raise GeoError("a Polygon ring needs at least 4 positions and ends where it starts")
        rings.append(ring)
    return tuple(rings)


def point_of(value: object) -> Position | None:
    """The position of a GeoJSON Point value, or None for any other (or malformed) geometry."""
    if not isinstance(value, Mapping) or value.get("type") != "Point":
        return None
    try:
        return _position(value.get("coordinates"))
    except GeoError:
        return None


@dataclass(frozen=True, slots=True)
class GeoQuery:
    """A parsed geo-query: the relation, its distance bound (``near``), the geometry, and the geo property."""

    relation: str
    geometry: str
    point: Position | None
    rings: tuple[Ring, ...]
    geoproperty: str = "location"
    max_distance: float | None = None
    min_distance: float | None = None

    def matches(self, entity: Mapping[str, object]) -> bool:
        """Whether the normalized (or key-values) ``entity``'s Point satisfies this query."""
        found = entity.get(self.geoproperty)
        value = found.get("value") if isinstance(found, Mapping) and "value" in found else found
        position = point_of(value)
        if position is None:
            return False
        if self.relation == "near":
            assert self.point is not None
            distance = distance_m(position, self.point)
            if self.max_distance is not None and distance > self.max_distance:
                return False
            return self.min_distance is None or distance >= self.min_distance
        if self.geometry == "Point":
            assert self.point is not None
            same = distance_m(position, self.point) <= 1e-6
            return not same if self.relation == "disjoint" else same
        inside = in_polygon(position, self.rings)
        return not inside if self.relation == "disjoint" else inside


_RELATIONS: Final = ("near", "within", "intersects", "disjoint", "equals", "contains", "overlaps")


def _near_bounds(modifiers: list[str]) -> tuple[float | None, float | None]:
    bounds: dict[str, float] = {}
    for modifier in modifiers:
        key, sep, raw = modifier.partition("==")
        if not sep or key not in ("maxDistance", "minDistance"):
            raise GeoError(f"georel near takes maxDistance==<metres> or minDistance==<metres>, not {modifier!r}")
        try:
            value = float(raw)
        except ValueError:
            raise GeoError(f"{key} must be a number of metres, not {raw!r}") from None
        if not math.isfinite(value) or value < 0:
            raise GeoError(f"{key} must be zero or more metres, not {raw!r}")
        bounds[key] = value
    if not bounds:
        raise GeoError("georel near needs maxDistance==<metres> or minDistance==<metres>, e.g. near;maxDistance==500")
    return bounds.get("maxDistance"), bounds.get("minDistance")


def parse_geoquery(
    georel: str | None, geometry: str | None, coordinates: str | None, geoproperty: str | None = None
) -> GeoQuery | None:
    """The geo-query of the request parameters (None when none is given); raises :class:`GeoError` or
    :class:`GeoUnsupported`."""
    if georel is None and geometry is None and coordinates is None:
        return None
    if not georel or not geometry or not coordinates:
        raise GeoError("a geo-query needs georel, geometry and coordinates together")
    relation, *modifiers = georel.split(";")
    if relation not in _RELATIONS:
        raise GeoError(f"georel {relation!r} is not one of {', '.join(_RELATIONS)}")
    if relation != "near" and modifiers:
        raise GeoError(f"georel {relation} takes no modifiers, not {';'.join(modifiers)!r}")
    try:
        raw = json.loads(coordinates)
    except ValueError:
        raise GeoError(f"coordinates must be a JSON array such as [135.0,34.7], not {coordinates!r}") from None
    if relation in ("contains", "overlaps"):
        raise GeoUnsupported(f"georel {relation} is not supported: entities here are Points (use within or near)")
    if geometry not in ("Point", "Polygon"):
        if geometry in ("LineString", "MultiPoint", "MultiLineString", "MultiPolygon"):
            raise GeoUnsupported(f"geometry {geometry} is not supported here: use Point or Polygon")
        raise GeoError(f"geometry {geometry!r} is not a GeoJSON geometry type")
    point: Position | None = None
    rings: tuple[Ring, ...] = ()
    if geometry == "Point":
        point = _position(raw)
    else:
        rings = _rings(raw)
    max_distance = min_distance = None
    if relation == "near":
        if geometry != "Point":
            raise GeoUnsupported("georel near is supported around a Point only")
        max_distance, min_distance = _near_bounds(modifiers)
    elif relation == "within" and geometry != "Polygon":
        raise GeoError("georel within needs a Polygon geometry")
    elif relation == "equals" and geometry != "Point":
        raise GeoUnsupported("georel equals is supported with a Point only")
    return GeoQuery(
        relation=relation,
        geometry=geometry,
        point=point,
        rings=rings,
        geoproperty=geoproperty or "location",
        max_distance=max_distance,
        min_distance=min_distance,
    )
