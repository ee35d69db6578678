"""Registering the agent as an NGSI-LD context source with a City OS broker (the hw.cityos stand-in, in process).

201 with Location (the id kept), 409 followed by an update (PATCH where the broker has it, else DELETE + POST),
retries with back-off on 503 / Retry-After and refused connections, 4xx refused at once with the ProblemDetails
detail, deregistration; the information sent is what the context source serves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request, Response

from cloud_agent.northbound.context_source_entities import EntitySource
from cloud_agent.northbound.registration import (
    DEFAULT_ID,
    Registrar,
    RegistrationConfig,
    RegistrationError,
    served_information,
)
from device_registry import Registry
from hw.cityos.ngsi_ld import NgsiLdBroker
from tests.postgres import FakeClock
from tests.test_context_source import build_city

BROKER = "http://cityos.test"
AGENT = "https://agent.kakogawa.example"
INFORMATION = [{"entities": [{"type": "Device"}], "propertyNames": ["batteryLevel", "location"]}]


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def registrar(app: Any, sleeps: Sleeps, **config: Any) -> Registrar:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BROKER)
    return Registrar(RegistrationConfig(broker_url=BROKER, endpoint=AGENT, **config), client, sleep=sleeps)


@pytest.fixture(name="registry")
async def sqlite_registry(tmp_path: Path) -> AsyncIterator[Registry]:
    clock = FakeClock()
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", clock=clock)
    await build_city(registry, clock)
    try:
        yield registry
    finally:
        await registry.close()


async def test_register_what_is_served_then_deregister(registry: Registry) -> None:
    broker, sleeps = NgsiLdBroker(), Sleeps()
    information = await served_information(EntitySource(registry).scan())
    types = [entry["entities"][0]["type"] for entry in information]
    assert types == ["ACMeasurement", "Device", "DeviceMeasurement", "FloodMonitoring", "WaterObserved"]
    flood = information[types.index("FloodMonitoring")]
    assert {"currentLevel", "stage", "alertLevel", "location"} <= set(flood["propertyNames"])
    assert flood["relationshipNames"] == ["refDevice"]
    agent = registrar(broker.app(), sleeps, agent_token="kh_city")
    assert agent.registration_id is None
    assert await agent.register(information) == DEFAULT_ID
    assert agent.registration_id == DEFAULT_ID
    stored = broker.registrations[DEFAULT_ID]
    assert stored["type"] == "ContextSourceRegistration"
    assert (stored["endpoint"], stored["mode"], stored["operations"]) == (
        AGENT,
        "inclusive",
        ["retrieveEntity", "queryEntity"],
    )
    assert stored["information"] == information
    assert stored["contextSourceInfo"] == [{"key": "Authorization", "value": "Bearer kh_city"}]
    assert stored["@context"][-1] == "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
    assert "tag-0001" not in orjson.dumps(stored).decode()
    assert await agent.deregister() is True
    assert (broker.registrations, agent.registration_id) == ({}, None)
    assert await agent.deregister() is False  # 404: already gone
    assert sleeps.delays == []


async def test_conflict_replaces_where_the_broker_cannot_patch() -> None:
    broker, sleeps = NgsiLdBroker(), Sleeps()
    await registrar(broker.app(), sleeps).register(INFORMATION)
    again = registrar(broker.app(), sleeps, mode="redirect")
    assert await again.register(INFORMATION) == DEFAULT_ID  # 409, PATCH is 405 here: DELETE + POST
    assert broker.registrations[DEFAULT_ID]["mode"] == "redirect"
    assert list(broker.registrations) == [DEFAULT_ID]


def patching_broker(seen: list[tuple[str, str, dict[str, str], Any]]) -> FastAPI:
    """A broker that has the registration already (409) and updates it with PATCH (204), as the spec says."""
    app = FastAPI()

    @app.api_route("/ngsi-ld/v1/csourceRegistrations{rest:path}", methods=["POST", "PATCH"])
    async def registrations(request: Request, rest: str) -> Response:
        body = orjson.loads(await request.body())
        seen.append((request.method, request.url.path, dict(request.headers), body))
        if request.method == "POST":
            problem = {
                "type": "https://uri.etsi.org/ngsi-ld/errors/AlreadyExists",
                "title": "The referred element already exists",
                "status": 409,
                "detail": "exists",
            }
            return Response(orjson.dumps(problem), status_code=409, media_type="application/json")
        return Response(status_code=204)

    return app


async def test_conflict_is_patched_with_tenant_and_broker_token() -> None:
    seen: list[tuple[str, str, dict[str, str], Any]] = []
    sleeps = Sleeps()
    agent = registrar(patching_broker(seen), sleeps, tenant="kakogawa")

    async def token() -> dict[str, str]:
        return {"Authorization": "Bearer city-token"}

    agent.auth_headers = token
    assert await agent.register(INFORMATION) == DEFAULT_ID
    assert [(method, path) for method, path, _, _ in seen] == [
        ("POST", "/ngsi-ld/v1/csourceRegistrations"),
        ("PATCH", f"/ngsi-ld/v1/csourceRegistrations/{DEFAULT_ID}"),
    ]
    _, _, headers, fragment = seen[1]
    assert (headers["ngsild-tenant"], headers["authorization"]) == ("kakogawa", "Bearer city-token")
    assert headers["content-type"] == "application/ld+json"
    assert "id" not in fragment
    assert "type" not in fragment
    assert fragment["information"] == INFORMATION


class Flaky:
    """An ASGI wrapper: the first ``failures`` requests answer 503 with Retry-After, or fail to connect."""

    def __init__(self, app: Any, failures: int) -> None:
        self.app, self.failures = app, failures

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.failures > 0:
            self.failures -= 1
            response = Response(b'{"type":"about:blank"}', status_code=503, headers={"Retry-After": "2"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def test_retries_with_backoff_then_registers() -> None:
    broker, sleeps = NgsiLdBroker(), Sleeps()
    agent = registrar(Flaky(broker.app(), failures=2), sleeps)
    assert await agent.register(INFORMATION) == DEFAULT_ID
    assert sleeps.delays == [2.0, 2.0]  # Retry-After honoured


async def test_refused_connections_back_off_and_give_up() -> None:
    attempts: list[float] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(1)
        raise httpx.ConnectError("connection refused", request=request)

    sleeps = Sleeps()
    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse), base_url=BROKER)
    config = RegistrationConfig(broker_url=BROKER, endpoint=AGENT, attempts=4, base_delay_s=1.0)
    with pytest.raises(RegistrationError) as refused:
        await Registrar(config, client, sleep=sleeps).register(INFORMATION)
    assert refused.value.retryable
    assert "ConnectError" in str(refused.value)
    assert len(attempts) == 4
    assert len(sleeps.delays) == 3
    assert all(0.5 * 2**n <= delay <= 2**n for n, delay in enumerate(sleeps.delays))


async def test_bad_request_is_refused_at_once_with_the_problem_detail() -> None:
    broker, sleeps = NgsiLdBroker(), Sleeps()
    agent = registrar(broker.app(), sleeps, registration_id="not a uri")
    with pytest.raises(RegistrationError) as refused:
        await agent.register(INFORMATION)
    assert (refused.value.status, refused.value.retryable) == (400, False)
    assert "BadRequestData" in str(refused.value)
    assert "not a URI" in str(refused.value)
    assert sleeps.delays == []
    assert agent.registration_id is None


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="mode"):
        RegistrationConfig(broker_url=BROKER, endpoint=AGENT, mode="exclusive")
    with pytest.raises(ValueError, match="endpoint"):
        RegistrationConfig(broker_url=BROKER, endpoint="agent.example")
