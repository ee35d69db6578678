"""The agent as a read-only NGSI-LD context source (ETSI GS CIM 009): its own entities, queried where they live.

Mounted by the agent's API app under ``/ngsi-ld/v1`` (see ``docs/context-source.md``):

* ``GET /ngsi-ld/v1/entities/{entityId}`` -- one entity (``attrs``, ``options=keyValues``); 404 ResourceNotFound.
* ``GET /ngsi-ld/v1/entities`` -- query by ``id``/``idPattern``, ``type``, ``attrs``, ``q``, geo-query
  (``georel``/``geometry``/``coordinates``/``geoproperty``), paged by ``limit`` (at most
  :data:`~cloud_agent.northbound.context_source_request.MAX_LIMIT`) and ``offset``; ``count=true`` adds
  ``NGSILD-Results-Count``; a ``Link rel="next"`` names the next page.
* ``GET /ngsi-ld/v1/jsonldContexts/kakehashi`` -- the ``@context`` the ``application/json`` answers link to.
* anything else under ``/ngsi-ld/v1`` -- 422 OperationNotSupported: this source is read-only.

Entity routes need an API token with role city-os, viewer, asset-manager or admin. ``Accept: application/ld+json``
puts each entity's ``@context`` in the body; ``application/json`` (the default) leaves it out and links the context
in a ``Link`` header. Entities come from :class:`~cloud_agent.northbound.context_source_entities.EntitySource`
(built by the northbound mapping, so watch tags' sightings never appear); every refusal is ProblemDetails
(:mod:`cloud_agent.northbound.context_source_errors`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from cloud_agent.api.auth import EVERYONE, require_role
from cloud_agent.northbound import ngsi_ld_query
from cloud_agent.northbound.context_source_entities import EntitySource
from cloud_agent.northbound.context_source_errors import NgsiLdError, NgsiLdRoute
from cloud_agent.northbound.context_source_request import (
    CONTEXT_REL,
    DEFAULT_LIMIT,
    JSON_LD,
    MAX_LIMIT,
    EntityQuery,
    attrs_of,
    check_link,
    entity_query,
    key_values_form,
    negotiate,
)
from cloud_agent.northbound.entities import Entity, to_key_values, to_ngsi_ld
from cloud_agent.northbound.mapping import CONTEXTS, CORE_CONTEXT, contexts_for
from cloud_agent.runtime import AgentRuntime
from device_registry.models import ApiPrincipal

__all__ = ["AGENT_CONTEXT", "BASE", "CONTEXT_ID", "router"]

BASE: Final = "/ngsi-ld/v1"
CONTEXT_ID: Final = "kakehashi"
AGENT_CONTEXT: Final[dict[str, Any]] = {"@context": [*dict.fromkeys(CONTEXTS.values()), CORE_CONTEXT]}
"""The context of every served entity: the Smart Data Models subject contexts, then the NGSI-LD core context."""
COUNT_HEADER: Final = "NGSILD-Results-Count"

Reader = Annotated[ApiPrincipal, Depends(require_role(*EVERYONE))]


def _parameters(*described: tuple[str, str]) -> dict[str, Any]:
    """OpenAPI query parameters (the routes read them themselves, to refuse them as ProblemDetails)."""
    return {
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
            for name, text in described
        ]
    }


_FORM: Final = (
    ("attrs", "Comma-separated attribute names: only these are answered."),
    ("options", "keyValues for the simplified form (sysAttrs and concise are not supported: 422)."),
    ("format", "simplified, keyValues or normalized."),
)
QUERY_PARAMETERS: Final = _parameters(
    ("type", "Comma-separated entity types (short names or IRIs), e.g. FloodMonitoring,WaterObserved."),
    ("id", "Comma-separated entity ids (URNs)."),
    ("idPattern", "A regular expression searched in the entity id."),
    ("q", "NGSI-LD query language, e.g. stage>=3;currentLevel>2.5 (see docs/context-source.md)."),
    ("georel", "near;maxDistance==<m>, near;minDistance==<m>, within, intersects, disjoint or equals."),
    ("geometry", "Point or Polygon."),
    ("coordinates", "GeoJSON coordinates, e.g. [134.84,34.756]."),
    ("geoproperty", "The geo property to test (default location)."),
    ("limit", f"Page size, default {DEFAULT_LIMIT}, at most {MAX_LIMIT}; 0 with count=true."),
    ("offset", "Entities to skip."),
    ("count", "true adds the NGSILD-Results-Count header."),
    *_FORM,
)
RETRIEVE_PARAMETERS: Final = _parameters(*_FORM)


def _context_link(request: Request) -> str:
    url = str(request.base_url).rstrip("/") + f"{BASE}/jsonldContexts/{CONTEXT_ID}"
    return f'<{url}>; rel="{CONTEXT_REL}"; type="{JSON_LD}"'


def _render(entity: Entity, normalized: dict[str, Any], query: EntityQuery, media: str) -> dict[str, Any]:
    body: dict[str, Any] = dict(to_key_values(entity)) if query.key_values else dict(normalized)
    body.pop("@context", None)
    if query.attrs is not None:
        body = {name: value for name, value in body.items() if name in ("id", "type") or name in query.attrs}
    if media == JSON_LD:
        body["@context"] = contexts_for(entity.type)
    return body


def _answer(request: Request, body: object, media: str, headers: dict[str, str] | None = None) -> JSONResponse:
    links = [] if media == JSON_LD else [_context_link(request)]
    extra = dict(headers or {})
    if "Link" in extra:
        links.append(extra.pop("Link"))
    if links:
        extra["Link"] = ", ".join(links)
    return JSONResponse(body, media_type=media, headers=extra)


def _selected(query: EntityQuery, entity: Entity, normalized: dict[str, Any]) -> bool:
    if query.types is not None and entity.type not in query.types:
        return False
    if query.id_pattern is not None and not query.id_pattern.search(entity.id):
        return False
    if query.attrs is not None and query.attrs.isdisjoint(normalized):
        return False
    if query.q is not None and not ngsi_ld_query.matches(query.q, normalized):
        return False
    return query.geo is None or query.geo.matches(normalized)


async def _listed(source: EntitySource, query: EntityQuery) -> AsyncIterator[Entity]:
    if query.ids:
        for entity in await source.by_ids(query.ids):
            yield entity
        return
    async for entity in source.scan(query.types):
        yield entity


def _next_link(request: Request, query: EntityQuery) -> str:
    params = [(key, value) for key, value in request.query_params.multi_items() if key != "offset"]
    params.append(("offset", str(query.offset + query.limit)))
    encoded = "&".join(f"{quote(key, safe='')}={quote(value, safe=',;:')}" for key, value in params)
    return f'<{BASE}/entities?{encoded}>; rel="next"; type="{JSON_LD}"'


async def _query(request: Request, source: EntitySource) -> Response:
    media = negotiate(request.headers.get("accept"))
    check_link(request.headers.get("link"))
    query = entity_query(request.query_params)
    page: list[dict[str, Any]] = []
    matched = 0
    more = False
    async for entity in _listed(source, query):
        normalized = to_ngsi_ld(entity, contexts_for(entity.type))
        if not _selected(query, entity, normalized):
            continue
        if query.offset <= matched < query.offset + query.limit:
            page.append(_render(entity, normalized, query, media))
        matched += 1
        if matched > query.offset + query.limit:
            more = True
            if not query.count:
                break
    headers: dict[str, str] = {}
    if query.count:
        headers[COUNT_HEADER] = str(matched)
    if more and query.limit > 0:
        headers["Link"] = _next_link(request, query)
    return _answer(request, page, media, headers)


def _only(items: Iterable[Entity], entity_id: str) -> Entity | None:
    return next((item for item in items if item.id == entity_id), None)


async def _retrieve(request: Request, source: EntitySource, entity_id: str) -> Response:
    media = negotiate(request.headers.get("accept"))
    check_link(request.headers.get("link"))
    if ":" not in entity_id:
        raise NgsiLdError("BadRequestData", f"entity id {entity_id!r} is not a URI (e.g. urn:ngsi-ld:Device:wl-0007)")
    attrs = attrs_of(request.query_params)
    query = EntityQuery(ids=(entity_id,), attrs=attrs, key_values=key_values_form(request.query_params))
    entity = _only(await source.by_ids([entity_id]), entity_id)
    if entity is None:
        raise NgsiLdError("ResourceNotFound", f"there is no entity {entity_id} in this context source")
    normalized = to_ngsi_ld(entity, contexts_for(entity.type))
    if attrs is not None and attrs.isdisjoint(normalized):
        names = ", ".join(sorted(attrs))
        raise NgsiLdError("ResourceNotFound", f"entity {entity_id} has none of the attributes {names}")
    return _answer(request, _render(entity, normalized, query, media), media)


def router(runtime: AgentRuntime) -> APIRouter:
    """The context-source routes over ``runtime``'s registry."""
    source = EntitySource(runtime.registry)
    routes = APIRouter(prefix=BASE, route_class=NgsiLdRoute, tags=["NGSI-LD context source"])

    @routes.get("/entities", summary="Query entities (NGSI-LD)", openapi_extra=QUERY_PARAMETERS)
    async def query_entities(request: Request, _principal: Reader) -> Response:
        return await _query(request, source)

    @routes.get("/entities/{entity_id:path}", summary="Retrieve an entity (NGSI-LD)", openapi_extra=RETRIEVE_PARAMETERS)
    async def retrieve_entity(request: Request, entity_id: str, _principal: Reader) -> Response:
        return await _retrieve(request, source, entity_id)

    @routes.get(f"/jsonldContexts/{CONTEXT_ID}", summary="The @context of the served entities")
    async def agent_context() -> Response:
        return JSONResponse(AGENT_CONTEXT, media_type=JSON_LD)

    @routes.api_route("/{operation:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def not_supported(request: Request, operation: str) -> Response:
        raise NgsiLdError(
            "OperationNotSupported",
            f"{request.method} {BASE}/{operation} is not supported: this context source is read-only and answers "
            f"GET {BASE}/entities and GET {BASE}/entities/{{entityId}}",
        )

    return routes
