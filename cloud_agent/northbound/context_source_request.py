"""What a context-source request asks for: the answer's media type, the request's ``@context``, the query parameters.

* :func:`negotiate` picks ``application/ld+json`` (``@context`` in the body) or ``application/json`` (``@context`` in
  a ``Link`` header) from ``Accept``; anything else is 406.
* :func:`check_link` reads the request's JSON-LD ``Link`` header. Its context is not fetched: names are understood
  by this agent's vocabulary (:class:`Vocabulary`: the Smart Data Models subject contexts it serves plus the NGSI-LD
  core terms), as short names or as full IRIs.
* :func:`entity_query` turns the query string of ``GET /entities`` into an :class:`EntityQuery`, refusing what is
  malformed (400 BadRequestData) and what this context source does not do (422 OperationNotSupported).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from starlette.datastructures import QueryParams

from cloud_agent.northbound import geo, ngsi_ld_query
from cloud_agent.northbound.context_source_errors import NgsiLdError

__all__ = [
    "CONTEXT_REL",
    "DEFAULT_LIMIT",
    "JSON",
    "JSON_LD",
    "MAX_LIMIT",
    "EntityQuery",
    "Vocabulary",
    "check_link",
    "entity_query",
    "negotiate",
    "vocabulary",
]

JSON: Final = "application/json"
JSON_LD: Final = "application/ld+json"
CONTEXT_REL: Final = "http://www.w3.org/ns/json-ld#context"
DEFAULT_LIMIT: Final = 20
MAX_LIMIT: Final = 1000
"""The largest page a query answers (``limit``)."""

_CONTEXTS_DIR: Final = Path(__file__).parent / "datamodels" / "_contexts"
_CORE_TERMS: Final[Mapping[str, str]] = {
    "https://uri.etsi.org/ngsi-ld/location": "location",
    "https://uri.etsi.org/ngsi-ld/observationSpace": "observationSpace",
    "https://uri.etsi.org/ngsi-ld/operationSpace": "operationSpace",
    "https://uri.etsi.org/ngsi-ld/observedAt": "observedAt",
    "https://uri.etsi.org/ngsi-ld/unitCode": "unitCode",
    "https://uri.etsi.org/ngsi-ld/datasetId": "datasetId",
}
_UNSUPPORTED: Final = (
    "scopeQ",
    "lang",
    "csf",
    "pick",
    "omit",
    "datasetId",
    "join",
    "joinLevel",
    "containedBy",
    "entityMap",
    "geometryProperty",
    "expandValues",
    "timerel",
    "timeAt",
    "endTimeAt",
    "aggrMethods",
)
_OPTIONS: Final = frozenset({"keyValues", "normalized", "simplified"})
_UNSUPPORTED_OPTIONS: Final = frozenset({"sysAttrs", "concise", "unitCode", "entityMap", "noOverwrite", "append"})


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """Full IRIs of the served terms, to their short names (entity types and attribute names)."""

    terms: Mapping[str, str]

    def short(self, name: str) -> str:
        """``name`` as the entities spell it: a known IRI becomes its term, anything else is unchanged."""
        return self.terms.get(name, name)


@cache
def vocabulary() -> Vocabulary:
    """The vocabulary of the Smart Data Models subject contexts shipped with the agent, and the NGSI-LD core terms."""
    terms: dict[str, str] = dict(_CORE_TERMS)
    for path in sorted(_CONTEXTS_DIR.glob("*.jsonld")):
        context = json.loads(path.read_text(encoding="utf-8")).get("@context", {})
        for term, definition in context.items():
            iri = definition.get("@id") if isinstance(definition, dict) else definition
            if isinstance(iri, str) and "://" in iri:
                terms.setdefault(iri, term)
    return Vocabulary(terms)


def _media_ranges(accept: str) -> list[tuple[str, float]]:
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if media:
            ranges.append((media.lower(), weight))
    return ranges


def negotiate(accept: str | None) -> str:
    """The answer's media type for the ``Accept`` header (none: ``application/json``); raises 406 otherwise."""
    if not accept or not accept.strip():
        return JSON
    best: tuple[float, str] | None = None
    for media, weight in _media_ranges(accept):
        if weight <= 0:
            continue
        chosen = JSON_LD if media == JSON_LD else JSON if media in (JSON, "application/*", "*/*") else None
        if chosen is not None and (best is None or weight > best[0]):
            best = (weight, chosen)
    if best is None:
        raise NgsiLdError(
            None, f"Accept {accept!r}: this context source answers application/json or application/ld+json", status=406
        )
    return best[1]


_LINK_PART: Final = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]+)*)")


def check_link(link: str | None) -> str | None:
    """The context URL of a JSON-LD ``Link`` header (None when there is none); 400 when it is malformed."""
    if not link:
        return None
    found: list[str] = []
    for match in _LINK_PART.finditer(link):
        url, params = match.group(1).strip(), match.group(2)
        if CONTEXT_REL in params:
            found.append(url)
    if len(found) > 1:
        raise NgsiLdError("BadRequestData", "the request has more than one JSON-LD context Link header")
    if found and not re.match(r"https?://", found[0]):
        raise NgsiLdError("BadRequestData", f"the JSON-LD context Link {found[0]!r} is not an http(s) URL")
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class EntityQuery:
    """A parsed ``GET /entities`` (also used for ``GET /entities/{id}``: only ``attrs`` and the form)."""

    ids: tuple[str, ...] = ()
    id_pattern: re.Pattern[str] | None = None
    types: frozenset[str] | None = None
    attrs: frozenset[str] | None = None
    q: ngsi_ld_query.Query | None = None
    geo: geo.GeoQuery | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    count: bool = False
    key_values: bool = False


def _names(raw: str | None, what: str, short: Vocabulary) -> frozenset[str] | None:
    if raw is None:
        return None
    names = [short.short(name.strip()) for name in raw.split(",")]
    if not all(names):
        raise NgsiLdError("BadRequestData", f"{what} {raw!r} has an empty name: give a comma-separated list")
    return frozenset(names)


def _integer(params: QueryParams, name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise NgsiLdError("BadRequestData", f"{name} must be a whole number of 0 or more, not {raw!r}")
    return int(raw)


def key_values_form(params: QueryParams) -> bool:
    """Whether ``options``/``format`` ask for the simplified (key-values) form; refuses what is not supported."""
    options = {part.strip() for part in params.get("options", "").split(",") if part.strip()}
    unsupported = sorted(options & _UNSUPPORTED_OPTIONS)
    if unsupported:
        raise NgsiLdError(
            "OperationNotSupported", f"options={','.join(unsupported)} is not supported: use keyValues or normalized"
        )
    unknown = sorted(options - _OPTIONS)
    if unknown:
        raise NgsiLdError("BadRequestData", f"options={','.join(unknown)} is not an NGSI-LD option")
    form = params.get("format")
    if form is not None and form not in _OPTIONS:
        raise NgsiLdError("BadRequestData", f"format={form!r}: use keyValues, simplified or normalized")
    if {"keyValues", "simplified"} & options and ("normalized" in options or form == "normalized"):
        raise NgsiLdError("BadRequestData", "keyValues and normalized are both asked for: pick one")
    return bool({"keyValues", "simplified"} & options) or form in ("keyValues", "simplified")


def attrs_of(params: QueryParams) -> frozenset[str] | None:
    """The ``attrs`` projection, as the entities name the attributes."""
    return _names(params.get("attrs"), "attrs", vocabulary())


def _id_pattern(raw: str | None) -> re.Pattern[str] | None:
    if raw is None:
        return None
    if len(raw) > ngsi_ld_query.MAX_PATTERN:
        raise NgsiLdError("BadRequestData", f"idPattern is longer than {ngsi_ld_query.MAX_PATTERN} characters")
    try:
        return re.compile(raw)
    except re.error as exc:
        raise NgsiLdError("BadRequestData", f"idPattern {raw!r} is not a regular expression ({exc})") from None


def entity_query(params: QueryParams) -> EntityQuery:
    """The query of ``GET /entities``; raises :class:`NgsiLdError` naming the parameter that is wrong."""
    for name in _UNSUPPORTED:
        if name in params:
            raise NgsiLdError("OperationNotSupported", f"the {name} parameter is not supported by this context source")
    short = vocabulary()
    raw_ids = params.get("id")
    ids = tuple(part.strip() for part in raw_ids.split(",")) if raw_ids is not None else ()
    if any(not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", entity_id) for entity_id in ids):
        raise NgsiLdError("BadRequestData", f"id {raw_ids!r} must be a comma-separated list of URIs")
    try:
        q = ngsi_ld_query.parse(params["q"], short.short) if "q" in params else None
    except ngsi_ld_query.QueryError as exc:
        raise NgsiLdError("BadRequestData", str(exc)) from None
    try:
        where = geo.parse_geoquery(
            params.get("georel"),
            params.get("geometry"),
            params.get("coordinates"),
            short.short(params["geoproperty"]) if "geoproperty" in params else None,
        )
    except geo.GeoUnsupported as exc:
        raise NgsiLdError("OperationNotSupported", str(exc)) from None
    except geo.GeoError as exc:
        raise NgsiLdError("BadRequestData", str(exc)) from None
    query = EntityQuery(
        ids=ids,
        id_pattern=_id_pattern(params.get("idPattern")),
        types=_names(params.get("type"), "type", short),
        attrs=attrs_of(params),
        q=q,
        geo=where,
        limit=_integer(params, "limit", DEFAULT_LIMIT),
        offset=_integer(params, "offset", 0),
        count=params.get("count", "false") == "true",
        key_values=key_values_form(params),
    )
    if params.get("count", "false") not in ("true", "false"):
        raise NgsiLdError("BadRequestData", "count must be true or false")
    if query.limit > MAX_LIMIT:
        raise NgsiLdError("BadRequestData", f"limit {query.limit} is more than the maximum page of {MAX_LIMIT}")
    if query.limit == 0 and not query.count:
        raise NgsiLdError("BadRequestData", "limit=0 needs count=true (it asks only for the number of results)")
    if not (query.ids or query.id_pattern or query.types or query.attrs or query.q or query.geo):
        raise NgsiLdError(
            "BadRequestData", "a query needs at least one of type, id, idPattern, attrs, q or a geo-query (georel)"
        )
    return query
