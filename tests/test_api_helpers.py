"""Shared pieces of the API tests: a recorder of agent actions and an app over a real registry with a token per role.

Import the fixtures under their names (``from tests.test_api_helpers import api_fixture as api_fixture``) together
with the registry fixtures of :mod:`tests.postgres`; every test then runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from cloud_agent.api import create_app
from cloud_agent.runtime import AgentRuntime
from device_registry import ApiRole, Registry
from kakehashi.wire import JSONObject
from tests.postgres import FakeClock

BASE_URL = "https://agent.test"


@dataclass
class RecorderActions:
    """An AgentActions that records what the API asked the agent to do."""

    desired: list[str] = field(default_factory=list)
    revoked: list[tuple[str, str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    fail_delivery: bool = False

    async def desired_changed(self, gateway_id: str) -> None:
        self.desired.append(gateway_id)
        if self.fail_delivery:
            raise ConnectionError("broker gone")

    async def commands_changed(self, gateway_id: str) -> None:
        self.commands.append(gateway_id)
        if self.fail_delivery:
            raise ConnectionError("broker gone")

    async def identity_revoked(self, entity_id: str, reason: str) -> None:
        self.revoked.append((entity_id, reason))


class FakeMonotonic:
    """The authenticator's cache clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    """A client of the app, the registry and recorder behind it, and a bearer token per role."""

    app: FastAPI
    client: httpx.AsyncClient
    registry: Registry
    actions: RecorderActions
    clock: FakeClock
    tokens: dict[ApiRole, str]

    def auth(self, role: ApiRole = ApiRole.ADMIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def call(self, method: str, path: str, role: ApiRole = ApiRole.ADMIN, **kwargs: Any) -> httpx.Response:
        headers = {**self.auth(role), **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def ok(self, method: str, path: str, role: ApiRole = ApiRole.ADMIN, **kwargs: Any) -> Any:
        response = await self.call(method, path, role, **kwargs)
        assert response.status_code < 300, response.text
        return response.json()


TOKEN_NAMES = {
    ApiRole.ADMIN: "root@city",
    ApiRole.ASSET_MANAGER: "tanaka@city",
    ApiRole.VIEWER: "sato@city",
    ApiRole.CITY_OS: "city-os",
}


def metrics() -> JSONObject:
    return {"ingest": {"readings": 42}}


@pytest.fixture(name="actions")
def actions_fixture() -> RecorderActions:
    return RecorderActions()


@pytest.fixture(name="api")
async def api_fixture(registry: Registry, clock: FakeClock, actions: RecorderActions) -> AsyncIterator[Api]:
    tokens = {}
    for role, name in TOKEN_NAMES.items():
        tokens[role], _ = await registry.create_api_token(name, role, actor="bootstrap")
    app = create_app(AgentRuntime(registry=registry, actions=actions, metrics=metrics))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as client:
        yield Api(app=app, client=client, registry=registry, actions=actions, clock=clock, tokens=tokens)


def assert_error(response: httpx.Response, status: int, error: str, *fragments: str) -> dict[str, Any]:
    """The answer is the JSON error shape with ``status`` and ``error``, its detail containing ``fragments``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict)
    assert body["error"] == error, body
    assert isinstance(body["detail"], str), body
    assert body["detail"], body
    for fragment in fragments:
        assert fragment in body["detail"], body
    return body
