"""The NGSI-LD shapes the stand-in broker checks (ETSI GS CIM 009): entities in normalized form, their attributes,
``observedAt``, ``@context`` values, and the ProblemDetails (RFC 7807) error bodies with the NGSI-LD error types."""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Any, Final

ERRORS: Final = "https://uri.etsi.org/ngsi-ld/errors/"
CORE_CONTEXTS: Final = frozenset(
    {
        "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
        "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.6.jsonld",
        "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.7.jsonld",
        "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld",
    }
)
STATUS: Final = {
    "InvalidRequest": 400,
    "BadRequestData": 400,
    "AlreadyExists": 409,
    "OperationNotSupported": 422,
    "ResourceNotFound": 404,
    "InternalError": 500,
    "TooComplexQuery": 403,
    "TooManyResults": 403,
    "LdContextNotAvailable": 503,
    "NoMultiTenantSupport": 501,
    "NonexistentTenant": 404,
}
TITLES: Final = {
    "InvalidRequest": "The request associated to the operation is syntactically invalid or includes wrong content",
    "BadRequestData": "The request includes input data which does not meet the requirements of the operation",
    "AlreadyExists": "The referred element already exists",
    "OperationNotSupported": "The operation is not supported",
    "ResourceNotFound": "The referred resource has not been found",
    "InternalError": "There has been an error during the operation execution",
    "TooComplexQuery": "The query is too complex",
    "TooManyResults": "The query result exceeds the limits",
    "LdContextNotAvailable": "A remote JSON-LD @context has not been retrieved",
    "NoMultiTenantSupport": "The broker does not support multi-tenancy",
    "NonexistentTenant": "The addressed tenant does not exist",
}
ATTRIBUTE_TYPES: Final = frozenset(
    {"Property", "Relationship", "GeoProperty", "LanguageProperty", "VocabProperty", "JsonProperty", "ListProperty"}
)
GEOMETRY_TYPES: Final = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon"})
GEO_ATTRIBUTES: Final = frozenset({"location", "observationSpace", "operationSpace"})
RESERVED: Final = frozenset({"@context", "id", "type", "scope", "createdAt", "modifiedAt", "deletedAt"})
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"]+$")
_NAME = re.compile(r"^[^\s<>\"'=;()]+$")
_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


class ShapeError(Exception):
    """An entity does not have the NGSI-LD shape; ``kind`` is the error type's short name."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def problem(kind: str, detail: str, status: int | None = None) -> dict[str, Any]:
    """A ProblemDetails body for the NGSI-LD error type ``kind`` (or ``about:blank`` for a plain HTTP status)."""
    if kind in STATUS:
        return {"type": ERRORS + kind, "title": TITLES[kind], "status": status or STATUS[kind], "detail": detail}
    return {"type": "about:blank", "title": kind, "status": status or 500, "detail": detail}


def is_uri(value: object) -> bool:
    """True for an absolute URI (a URN counts)."""
    return isinstance(value, str) and bool(_URI.match(value))


def check_utc(value: object, where: str) -> None:
    """``value`` must be an ISO 8601 date-time in UTC (``...Z``)."""
    if not isinstance(value, str) or not _UTC.match(value):
        raise ShapeError("BadRequestData", f"{where} must be an ISO 8601 date-time in UTC ending in Z, not {value!r}")
    if not _valid_calendar_time(value[:19]):
        raise ShapeError("BadRequestData", f"{where} is not a valid date-time: {value!r}")


@functools.lru_cache(maxsize=8192)
def _valid_calendar_time(stamp: str) -> bool:
    """Whether ``YYYY-MM-DDTHH:MM:SS`` names a real moment (no 30 February, no hour 24); the attributes of one entity
    mostly share their time, so the answer is cached."""
    try:
        datetime.fromisoformat(stamp)
    except ValueError:
        return False
    return True


def context_urls(context: object) -> list[str]:
    """The remote context URLs in an ``@context`` value; raises for a value that is not a JSON-LD context."""
    items = context if isinstance(context, list) else [context]
    if not items:
        raise ShapeError("BadRequestData", "@context is empty")
    urls: list[str] = []
    for item in items:
        if isinstance(item, str):
            if not is_uri(item):
                raise ShapeError("BadRequestData", f"@context entry {item!r} is not a URL")
            urls.append(item)
        elif not isinstance(item, dict):
            raise ShapeError("BadRequestData", "@context entries must be URLs or objects")
    return urls


def check_entity(entity: object) -> str:
    """Checks one entity in normalized form; returns its id."""
    if not isinstance(entity, dict):
        raise ShapeError("BadRequestData", "an entity must be a JSON object")
    entity_id = entity.get("id")
    if not is_uri(entity_id):
        raise ShapeError("BadRequestData", f"the entity id must be a URI, not {entity_id!r}")
    kinds = entity.get("type")
    names = kinds if isinstance(kinds, list) else [kinds]
    if not names or not all(isinstance(name, str) and _NAME.match(name) for name in names):
        raise ShapeError("BadRequestData", f"entity {entity_id}: type must be a name or a list of names")
    for name, attribute in entity.items():
        if name in RESERVED:
            continue
        if not _NAME.match(name):
            raise ShapeError("BadRequestData", f"entity {entity_id}: attribute name {name!r} has forbidden characters")
        instances = attribute if isinstance(attribute, list) else [attribute]
        if not instances:
            raise ShapeError("BadRequestData", f"entity {entity_id}: attribute {name} is an empty list")
        dataset_ids = [_check_attribute(f"{entity_id}: {name}", name, each) for each in instances]
        if len(set(dataset_ids)) != len(dataset_ids):
            raise ShapeError("BadRequestData", f"entity {entity_id}: attribute {name} repeats a datasetId")
    return str(entity_id)


def _check_attribute(where: str, name: str, attribute: object, nested: bool = False) -> str | None:
    if not isinstance(attribute, dict):
        raise ShapeError("BadRequestData", f"{where} must be an attribute object with type and value or object")
    kind = attribute.get("type")
    if kind not in ATTRIBUTE_TYPES:
        raise ShapeError("BadRequestData", f"{where}: type must be one of {sorted(ATTRIBUTE_TYPES)}, not {kind!r}")
    if name in GEO_ATTRIBUTES and kind != "GeoProperty":
        raise ShapeError("BadRequestData", f"{where} must be a GeoProperty")
    if kind == "Relationship":
        targets = attribute.get("object")
        if not all(is_uri(target) for target in (targets if isinstance(targets, list) else [targets])):
            raise ShapeError("BadRequestData", f"{where}: a Relationship's object must be a URI")
    elif kind == "GeoProperty":
        _check_geometry(where, attribute.get("value"))
    elif kind == "LanguageProperty":
        if not isinstance(attribute.get("languageMap"), dict):
            raise ShapeError("BadRequestData", f"{where}: a LanguageProperty needs a languageMap object")
    elif kind == "JsonProperty":
        if "json" not in attribute:
            raise ShapeError("BadRequestData", f"{where}: a JsonProperty needs json")
    elif kind == "VocabProperty":
        if not attribute.get("vocab"):
            raise ShapeError("BadRequestData", f"{where}: a VocabProperty needs vocab")
    elif attribute.get("value") is None:
        raise ShapeError("BadRequestData", f"{where}: a {kind} needs a value (null is not allowed)")
    for key in ("observedAt",):
        if key in attribute:
            check_utc(attribute[key], f"{where}.{key}")
    if "unitCode" in attribute and not isinstance(attribute["unitCode"], str):
        raise ShapeError("BadRequestData", f"{where}.unitCode must be a string")
    dataset_id = attribute.get("datasetId")
    if dataset_id is not None and not is_uri(dataset_id):
        raise ShapeError("BadRequestData", f"{where}.datasetId must be a URI")
    if not nested:
        skip = {"type", "value", "object", "languageMap", "json", "vocab", "observedAt", "unitCode", "datasetId"}
        for sub, value in attribute.items():
            if sub not in skip and sub not in RESERVED and isinstance(value, dict) and "type" in value:
                _check_attribute(f"{where}.{sub}", sub, value, nested=True)
    return dataset_id if isinstance(dataset_id, str) else None


def _check_geometry(where: str, value: object) -> None:
    if not isinstance(value, dict) or value.get("type") not in GEOMETRY_TYPES:
        raise ShapeError("BadRequestData", f"{where}: a GeoProperty's value must be a GeoJSON geometry")
    coordinates = value.get("coordinates")
    if not isinstance(coordinates, list) or not coordinates:
        raise ShapeError("BadRequestData", f"{where}: GeoJSON coordinates are missing")
    if value["type"] == "Point":
        if not (2 <= len(coordinates) <= 3 and all(isinstance(c, int | float) for c in coordinates)):
            raise ShapeError("BadRequestData", f"{where}: a Point needs [longitude, latitude]")
        if not (-180 <= coordinates[0] <= 180 and -90 <= coordinates[1] <= 90):
            raise ShapeError("BadRequestData", f"{where}: Point coordinates out of range (longitude first)")
