"""HTTP clients that send a batch of entity documents to the City OS broker: NGSI-LD batch upsert or NGSI v2
``/v2/op/update``, over HTTPS with a configurable CA, with an OAuth 2.0 bearer token where configured.

``push(entities)`` returns the entities the broker refused (entity id → :class:`EntityFailure`); everything else in
the batch was accepted. A failure of the whole request raises :class:`PushError`, which says whether trying again
may help, whether the batch may be split (one bad entity failing the whole request, or a body too large), and any
``Retry-After``. A 401 with a token is answered once by fetching a new token and sending again.

``delete(entities)`` removes entities (id and type) the same way: NGSI-LD batch delete
(``POST /ngsi-ld/v1/entityOperations/delete``, a 207 lists the ids that failed) or NGSI v2 ``/v2/op/update`` with
``actionType: delete``. An entity that is not there (``ResourceNotFound``, Orion's 404 ``NotFound``) counts as
deleted: deleting again is harmless. Orion refuses a batch that names a missing entity (404, or 422
``PartialUpdate`` since Orion 3.11, which deletes the others); the client then deletes that batch one by one.
"""

from __future__ import annotations

import email.utils
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import httpx
import orjson

from cloud_agent.northbound.oauth import TokenError, TokenSource
from cloud_agent.northbound.queue import Document, SerializedEntity, document_id

CORE_CONTEXT: Final = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
UPSERT_PATH: Final = "/ngsi-ld/v1/entityOperations/upsert"
UPDATE_PATH: Final = "/v2/op/update"
DELETE_PATH: Final = "/ngsi-ld/v1/entityOperations/delete"
GONE_LD_ERRORS: Final = frozenset({"ResourceNotFound", "NonexistentTenant"})
"""NGSI-LD error types that mean an entity to delete is not there (any more): the deletion has its effect."""
LD_ERRORS: Final = "https://uri.etsi.org/ngsi-ld/errors/"
TRANSIENT_LD_ERRORS: Final = frozenset({"InternalError", "LdContextNotAvailable"})
"""NGSI-LD error types for which sending the same entity again later may succeed."""
_SERVICE = re.compile(r"^[a-z0-9_]{0,50}$")
_SERVICE_PATH = re.compile(r"^/([A-Za-z0-9_]{1,50}(/[A-Za-z0-9_]{1,50}){0,9})?$")
DETAIL_MAX = 300


@dataclass(frozen=True, slots=True)
class EntityFailure:
    """The broker refused one entity of a batch."""

    kind: str
    """Short error kind (an NGSI-LD error type such as ``BadRequestData``)."""
    detail: str
    transient: bool


class PushError(Exception):
    """The whole request failed."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        transient: bool,
        status: int | None = None,
        retry_after: float | None = None,
        splittable: bool = False,
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail[:DETAIL_MAX]
        self.transient = transient
        self.status = status
        self.retry_after = retry_after
        self.splittable = splittable


class BrokerClient(Protocol):
    """Sends one batch (at most one document per entity id) to the broker."""

    async def push(self, entities: Sequence[Document]) -> dict[str, EntityFailure]: ...


class EntityDeleter(Protocol):
    """Deletes entities (id, type) at the broker; returns those it could not delete (not-found is success)."""

    async def delete(self, entities: Sequence[tuple[str, str]]) -> dict[str, EntityFailure]: ...


def tls_verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    """Certificate verification for the broker: the system trust store, or only the CAs in ``ca_file``."""
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3) in seconds from now: delay-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _HttpBroker:
    """What both kinds of broker client share: the HTTP client, the token, and the request-level answers."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, tokens: TokenSource | None) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens

    async def _post(self, path: str, body: bytes, headers: dict[str, str], params: dict[str, str]) -> httpx.Response:
        for attempt in (1, 2):
            sent = dict(headers)
            token = None
            if self.tokens is not None:
                try:
                    token = await self.tokens.token()
                except TokenError as exc:
                    raise PushError(exc.kind, exc.detail, transient=True) from None
                sent["Authorization"] = f"Bearer {token}"
            try:
                answer = await self.http.post(self.base_url + path, content=body, headers=sent, params=params)
            except httpx.TimeoutException:
                raise PushError("timeout", f"no answer from {self.base_url} in time", transient=True) from None
            except httpx.TransportError as exc:
                kind = "tls" if _caused_by_tls(exc) else "connection"
                raise PushError(kind, f"{self.base_url}: {type(exc).__name__} {exc}", transient=True) from None
            if answer.status_code == 401 and token is not None and self.tokens is not None and attempt == 1:
                self.tokens.invalidate(token)
                continue
            return answer
        raise AssertionError("unreachable")

    def _request_error(self, answer: httpx.Response, kind: str, detail: str) -> PushError:
        status = answer.status_code
        if status == 429 or status == 503:
            wait = retry_after_s(answer.headers.get("retry-after"))
            return PushError(kind, detail, transient=True, status=status, retry_after=wait)
        if status >= 500 or status in (401, 403, 408):
            return PushError(kind, detail, transient=True, status=status)
        return PushError(kind, detail, transient=False, status=status, splittable=True)


class NgsiLdClient(_HttpBroker):
    """NGSI-LD batch upsert with ``options=update``: attributes sent are created or overwritten, others are kept."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        contexts: Sequence[str] = (CORE_CONTEXT,),
        tenant: str | None = None,
        tokens: TokenSource | None = None,
    ) -> None:
        super().__init__(http, base_url, tokens)
        self.contexts = list(contexts)
        self.headers = {"Content-Type": "application/ld+json", "Accept": "application/json"}
        if tenant:
            self.headers["NGSILD-Tenant"] = tenant

    async def push(self, entities: Sequence[Document]) -> dict[str, EntityFailure]:
        documents = [_with_context(e, self.contexts) for e in entities]
        answer = await self._post(UPSERT_PATH, orjson.dumps(documents), self.headers, {"options": "update"})
        if answer.status_code in (200, 201, 204):
            return {}
        if answer.status_code == 207:
            return _ld_failures(answer, [document_id(e) for e in entities])
        kind, detail = _ld_problem(answer)
        raise self._request_error(answer, kind, detail)

    async def delete(self, entities: Sequence[tuple[str, str]]) -> dict[str, EntityFailure]:
        """Batch delete by id; ids the broker does not have count as deleted."""
        ids = [entity_id for entity_id, _type in entities]
        headers = {**self.headers, "Content-Type": "application/json"}
        answer = await self._post(DELETE_PATH, orjson.dumps(ids), headers, {})
        if answer.status_code in (200, 204):
            return {}
        if answer.status_code == 207:
            failures = _ld_failures(answer, ids)
            return {i: failure for i, failure in failures.items() if failure.kind not in GONE_LD_ERRORS}
        kind, detail = _ld_problem(answer)
        if answer.status_code == 404 and kind in GONE_LD_ERRORS:
            return {}
        raise self._request_error(answer, kind, detail)


class NgsiV2Client(_HttpBroker):
    """NGSI v2 ``POST /v2/op/update`` with ``actionType: append`` (create the entity or add/overwrite attributes)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        service: str | None = None,
        service_path: str | None = None,
        tokens: TokenSource | None = None,
    ) -> None:
        super().__init__(http, base_url, tokens)
        if service is not None and not _SERVICE.match(service):
            raise ValueError(f"Fiware-Service {service!r}: lowercase letters, digits and _ only, up to 50")
        if service_path is not None and not _SERVICE_PATH.match(service_path):
            raise ValueError(f"Fiware-ServicePath {service_path!r}: /absolute/path of up to 10 parts of [A-Za-z0-9_]")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if service:
            self.headers["Fiware-Service"] = service
        if service_path:
            self.headers["Fiware-ServicePath"] = service_path

    async def push(self, entities: Sequence[Document]) -> dict[str, EntityFailure]:
        body = orjson.dumps({"actionType": "append", "entities": [_json(e) for e in entities]})
        answer = await self._post(UPDATE_PATH, body, self.headers, {})
        if 200 <= answer.status_code < 300:
            return {}
        kind, detail = _v2_problem(answer)
        raise self._request_error(answer, kind, detail)

    async def delete(self, entities: Sequence[tuple[str, str]]) -> dict[str, EntityFailure]:
        """``actionType: delete``; a missing entity counts as deleted (a refused batch is deleted one by one)."""
        body = orjson.dumps({"actionType": "delete", "entities": [{"id": i, "type": t} for i, t in entities]})
        answer = await self._post(UPDATE_PATH, body, self.headers, {})
        if 200 <= answer.status_code < 300:
            return {}
        kind, detail = _v2_problem(answer)
        missing = (answer.status_code, kind) in ((404, "NotFound"), (422, "PartialUpdate"))
        if missing and len(entities) > 1:
            failures: dict[str, EntityFailure] = {}
            for entity in entities:
                failures.update(await self.delete([entity]))
            return failures
        if missing and answer.status_code == 404:
            return {}
        if missing:
            return {entities[0][0]: EntityFailure(kind, detail[:DETAIL_MAX], False)}
        raise self._request_error(answer, kind, detail)


def _json(document: Document) -> dict[str, Any] | orjson.Fragment:
    return document.json if isinstance(document, SerializedEntity) else document


def _with_context(document: Document, contexts: list[str]) -> dict[str, Any] | orjson.Fragment:
    """An NGSI-LD document with an ``@context`` (a serialized one has its own, as ``to_ngsi_ld`` makes it)."""
    if isinstance(document, SerializedEntity):
        return document.json
    return document if "@context" in document else {**document, "@context": contexts}


def _caused_by_tls(exc: BaseException) -> bool:
    """Whether a transport error comes from the TLS handshake (an untrusted or mismatched certificate)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _v2_problem(answer: httpx.Response) -> tuple[str, str]:
    try:
        error = answer.json()
        return str(error["error"]), str(error.get("description", ""))
    except (ValueError, KeyError, TypeError):
        return f"http_{answer.status_code}", answer.text[:DETAIL_MAX]


def _ld_problem(answer: httpx.Response) -> tuple[str, str]:
    try:
        body = answer.json()
        kind = str(body.get("type", "")).removeprefix(LD_ERRORS)
        detail = str(body.get("detail") or body.get("title") or "")
    except (ValueError, AttributeError):
        return f"http_{answer.status_code}", answer.text[:DETAIL_MAX]
    if not kind or kind == "about:blank":
        kind = f"http_{answer.status_code}"
    return kind, detail


def _ld_failures(answer: httpx.Response, sent: list[str]) -> dict[str, EntityFailure]:
    """The failed entities of a 207; an entity the answer lists neither as success nor as error counts as a
    transient failure (``unconfirmed``), so nothing is taken as delivered without the broker saying so."""
    try:
        result = answer.json()
        errors = list(result["errors"])
        success = {str(i) for i in result.get("success", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise PushError("bad_207", "a 207 answer without an errors array", transient=True, status=207) from None
    failures = {
        entity_id: EntityFailure("unconfirmed", "the 207 answer does not mention it", True)
        for entity_id in sent
        if entity_id not in success
    }
    for item in errors:
        problem = item.get("error", {}) if isinstance(item, dict) else {}
        kind = str(problem.get("type", "")).removeprefix(LD_ERRORS) or "unknown"
        status = problem.get("status")
        transient = kind in TRANSIENT_LD_ERRORS or (isinstance(status, int) and (status >= 500 or status == 429))
        detail = str(problem.get("detail") or problem.get("title") or "")[:DETAIL_MAX]
        failures[str(item.get("entityId", ""))] = EntityFailure(kind, detail, transient)
    return failures
