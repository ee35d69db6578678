"""The FIWARE Orion (NGSI v2) stand-in: ``POST /v2/op/update`` and ``GET /v2/entities[/{id}]`` scoped by
``Fiware-Service`` and ``Fiware-ServicePath``, with Orion's error bodies ``{"error", "description"}``.

``actionType`` ``append`` creates or updates attributes, ``appendStrict`` refuses existing attributes (422
``Unprocessable``), ``update`` refuses unknown entities (404 ``NotFound``), ``replace`` replaces all attributes,
``delete`` removes entities (matched by id, and by type when one is given); success is 204 with no body. A delete
naming entities that do not exist answers as Orion 3.11+ does: 404 ``NotFound`` when none exists, else the others
are deleted and the answer is 422 ``PartialUpdate`` with ``do not exist: <id> - [entity itself], ...``.
Like Orion, one malformed entity fails the whole request with 400 ``BadRequest``; a body over 1 MB is 413
``RequestEntityTooLarge``; a Content-Type other than JSON is 415.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hw.cityos.faults import Faults, RequestRecord, now
from hw.cityos.oauth import TokenAuthority

MAX_BODY_BYTES = 1024 * 1024
ACTIONS = frozenset({"append", "appendStrict", "update", "replace", "delete"})
_FORBIDDEN = re.compile(r"[\x00-\x20<>\"'=;()&?/#]")
_SERVICE = re.compile(r"^[a-z0-9_]{1,50}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_]{1,50}$")


def orion_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    """An Orion error answer."""
    return JSONResponse({"error": error, "description": description}, status_code=status, headers=headers)


class _Invalid(Exception):
    pass


_Checked = tuple[str, str, dict[str, Any], dict[str, Any]]
"""An entity of a request: id, type, attributes, the entity as sent."""


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 256 or _FORBIDDEN.search(value):
        raise _Invalid(f"Invalid characters in {what}" if isinstance(value, str) and value else f"missing {what}")
    return value


def _check_entity(entity: object) -> tuple[str, str, dict[str, Any]]:
    if not isinstance(entity, dict):
        raise _Invalid("entity must be a JSON object")
    entity_id = _check_name(entity.get("id"), "entity id")
    entity_type = _check_name(entity.get("type", "Thing"), "entity type")
    attributes: dict[str, Any] = {}
    for name, attribute in entity.items():
        if name in ("id", "type"):
            continue
        _check_name(name, "attribute name")
        if not isinstance(attribute, dict) or "value" not in attribute:
            raise _Invalid(f"attribute {name} must be an object with value (normalized representation)")
        if "type" in attribute:
            _check_name(attribute["type"], "attribute type")
        metadata = attribute.get("metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(m, dict) and "value" in m for m in metadata.values()):
            raise _Invalid(f"attribute {name}: metadata must be an object of objects with value")
        attributes[name] = attribute
    return entity_id, entity_type, attributes


class OrionBroker:
    """The stand-in's state (entities per service and service path, request records, faults) and its ASGI app."""

    def __init__(self, *, authority: TokenAuthority | None = None) -> None:
        self.authority = authority
        self.faults = Faults()
        self.scopes: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        """(service, service path) → entity id → ``{"id", "type", attributes...}``."""
        self.records: list[RequestRecord] = []
        self.updates: list[tuple[str, str, str, dict[str, Any]]] = []
        """Every entity update applied, in order: (service, service path, entity id, the entity as sent)."""

    def entities(self, service: str = "", service_path: str = "/") -> dict[str, dict[str, Any]]:
        """The entities stored under a service and service path."""
        return self.scopes.get((service, service_path), {})

    def app(self) -> Starlette:
        """The broker as an ASGI app."""
        return Starlette(
            routes=[
                Route("/v2/op/update", self._update, methods=["POST"]),
                Route("/v2/entities/{entity_id}", self._retrieve, methods=["GET"]),
                Route("/v2/entities", self._list, methods=["GET"]),
            ]
        )

    async def _gate(self, request: Request) -> Response | tuple[str, str]:
        if self.faults.delay_s:
            await asyncio.sleep(self.faults.delay_s)
        if self.authority is not None:
            denied = self.authority.bearer_error(request.headers.get("authorization"))
            if denied is not None:
                return denied
        service = request.headers.get("fiware-service", "")
        if service and not _SERVICE.match(service):
            return orion_error(400, "BadRequest", "bad character in tenant name")
        path = request.headers.get("fiware-servicepath", "/")
        if not path.startswith("/"):
            return orion_error(
                400, "BadRequest", "Only /absolute/ Service Paths allowed [a service path must begin with /]"
            )
        parts = [p for p in path.split("/")[1:] if p]
        if len(parts) > 10 or not all(_PATH_PART.match(p) for p in parts):
            return orion_error(400, "BadRequest", "a component of ServicePath contains an illegal character")
        return service, "/" + "/".join(parts)

    async def _update(self, request: Request) -> Response:
        scope = await self._gate(request)
        ids: list[str] = []
        answer = scope if isinstance(scope, Response) else await self._apply(request, scope, ids)
        self.records.append(RequestRecord(now(), request.url.path, answer.status_code, tuple(ids)))
        return answer

    async def _apply(self, request: Request, scope: tuple[str, str], ids: list[str]) -> Response:
        body = await request.body()
        injected = self.faults.take_status()
        if injected is not None:
            status, retry_after = injected
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            error = {500: "InternalServerError", 429: "TooManyRequests", 503: "ServiceUnavailable"}.get(status, "Error")
            return orion_error(status, error, "injected by the test", headers)
        if len(body) > MAX_BODY_BYTES:
            return orion_error(
                413, "RequestEntityTooLarge", f"payload size: {len(body)}, max size supported: {MAX_BODY_BYTES}"
            )
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return orion_error(415, "UnsupportedMediaType", f"not supported content type: {media or '(none)'}")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return orion_error(400, "ParseError", "Errors found in incoming JSON buffer")
        if not isinstance(document, dict) or not isinstance(document.get("entities"), list):
            return orion_error(400, "BadRequest", "invalid JSON payload, entities must be an array")
        action = document.get("actionType")
        if action not in ACTIONS:
            return orion_error(400, "BadRequest", f"invalid value for /actionType/: {action}")
        checked: list[_Checked] = []
        try:
            for entity in document["entities"]:
                entity_id, entity_type, attributes = _check_entity(entity)
                ids.append(entity_id)
                if self.faults.entity_errors.get(entity_id):
                    raise _Invalid(f"{entity_id}: {self.faults.entity_errors[entity_id]} injected by the test")
                checked.append((entity_id, entity_type, attributes, entity))
        except _Invalid as exc:
            return orion_error(400, "BadRequest", str(exc))
        store = self.scopes.setdefault(scope, {})
        if action == "delete":
            return self._delete(store, checked, scope)
        missing = [e for e, t, _, _ in checked if action == "update" and e not in store]
        if missing:
            return orion_error(404, "NotFound", "The requested entity has not been found. Check type and id")
        for entity_id, entity_type, attributes, entity in checked:
            current = store.get(entity_id)
            if action == "appendStrict" and current is not None and set(attributes) & set(current):
                return orion_error(422, "Unprocessable", "one or more of the attributes in the request already exist")
            if current is None or action == "replace":
                store[entity_id] = {"id": entity_id, "type": entity_type, **attributes}
            else:
                current.update(attributes)
            self.updates.append((scope[0], scope[1], entity_id, entity))
        return Response(status_code=204)

    def _delete(self, store: dict[str, dict[str, Any]], checked: list[_Checked], scope: tuple[str, str]) -> Response:
        missing: list[str] = []
        for entity_id, _type, _attributes, entity in checked:
            current = store.get(entity_id)
            if current is None or ("type" in entity and current["type"] != entity["type"]):
                missing.append(entity_id)
                continue
            del store[entity_id]
            self.updates.append((scope[0], scope[1], entity_id, entity))
        if not missing:
            return Response(status_code=204)
        gone = ", ".join(f"{entity_id} - [entity itself]" for entity_id in missing)
        if len(missing) == len(checked):
            return orion_error(404, "NotFound", f"do not exist: {gone}")
        return orion_error(422, "PartialUpdate", f"do not exist: {gone}")

    async def _retrieve(self, request: Request) -> Response:
        scope = await self._gate(request)
        if isinstance(scope, Response):
            return scope
        entity = self.scopes.get(scope, {}).get(request.path_params["entity_id"])
        if entity is None:
            return orion_error(404, "NotFound", "The requested entity has not been found. Check type and id")
        return JSONResponse(entity)

    async def _list(self, request: Request) -> Response:
        scope = await self._gate(request)
        if isinstance(scope, Response):
            return scope
        wanted = request.query_params.get("type")
        found = [e for e in self.scopes.get(scope, {}).values() if wanted is None or e["type"] in wanted.split(",")]
        try:
            limit = int(request.query_params.get("limit", "20"))
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            return orion_error(400, "BadRequest", "Bad pagination limit / offset")
        if not 1 <= limit <= 1000 or offset < 0:
            return orion_error(400, "BadRequest", "Bad pagination limit / offset")
        headers = (
            {"Fiware-Total-Count": str(len(found))} if "count" in request.query_params.get("options", "") else None
        )
        return JSONResponse(found[offset : offset + limit], headers=headers)
