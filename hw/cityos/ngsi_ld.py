"""The NGSI-LD context broker stand-in: batch upsert, retrieve by id, query by type, context-source registrations.

``POST /ngsi-ld/v1/entityOperations/upsert[?options=update|replace]`` checks each entity's shape
(:mod:`hw.cityos.ld_shapes`) and its ``@context`` (in every entity with ``application/ld+json``; absent from the
entities with ``application/json``, where a ``Link`` header may carry it), then answers as ETSI GS CIM 009 says:
201 with the created ids, 204 when every entity existed and was updated, 207 ``{"success": [...], "errors":
[{"entityId", "error": ProblemDetails}]}`` when some failed. Tenants come from ``NGSILD-Tenant`` (upsert creates
one; reading a tenant that does not exist is 404 ``NonexistentTenant``). With a :class:`TokenAuthority` every
request needs a valid bearer token.

``POST /ngsi-ld/v1/entityOperations/delete`` takes a JSON array of entity ids and answers 204 when every one was
deleted, else 207 ``{"success", "errors"}`` where an id that is not there has a ``ResourceNotFound`` (404) error and
one that is not a URI ``BadRequestData``; a body that is not a non-empty array of strings is 400, a tenant that does
not exist 404 ``NonexistentTenant``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hw.cityos.faults import Faults, RequestRecord, now
from hw.cityos.ld_shapes import CORE_CONTEXTS, ShapeError, check_entity, context_urls, is_uri, problem
from hw.cityos.oauth import TokenAuthority

BASE = "/ngsi-ld/v1"
CONTEXT_REL = 'rel="http://www.w3.org/ns/json-ld#context"'
MAX_BATCH = 1000
MAX_BODY_BYTES = 8 * 1024 * 1024


def _problem(kind: str, detail: str, status: int | None = None, headers: dict[str, str] | None = None) -> Response:
    body = problem(kind, detail, status)
    return JSONResponse(body, status_code=body["status"], media_type="application/json", headers=headers)


class NgsiLdBroker:
    """The stand-in's state (entities per tenant, registrations, request records, faults) and its ASGI app."""

    def __init__(
        self, *, authority: TokenAuthority | None = None, allowed_contexts: set[str] | frozenset[str] = frozenset()
    ) -> None:
        self.authority = authority
        self.allowed_contexts = set(CORE_CONTEXTS) | set(allowed_contexts)
        """Remote @context URLs the broker can resolve; any other is 503 LdContextNotAvailable for that entity."""
        self.faults = Faults()
        self.tenants: dict[str, dict[str, dict[str, Any]]] = {}
        """Tenant ("" is the default tenant) → entity id → entity as stored."""
        self.registrations: dict[str, dict[str, Any]] = {}
        self.records: list[RequestRecord] = []
        self.updates: list[tuple[str, str, dict[str, Any]]] = []
        """Every entity update applied, in order: (tenant, entity id, the entity as sent)."""

    def entities(self, tenant: str = "") -> dict[str, dict[str, Any]]:
        """The entities of a tenant as stored."""
        return self.tenants.get(tenant, {})

    def app(self) -> Starlette:
        """The broker as an ASGI app."""
        return Starlette(
            routes=[
                Route(f"{BASE}/entityOperations/upsert", self._upsert, methods=["POST"]),
                Route(f"{BASE}/entityOperations/delete", self._delete, methods=["POST"]),
                Route(f"{BASE}/entities/{{entity_id:path}}", self._retrieve, methods=["GET"]),
                Route(f"{BASE}/entities", self._query, methods=["GET"]),
                Route(f"{BASE}/csourceRegistrations", self._register, methods=["POST"]),
                Route(f"{BASE}/csourceRegistrations/{{reg_id:path}}", self._registration, methods=["GET", "DELETE"]),
            ]
        )

    async def _gate(self, request: Request) -> Response | None:
        if self.faults.delay_s:
            await asyncio.sleep(self.faults.delay_s)
        if self.authority is not None:
            return self.authority.bearer_error(request.headers.get("authorization"))
        return None

    async def _upsert(self, request: Request) -> Response:
        answer = await self._gate(request) or await self._upsert_checked(request)
        ids = getattr(request.state, "entity_ids", ())
        self.records.append(RequestRecord(now(), request.url.path, answer.status_code, tuple(ids)))
        return answer

    async def _upsert_checked(self, request: Request) -> Response:
        body = await request.body()
        injected = self._injected()
        if injected is not None:
            return injected
        options = request.query_params.get("options", "replace")
        if options not in ("update", "replace"):
            return _problem("BadRequestData", f"options must be update or replace for upsert, not {options}")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("application/json", "application/ld+json"):
            return _problem("InvalidRequest", f"unsupported Content-Type {media or '(none)'}", 415)
        link_contexts = self._link_contexts(request) if media == "application/json" else []
        if isinstance(link_contexts, Response):
            return link_contexts
        if len(body) > MAX_BODY_BYTES:
            return _problem("Payload Too Large", f"the body exceeds {MAX_BODY_BYTES} bytes", 413)
        try:
            entities = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _problem("InvalidRequest", f"the body is not valid JSON: {exc}")
        if not isinstance(entities, list) or not entities:
            return _problem("BadRequestData", "the body must be a non-empty JSON array of entities")
        if len(entities) > MAX_BATCH:
            return _problem("Payload Too Large", f"at most {MAX_BATCH} entities per batch", 413)
        tenant = request.headers.get("ngsild-tenant", "")
        request.state.entity_ids = [e.get("id", "") if isinstance(e, dict) else "" for e in entities]
        store = self.tenants.setdefault(tenant, {})
        created: list[str] = []
        success: list[str] = []
        errors: list[dict[str, Any]] = []
        for entity in entities:
            try:
                entity_id = self._check(entity, media, link_contexts)
            except ShapeError as exc:
                raw_id = entity.get("id") if isinstance(entity, dict) else None
                errors.append(
                    {"entityId": raw_id if isinstance(raw_id, str) else "", "error": problem(exc.kind, exc.detail)}
                )
                continue
            if entity_id in store:
                if options == "replace":
                    store[entity_id] = dict(entity)
                else:
                    store[entity_id].update(entity)
            else:
                store[entity_id] = dict(entity)
                created.append(entity_id)
            success.append(entity_id)
            self.updates.append((tenant, entity_id, entity))
        if errors:
            return JSONResponse({"success": success, "errors": errors}, status_code=207)
        if created:
            return JSONResponse(created, status_code=201)
        return Response(status_code=204)

    def _injected(self) -> Response | None:
        """The status a test injected for this write, as the broker would answer it."""
        injected = self.faults.take_status()
        if injected is None:
            return None
        status, retry_after = injected
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        kind = "InternalError" if status == 500 else ("Too Many Requests" if status == 429 else "Service Unavailable")
        return _problem(kind, "injected by the test", status, headers)

    async def _delete(self, request: Request) -> Response:
        ids: list[str] = []
        answer = await self._gate(request) or self._injected() or await self._delete_checked(request, ids)
        self.records.append(RequestRecord(now(), request.url.path, answer.status_code, tuple(ids)))
        return answer

    async def _delete_checked(self, request: Request, ids: list[str]) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ("application/json", "application/ld+json"):
            return _problem("InvalidRequest", f"unsupported Content-Type {media or '(none)'}", 415)
        try:
            sent = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return _problem("InvalidRequest", f"the body is not valid JSON: {exc}")
        if not isinstance(sent, list) or not sent or not all(isinstance(i, str) for i in sent):
            return _problem("BadRequestData", "the body must be a non-empty JSON array of entity ids")
        if len(sent) > MAX_BATCH:
            return _problem("Payload Too Large", f"at most {MAX_BATCH} entities per batch", 413)
        ids.extend(sent)
        store = self._tenant(request)
        if isinstance(store, Response):
            return store
        success: list[str] = []
        errors: list[dict[str, Any]] = []
        for entity_id in sent:
            injected = self.faults.entity_errors.get(entity_id)
            if injected is not None:
                errors.append({"entityId": entity_id, "error": problem(injected, f"{entity_id}: injected by the test")})
            elif not is_uri(entity_id):
                errors.append({"entityId": entity_id, "error": problem("BadRequestData", f"{entity_id} is not a URI")})
            elif entity_id not in store:
                errors.append({"entityId": entity_id, "error": problem("ResourceNotFound", f"{entity_id} not found")})
            else:
                del store[entity_id]
                success.append(entity_id)
        if errors:
            return JSONResponse({"success": success, "errors": errors}, status_code=207)
        return Response(status_code=204)

    def _link_contexts(self, request: Request) -> list[str] | Response:
        link = request.headers.get("link")
        if link is None:
            return []
        target, _, params = link.partition(";")
        if CONTEXT_REL not in params.replace(" ", "") and CONTEXT_REL not in params:
            return _problem("BadRequestData", 'the Link header must have rel="http://www.w3.org/ns/json-ld#context"')
        url = target.strip().strip("<>")
        if not is_uri(url):
            return _problem("BadRequestData", f"the Link header's context {url!r} is not a URL")
        if url not in self.allowed_contexts:
            return _problem("LdContextNotAvailable", f"cannot retrieve the @context {url}")
        return [url]

    def _check(self, entity: object, media: str, link_contexts: list[str]) -> str:
        entity_id = check_entity(entity)
        assert isinstance(entity, dict)
        if media == "application/ld+json":
            if "@context" not in entity:
                raise ShapeError("BadRequestData", f"{entity_id}: with application/ld+json every entity needs @context")
            for url in context_urls(entity["@context"]):
                if url not in self.allowed_contexts:
                    raise ShapeError("LdContextNotAvailable", f"{entity_id}: cannot retrieve the @context {url}")
        elif "@context" in entity:
            raise ShapeError("BadRequestData", f"{entity_id}: with application/json @context goes in a Link header")
        injected = self.faults.entity_errors.get(entity_id)
        if injected is not None:
            raise ShapeError(injected, f"{entity_id}: {injected} injected by the test")
        return entity_id

    def _tenant(self, request: Request) -> dict[str, dict[str, Any]] | Response:
        tenant = request.headers.get("ngsild-tenant", "")
        if tenant not in self.tenants:
            if not tenant:
                return {}
            return _problem("NonexistentTenant", f"tenant {tenant} does not exist")
        return self.tenants[tenant]

    async def _retrieve(self, request: Request) -> Response:
        denied = await self._gate(request)
        if denied is not None:
            return denied
        entity_id = request.path_params["entity_id"]
        if not is_uri(entity_id):
            return _problem("BadRequestData", f"{entity_id} is not a URI")
        store = self._tenant(request)
        if isinstance(store, Response):
            return store
        if entity_id not in store:
            return _problem("ResourceNotFound", f"entity {entity_id} not found")
        return _entity_response(store[entity_id])

    async def _query(self, request: Request) -> Response:
        denied = await self._gate(request)
        if denied is not None:
            return denied
        kinds = request.query_params.get("type")
        if not kinds:
            return _problem("BadRequestData", "a query needs type (this stand-in queries by type only)")
        try:
            limit = int(request.query_params.get("limit", "20"))
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            return _problem("BadRequestData", "limit and offset must be integers")
        if not 0 <= limit <= 1000 or offset < 0:
            return _problem("TooManyResults" if limit > 1000 else "BadRequestData", "limit is 0..1000, offset ≥ 0")
        store = self._tenant(request)
        if isinstance(store, Response):
            return store
        wanted = set(kinds.split(","))
        found = [e for e in store.values() if wanted & set(e["type"] if isinstance(e["type"], list) else [e["type"]])]
        headers = {"NGSILD-Results-Count": str(len(found))} if request.query_params.get("count") == "true" else None
        return JSONResponse(found[offset : offset + limit], headers=headers, media_type="application/ld+json")

    async def _register(self, request: Request) -> Response:
        denied = await self._gate(request)
        if denied is not None:
            return denied
        try:
            registration = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return _problem("InvalidRequest", f"the body is not valid JSON: {exc}")
        if not isinstance(registration, dict) or registration.get("type") != "ContextSourceRegistration":
            return _problem("BadRequestData", "a registration needs type ContextSourceRegistration")
        endpoint = registration.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            return _problem("BadRequestData", "a registration needs an endpoint URL")
        information = registration.get("information")
        if not isinstance(information, list) or not information or not all(isinstance(i, dict) for i in information):
            return _problem("BadRequestData", "a registration needs a non-empty information array")
        reg_id = registration.get("id") or f"urn:ngsi-ld:ContextSourceRegistration:{uuid.uuid4()}"
        if not is_uri(reg_id):
            return _problem("BadRequestData", f"the registration id {reg_id!r} is not a URI")
        if reg_id in self.registrations:
            return _problem("AlreadyExists", f"registration {reg_id} already exists")
        self.registrations[reg_id] = {**registration, "id": reg_id}
        return Response(status_code=201, headers={"Location": f"{BASE}/csourceRegistrations/{reg_id}"})

    async def _registration(self, request: Request) -> Response:
        denied = await self._gate(request)
        if denied is not None:
            return denied
        reg_id = request.path_params["reg_id"]
        if reg_id not in self.registrations:
            return _problem("ResourceNotFound", f"registration {reg_id} not found")
        if request.method == "DELETE":
            del self.registrations[reg_id]
            return Response(status_code=204)
        return _entity_response(self.registrations[reg_id])


def _entity_response(document: dict[str, Any]) -> Response:
    media = "application/ld+json" if "@context" in document else "application/json"
    return JSONResponse(document, media_type=media)
