"""The API's error shape for every mapped error, unexpected failures as logged 500s, and the OpenAPI document."""

from __future__ import annotations

import logging

import pytest

from cloud_agent.pki.errors import PkiError
from device_registry import ApiRole
from device_registry.errors import (
    AlreadyExists,
    IllegalTransition,
    InvalidInput,
    NotFound,
    SchemaMismatch,
    StaleVersion,
    TokenRefused,
    TrafficRefused,
)
from kakehashi.errors import KakehashiError
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture
from tests.test_api_helpers import Api, assert_error
from tests.test_api_helpers import actions_fixture as actions_fixture
from tests.test_api_helpers import api_fixture as api_fixture


class Unavailable(KakehashiError):
    reason = "enrollment_disabled"
    http_status = 503


FAILURES: dict[str, tuple[Exception, int, str]] = {
    "invalid": (InvalidInput("label key 'Zone' must be lowercase"), 400, "invalid"),
    "not-found": (NotFound("there is no device with id 'wl-9'"), 404, "not_found"),
    "exists": (AlreadyExists("gateway gw-1 already exists"), 409, "already_exists"),
    "illegal": (
        IllegalTransition(
            "device wl-1 is decommissioned: ...", entity_id="wl-1", from_state="decommissioned", to_state="active"
        ),
        409,
        "illegal_transition",
    ),
    "stale": (
        StaleVersion("gateway gw-1 reported version 3, older than 4", reason="stale_version"),
        409,
        "stale_version",
    ),
    "token": (TokenRefused("the enrollment token was used already", reason="token_used"), 401, "token_used"),
    "traffic": (TrafficRefused("gateway gw-1 is suspended: its reports are refused"), 409, "inactive"),
    "schema": (SchemaMismatch("database schema is newer", reason="schema_too_new"), 400, "schema_too_new"),
    "pki": (PkiError("the CSR is not ECDSA P-256", reason="csr_key_type"), 400, "csr_key_type"),
    "own-status": (Unavailable("this agent has no CA: enrollment is off"), 503, "enrollment_disabled"),
}


@pytest.fixture(name="failing")
def failing_fixture(api: Api) -> Api:
    async def fail(kind: str) -> None:
        if kind == "crash":
            raise RuntimeError("disk on fire")
        raise FAILURES[kind][0]

    api.app.add_api_route("/v1/test-failures/{kind}", fail, methods=["GET"])
    return api


async def test_each_mapped_error_answers_in_the_error_shape(failing: Api) -> None:
    for kind, (exc, status, reason) in FAILURES.items():
        response = await failing.call("GET", f"/v1/test-failures/{kind}")
        body = assert_error(response, status, reason, str(exc))
        if isinstance(exc, IllegalTransition):
            assert (body["entity"], body["from"], body["to"]) == ("wl-1", "decommissioned", "active")
        else:
            assert set(body) == {"error", "detail"}
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    metrics = await failing.ok("GET", "/v1/agent/metrics", ApiRole.VIEWER)
    assert metrics["api_errors"] == {reason: 1 for _, _, reason in FAILURES.values()}


async def test_an_unexpected_failure_is_a_logged_500_and_the_api_keeps_answering(
    failing: Api, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="cloud_agent.api"):
        response = await failing.call("GET", "/v1/test-failures/crash")
    assert_error(response, 500, "internal", "RuntimeError", "log")
    assert "disk on fire" not in response.text  # internals stay in the log
    logged = [r for r in caplog.records if r.getMessage() == "api_unexpected_error"]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert "disk on fire" in str(logged[0].exc_info[1])
    assert (await failing.client.get("/v1/agent/health")).status_code == 200
    assert (await failing.ok("GET", "/v1/agent/metrics"))["api_errors"] == {"internal": 1}


async def test_refusals_are_logged_as_structured_events(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cloud_agent.api"):
        await api.call("GET", "/v1/api-tokens", ApiRole.VIEWER)
    refused = [r for r in caplog.records if r.getMessage() == "api_refused"]
    assert len(refused) == 1
    fields = refused[0].kh_fields  # type: ignore[attr-defined]
    assert (fields["status"], fields["reason"], fields["actor"], fields["path"]) == (
        403,
        "forbidden",
        "sato@city",
        "/v1/api-tokens",
    )
    requests = [r for r in caplog.records if r.getMessage() == "api_request"]
    assert requests[-1].kh_fields["status"] == 403  # type: ignore[attr-defined]


async def test_the_openapi_document_lists_the_endpoints(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    paths = document["paths"]
    expected = {
        "/v1/organisations": {"get", "post"},
        "/v1/gateways": {"get", "post"},
        "/v1/gateways/{gateway_id}": {"get"},
        "/v1/gateways/{gateway_id}/completeness": {"get"},
        "/v1/gateways/{gateway_id}/enrollment-tokens": {"post"},
        "/v1/gateways/{entity_id}/lifecycle": {"post"},
        "/v1/gateways/{entity_id}/twin": {"get"},
        "/v1/gateways/{entity_id}/twin/desired": {"patch"},
        "/v1/devices": {"get", "post"},
        "/v1/devices/{device_id}": {"get"},
        "/v1/devices/{device_id}/gateway": {"put"},
        "/v1/devices/{device_id}/consent": {"put"},
        "/v1/devices/{device_id}/hardware-replacements": {"post"},
        "/v1/devices/{entity_id}/lifecycle": {"post"},
        "/v1/devices/{entity_id}/twin": {"get"},
        "/v1/devices/{entity_id}/twin/desired": {"patch"},
        "/v1/devices/{entity_id}/latest": {"get"},
        "/v1/devices/{entity_id}/history": {"get"},
        "/v1/audit": {"get"},
        "/v1/api-tokens": {"get", "post"},
        "/v1/api-tokens/{name}/revoke": {"post"},
        "/v1/agent/health": {"get"},
        "/v1/agent/metrics": {"get"},
        "/v1/enroll": {"post"},
        "/v1/enroll/renew": {"post"},
        "/v1/devices/import": {"post"},
        "/v1/entities/{entity_id}": {"get"},
    }
    for path, methods in expected.items():
        assert set(paths.get(path, {})) >= methods, path
    assert document["components"]["securitySchemes"]["ApiToken"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "kh_...",
        "description": document["components"]["securitySchemes"]["ApiToken"]["description"],
    }
    device_list = paths["/v1/devices"]["get"]
    assert {p["name"] for p in device_list["parameters"]} == {
        "organisation",
        "kind",
        "state",
        "gateway",
        "label",
        "after",
        "limit",
    }
    assert "ApiToken" in device_list["security"][0]
    assert "security" not in paths["/v1/agent/health"]["get"]
    assert "ErrorBody" in str(paths["/v1/devices/{device_id}"]["get"]["responses"]["404"])
    docs = await api.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
