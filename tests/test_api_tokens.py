"""API tokens through the API (admins only, secret shown once) and enrollment tokens for gateways."""

from __future__ import annotations

import pytest

from device_registry import ApiRole, TokenRefused
from tests.postgres import FakeClock, provisioned_gateway
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture
from tests.test_api_helpers import Api, assert_error
from tests.test_api_helpers import actions_fixture as actions_fixture
from tests.test_api_helpers import api_fixture as api_fixture


async def test_admins_create_list_and_revoke_api_tokens(api: Api) -> None:
    created = await api.ok("POST", "/v1/api-tokens", json={"name": "orion@city", "role": "city-os", "ttl_s": 3600})
    assert (created["name"], created["role"], created["created_by"]) == ("orion@city", "city-os", "root@city")
    assert created["token"].startswith("kh_")
    assert created["expires_at"] is not None
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert (await api.client.get("/v1/devices", headers=headers)).status_code == 200
    assert_error(await api.client.get("/v1/audit", headers=headers), 403, "forbidden", "city-os")
    listed = await api.ok("GET", "/v1/api-tokens")
    assert [t["name"] for t in listed["items"]] == ["city-os", "orion@city", "root@city", "sato@city", "tanaka@city"]
    assert all("token" not in t for t in listed["items"])
    twice = await api.call("POST", "/v1/api-tokens", json={"name": "orion@city", "role": "viewer"})
    assert_error(twice, 409, "already_exists", "orion@city")
    bad_role = await api.call("POST", "/v1/api-tokens", json={"name": "x", "role": "root"})
    assert_error(bad_role, 422, "invalid_request", "role (body)")
    bad_name = await api.call("POST", "/v1/api-tokens", json={"name": "Not A Name", "role": "viewer"})
    assert_error(bad_name, 400, "invalid", "API token name")
    revoked = await api.ok("POST", "/v1/api-tokens/orion@city/revoke", json={"reason": "Orion moved"})
    assert revoked["revoked_at"] is not None
    assert_error(await api.client.get("/v1/devices", headers=headers), 401, "api_token_revoked")
    missing = await api.call("POST", "/v1/api-tokens/nobody/revoke", json={"reason": "x"})
    assert_error(missing, 404, "not_found", "nobody")
    audit = await api.ok("GET", "/v1/audit", params={"actor": "root@city"})
    assert [e["action"] for e in audit["items"]] == ["api_token.created", "api_token.revoked"]
    assert "kh_" not in str(audit)


async def test_enrollment_tokens_for_gateways(api: Api, clock: FakeClock) -> None:
    await provisioned_gateway(api.registry, clock)
    created = await api.ok("POST", "/v1/gateways/gw-0001/enrollment-tokens", ApiRole.ASSET_MANAGER, json={"ttl_s": 600})
    assert (created["gateway"], created["ttl_s"]) == ("gw-0001", 600)
    await api.registry.consume_enrollment_token(created["token"], "gw-0001")  # it is a real one-time token
    with pytest.raises(TokenRefused) as refused:
        await api.registry.consume_enrollment_token(created["token"], "gw-0001")
    assert refused.value.reason == "token_used"
    default = await api.ok("POST", "/v1/gateways/gw-0001/enrollment-tokens")
    assert default["ttl_s"] == 86400
    too_long = await api.call("POST", "/v1/gateways/gw-0001/enrollment-tokens", json={"ttl_s": 90 * 86400})
    assert_error(too_long, 422, "invalid_request", "ttl_s (body)")
    assert_error(await api.call("POST", "/v1/gateways/gw-9/enrollment-tokens"), 404, "not_found", "gw-9")
    entries = await api.ok("GET", "/v1/audit", params={"action": "enrollment.token_created"})
    assert [e["actor"] for e in entries["items"]] == ["tanaka@city", "root@city"]
    assert created["token"] not in str(entries)
