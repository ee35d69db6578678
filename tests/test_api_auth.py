"""API authentication and roles: 401 for every unusable token, 403 at every role boundary, the token cache."""

from __future__ import annotations

from datetime import timedelta

import httpx

from cloud_agent.api import create_app
from cloud_agent.api.auth import Authenticator, install_authenticator
from cloud_agent.runtime import AgentRuntime
from device_registry import ApiRole, Registry
from tests.postgres import FakeClock, provisioned_gateway
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture
from tests.test_api_helpers import BASE_URL, Api, FakeMonotonic, RecorderActions, assert_error
from tests.test_api_helpers import actions_fixture as actions_fixture
from tests.test_api_helpers import api_fixture as api_fixture

ADMIN, MANAGER, VIEWER, CITY_OS = ApiRole.ADMIN, ApiRole.ASSET_MANAGER, ApiRole.VIEWER, ApiRole.CITY_OS
EVERYONE = {ADMIN, MANAGER, VIEWER, CITY_OS}
STAFF = {ADMIN, MANAGER, VIEWER}
MANAGERS = {ADMIN, MANAGER}

# (method, path, body, roles that may): ids exist after _fleet(); bodies are valid for the first allowed caller,
# in this order (changes that end things come last)
BOUNDARIES: list[tuple[str, str, object, set[ApiRole]]] = [
    ("GET", "/v1/organisations", None, STAFF),
    ("GET", "/v1/organisations/kakogawa", None, STAFF),
    ("POST", "/v1/organisations", {"id": "himeji", "name": "Himeji"}, {ADMIN}),
    ("GET", "/v1/gateways", None, EVERYONE),
    ("GET", "/v1/gateways/gw-0001", None, EVERYONE),
    ("POST", "/v1/gateways", {"id": "gw-new", "organisation": "kakogawa"}, MANAGERS),
    ("GET", "/v1/gateways/gw-0001/completeness", None, STAFF),
    ("GET", "/v1/gateways/gw-0001/twin", None, STAFF),
    ("PATCH", "/v1/gateways/gw-0001/twin/desired", {"delta": {"poll_s": 5}}, MANAGERS),
    ("POST", "/v1/gateways/gw-0001/enrollment-tokens", {"ttl_s": 600}, MANAGERS),
    ("GET", "/v1/gateways/gw-0001/latest", None, EVERYONE),
    ("GET", "/v1/devices", None, EVERYONE),
    ("GET", "/v1/devices/wl-0001", None, EVERYONE),
    ("POST", "/v1/devices", {"id": "wl-new", "organisation": "kakogawa", "kind": "water_level"}, MANAGERS),
    ("PUT", "/v1/devices/wl-0001/gateway", {"gateway": "gw-0001", "reason": "same"}, MANAGERS),
    ("PUT", "/v1/devices/tag-0001/consent", {"consent": True, "reason": "form"}, MANAGERS),
    ("POST", "/v1/devices/wl-0001/hardware-replacements", {"hardware_serial": "SN-2", "reason": "broken"}, MANAGERS),
    ("GET", "/v1/entities/gw-0001", None, EVERYONE),
    ("GET", "/v1/devices/wl-0001/twin", None, STAFF),
    ("PATCH", "/v1/devices/wl-0001/twin/desired", {"delta": {"alarm_m": 3}}, MANAGERS),
    ("GET", "/v1/devices/wl-0001/latest", None, EVERYONE),
    ("GET", "/v1/devices/wl-0001/history", None, EVERYONE),
    ("GET", "/v1/audit", None, STAFF),
    ("GET", "/v1/agent/metrics", None, STAFF),
    ("GET", "/v1/api-tokens", None, {ADMIN}),
    ("POST", "/v1/api-tokens", {"name": "new-token", "role": "viewer"}, {ADMIN}),
    ("POST", "/v1/devices/wl-0001/lifecycle", {"to": "decommissioned", "reason": "gone"}, MANAGERS),
    ("POST", "/v1/gateways/gw-0001/lifecycle", {"to": "decommissioned", "reason": "gone"}, MANAGERS),
    ("POST", "/v1/api-tokens/city-os/revoke", {"reason": "rotated"}, {ADMIN}),
]


async def _fleet(api: Api) -> None:
    gateway = await provisioned_gateway(api.registry, api.clock)
    await api.registry.create_device("wl-0001", "kakogawa", "water_level", actor="admin", gateway_id=gateway)
    await api.registry.create_device(
        "tag-0001", "kakogawa", "watch_tag", actor="admin", consent=False, retention=timedelta(days=30)
    )


async def test_every_role_boundary(api: Api) -> None:
    await _fleet(api)
    for method, path, body, allowed in BOUNDARIES:  # refusals first: they must change nothing
        names = sorted(r.value for r in allowed)
        for role in sorted(set(ApiRole) - allowed):
            response = await api.call(method, path, role, json=body)
            found = assert_error(response, 403, "forbidden", role.value, f"{method} {path}")
            assert all(name in found["detail"] for name in names), found
    for method, path, body, allowed in BOUNDARIES:
        for role in sorted(allowed) if method == "GET" else sorted(allowed)[:1]:
            response = await api.call(method, path, role, json=body)
            assert response.status_code < 300, (method, path, role, response.text)


async def test_refused_tokens_answer_401_with_a_challenge(api: Api, clock: FakeClock) -> None:
    plain = await api.client.get("/v1/devices")
    found = assert_error(plain, 401, "api_token_missing", "Authorization: Bearer")
    assert plain.headers["WWW-Authenticate"].startswith("Bearer")
    assert found == {"error": "api_token_missing", "detail": found["detail"]}
    basic = await api.client.get("/v1/devices", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_error(basic, 401, "api_token_missing")
    unknown = await api.client.get("/v1/devices", headers={"Authorization": "Bearer kh_not-a-real-token"})
    assert_error(unknown, 401, "api_token_unknown", "unknown")
    assert unknown.headers["WWW-Authenticate"].startswith("Bearer")
    foreign = await api.client.get("/v1/devices", headers={"Authorization": "Bearer abc"})
    assert_error(foreign, 401, "api_token_unknown", "kh_")
    # expiry: a token with a lifetime stops working when it ends
    secret, _ = await api.registry.create_api_token(
        "temp@city", ApiRole.VIEWER, actor="root@city", ttl=timedelta(hours=1)
    )
    assert (await api.client.get("/v1/devices", headers={"Authorization": f"Bearer {secret}"})).status_code == 200
    clock.advance(timedelta(hours=2))
    fresh_app = create_app(AgentRuntime(registry=api.registry, actions=RecorderActions()))  # no cached answer
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fresh_app), base_url=BASE_URL) as client:
        expired = await client.get("/v1/devices", headers={"Authorization": f"Bearer {secret}"})
    assert_error(expired, 401, "api_token_expired", "temp@city", "expired")


async def test_revoked_through_the_api_stops_at_once(api: Api) -> None:
    viewer = api.auth(VIEWER)
    assert (await api.client.get("/v1/devices", headers=viewer)).status_code == 200
    await api.ok("POST", "/v1/api-tokens/sato@city/revoke", json={"reason": "left the team"})
    revoked = await api.client.get("/v1/devices", headers=viewer)
    assert_error(revoked, 401, "api_token_revoked", "sato@city", "revoked")


async def test_revoked_elsewhere_stops_within_the_cache_time(registry: Registry, actions: RecorderActions) -> None:
    secret, _ = await registry.create_api_token("ops@city", ApiRole.VIEWER, actor="bootstrap")
    ticks = FakeMonotonic()
    app = create_app(AgentRuntime(registry=registry, actions=actions))
    install_authenticator(app, Authenticator(registry, cache_s=2.0, clock=ticks))
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as client:
        assert (await client.get("/v1/gateways", headers=headers)).status_code == 200
        await registry.revoke_api_token("ops@city", actor="another-agent", reason="rotated")  # another process
        ticks.now += 1.0
        assert (await client.get("/v1/gateways", headers=headers)).status_code == 200  # cached answer
        ticks.now += 1.5
        assert_error(await client.get("/v1/gateways", headers=headers), 401, "api_token_revoked")


async def test_health_needs_no_token_and_metrics_count_errors(api: Api) -> None:
    health = await api.client.get("/v1/agent/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    await api.client.get("/v1/devices")  # 401
    await api.call("GET", "/v1/api-tokens", VIEWER)  # 403
    await api.call("GET", "/v1/devices/nope")  # 404
    doc = await api.ok("GET", "/v1/agent/metrics", VIEWER)
    assert doc["ingest"] == {"readings": 42}  # the runtime's own counters
    assert doc["api_errors"] == {"api_token_missing": 1, "forbidden": 1, "not_found": 1}
    assert doc["api_errors_total"] == 3
