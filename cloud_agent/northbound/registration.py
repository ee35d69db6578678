"""Registering the agent with a City OS NGSI-LD broker as a context source (the distributed mode).

The broker is told which entity types and attributes the agent holds and where to ask for them
(``POST /ngsi-ld/v1/csourceRegistrations``); it then answers the city's queries by querying the agent's read-only
NGSI-LD API (:mod:`cloud_agent.northbound.context_source`), so the data stays with the agent.

Choices (see ``docs/context-source.md``):

* **mode** ``inclusive`` by default: the broker merges what the agent answers with what it holds itself, which is
  right when the agent also pushes entities to the same broker (the two agree). ``redirect`` suits a deployment
  where nothing is pushed; ``exclusive`` would need every entity id listed, so it is not offered.
* **operations** ``retrieveEntity`` and ``queryEntity``: the agent serves nothing else.
* A fixed registration id per agent (:data:`DEFAULT_ID`), so registering again is idempotent: a 409 AlreadyExists
  answer is followed by ``PATCH`` with the current information (a broker without ``PATCH`` gets ``DELETE`` and a
  new ``POST``). The id the broker reports (``Location``) is kept in :attr:`Registrar.registration_id`.
* 5xx, 429 (honouring ``Retry-After``) and connection failures are retried with exponential back-off and jitter,
  up to ``attempts`` tries; other 4xx answers are refused at once with the broker's ProblemDetails detail.
* ``contextSourceInfo`` carries the ``Authorization`` header the broker must send when it queries the agent (a
  city-os API token), when one is configured.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, unquote

import httpx
import orjson

from cloud_agent.northbound.context_source import AGENT_CONTEXT
from cloud_agent.northbound.entities import Entity, Kind
from kakehashi.log import get_logger

__all__ = [
    "DEFAULT_ID",
    "MODES",
    "Registrar",
    "RegistrationConfig",
    "RegistrationError",
    "information_of",
    "served_information",
]

log = get_logger(__name__)

DEFAULT_ID: Final = "urn:ngsi-ld:ContextSourceRegistration:kakehashi-agent"
MODES: Final = ("inclusive", "redirect", "auxiliary")
OPERATIONS: Final = ("retrieveEntity", "queryEntity")
_PATH: Final = "/ngsi-ld/v1/csourceRegistrations"
_RETRIED: Final = frozenset({429, 500, 502, 503, 504})

Information = list[dict[str, Any]]
HeaderSource = Callable[[], Awaitable[Mapping[str, str]]]


class RegistrationError(Exception):
    """The broker refused the registration (``status`` its answer, 0: never reached) or retries ran out."""

    def __init__(self, message: str, *, status: int = 0, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    """Where to register and what to say."""

    broker_url: str
    """The broker's base URL (``https://cityos.example``); ``/ngsi-ld/v1/csourceRegistrations`` is appended."""
    endpoint: str
    """The agent's public base URL: the broker appends ``/ngsi-ld/v1/entities...`` to it."""
    registration_id: str = DEFAULT_ID
    mode: str = "inclusive"
    tenant: str | None = None
    """Sent as ``NGSILD-Tenant`` when set."""
    agent_token: str | None = None
    """A city-os API token the broker sends back to the agent (``contextSourceInfo`` Authorization)."""
    timeout_ms: int = 5000
    """How long the broker should wait for the agent's answer (``management.timeout``)."""
    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"registration mode {self.mode!r} is not one of {', '.join(MODES)}")
        for name, url in (("broker_url", self.broker_url), ("endpoint", self.endpoint)):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{name} {url!r} must be an http(s) URL")
        if self.attempts < 1:
            raise ValueError("attempts must be 1 or more")


def information_of(entities: Sequence[Entity]) -> Information:
    """The ``information`` of a registration: one entry per entity type with its property and relationship names."""
    by_type: dict[str, tuple[set[str], set[str]]] = {}
    for entity in entities:
        properties, relationships = by_type.setdefault(entity.type, (set(), set()))
        for name, attr in entity.attrs.items():
            (relationships if attr.kind is Kind.RELATIONSHIP else properties).add(name)
    information: Information = []
    for entity_type in sorted(by_type):
        properties, relationships = by_type[entity_type]
        entry: dict[str, Any] = {"entities": [{"type": entity_type}]}
        if properties:
            entry["propertyNames"] = sorted(properties)
        if relationships:
            entry["relationshipNames"] = sorted(relationships)
        information.append(entry)
    return information


async def served_information(entities: AsyncIterable[Entity]) -> Information:
    """:func:`information_of` over what the context source serves now (e.g. ``EntitySource(registry).scan()``)."""
    return information_of([entity async for entity in entities])


@dataclass
class Registrar:
    """Registers, updates and removes the agent's context-source registration at one broker."""

    config: RegistrationConfig
    client: httpx.AsyncClient
    auth_headers: HeaderSource | None = None
    """Headers for the broker (e.g. an OAuth 2.0 bearer token), asked for before every request."""
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    registration_id: str | None = field(default=None, init=False)
    """The id the broker holds the registration under, once registered."""

    def payload(self, information: Information) -> dict[str, Any]:
        """The ContextSourceRegistration sent to the broker."""
        if not information:
            raise ValueError("a registration needs information: at least one entity type")
        body: dict[str, Any] = {
            "id": self.config.registration_id,
            "type": "ContextSourceRegistration",
            "information": information,
            "endpoint": self.config.endpoint.rstrip("/"),
            "mode": self.config.mode,
            "operations": list(OPERATIONS),
            "management": {"timeout": self.config.timeout_ms},
        }
        if self.config.agent_token:
            body["contextSourceInfo"] = [{"key": "Authorization", "value": f"Bearer {self.config.agent_token}"}]
        body["@context"] = AGENT_CONTEXT["@context"]
        return body

    def _url(self, registration_id: str | None = None) -> str:
        base = self.config.broker_url.rstrip("/") + _PATH
        return base if registration_id is None else f"{base}/{quote(registration_id, safe='')}"

    async def _headers(self, *, body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body:
            headers["Content-Type"] = "application/ld+json"
        if self.config.tenant:
            headers["NGSILD-Tenant"] = self.config.tenant
        if self.auth_headers is not None:
            headers.update(await self.auth_headers())
        return headers

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), self.config.max_delay_s)
        ceiling = min(self.config.max_delay_s, self.config.base_delay_s * 2**attempt)
        return float(ceiling * random.uniform(0.5, 1.0))

    async def _send(self, method: str, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """The broker's answer to one request, retrying transient failures; raises when retries run out."""
        content = orjson.dumps(body) if body is not None else None
        last = "no answer"
        for attempt in range(self.config.attempts):
            response: httpx.Response | None = None
            try:
                headers = await self._headers(body=body is not None)
                response = await self.client.request(method, url, content=content, headers=headers)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in _RETRIED:
                    return response
                last = f"HTTP {response.status_code}: {_detail(response)}"
            if attempt + 1 < self.config.attempts:
                delay = self._delay(attempt, response)
                log.info("csource_registration_retry", method=method, url=url, reason=last, delay_s=round(delay, 3))
                await self.sleep(delay)
        raise RegistrationError(
            f"{method} {url} failed {self.config.attempts} times; last: {last}", status=0, retryable=True
        )

    async def register(self, information: Information) -> str:
        """Register (or bring up to date) the agent's registration; returns the id the broker holds it under."""
        body = self.payload(information)
        response = await self._send("POST", self._url(), body)
        if response.status_code == 201:
            self.registration_id = _created_id(response, self.config.registration_id)
            log.info("csource_registered", id=self.registration_id, broker=self.config.broker_url)
            return self.registration_id
        if response.status_code == 409:
            await self._update(body)
            self.registration_id = self.config.registration_id
            return self.registration_id
        raise _refused("registration", response)

    async def _update(self, body: dict[str, Any]) -> None:
        fragment = {key: value for key, value in body.items() if key not in ("id", "type")}
        url = self._url(self.config.registration_id)
        response = await self._send("PATCH", url, fragment)
        if response.status_code in (200, 204):
            log.info("csource_registration_updated", id=self.config.registration_id)
            return
        if response.status_code not in (404, 405, 501):
            raise _refused("registration update", response)
        # the broker cannot PATCH registrations (or it vanished meanwhile): replace it
        removed = await self._send("DELETE", url)
        if removed.status_code not in (200, 204, 404):
            raise _refused("registration replacement", removed)
        created = await self._send("POST", self._url(), body)
        if created.status_code != 201:
            raise _refused("registration replacement", created)
        log.info("csource_registration_replaced", id=self.config.registration_id)

    async def deregister(self) -> bool:
        """Remove the registration; True when the broker removed it, False when it did not have it."""
        registration_id = self.registration_id or self.config.registration_id
        response = await self._send("DELETE", self._url(registration_id))
        if response.status_code in (200, 204):
            self.registration_id = None
            log.info("csource_deregistered", id=registration_id)
            return True
        if response.status_code == 404:
            self.registration_id = None
            return False
        raise _refused("deregistration", response)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        kind = str(body.get("type", "")).rsplit("/", 1)[-1]
        return f"{kind}: {body.get('detail') or body.get('title') or ''}".strip(": ")
    return str(body)[:200]


def _refused(what: str, response: httpx.Response) -> RegistrationError:
    return RegistrationError(
        f"the broker refused the {what}: HTTP {response.status_code} {_detail(response)}", status=response.status_code
    )


def _created_id(response: httpx.Response, sent: str) -> str:
    location = response.headers.get("location")
    if location and "/csourceRegistrations/" in location:
        return unquote(location.rsplit("/csourceRegistrations/", 1)[1])
    return sent
