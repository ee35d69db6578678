"""The City OS stand-ins answer with the specifications' shapes: NGSI-LD upsert 201/204/207 and ProblemDetails,
Orion's op/update and error bodies, OAuth 2.0 client credentials and bearer errors — over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hw.cityos import NgsiLdBroker, OrionBroker, StandInServer, TokenAuthority

pytestmark = pytest.mark.timeout(30)
UPSERT = "/ngsi-ld/v1/entityOperations/upsert"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
LD = {"Content-Type": "application/ld+json"}


def ld_entity(n: int, **attrs: Any) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:Device:d{n}",
        "type": "Device",
        "batteryLevel": {"type": "Property", "value": 0.5, "observedAt": "2026-11-22T01:00:00.250Z"},
        "@context": [CORE],
        **attrs,
    }


def check_problem(body: dict[str, Any], kind: str, status: int) -> None:
    assert body["type"] == f"https://uri.etsi.org/ngsi-ld/errors/{kind}"
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)


@pytest.fixture
async def ld() -> AsyncIterator[tuple[NgsiLdBroker, httpx.AsyncClient]]:
    broker = NgsiLdBroker()
    async with StandInServer(broker.app()) as server, httpx.AsyncClient(base_url=server.url) as client:
        yield broker, client


async def test_upsert_created_updated_and_partial(ld: tuple[NgsiLdBroker, httpx.AsyncClient]) -> None:
    broker, client = ld
    headers = {**LD, "NGSILD-Tenant": "kakogawa"}
    created = await client.post(
        UPSERT, params={"options": "update"}, json=[ld_entity(1), ld_entity(2)], headers=headers
    )
    assert created.status_code == 201
    assert created.json() == ["urn:ngsi-ld:Device:d1", "urn:ngsi-ld:Device:d2"]
    updated = await client.post(UPSERT, params={"options": "update"}, json=[ld_entity(1)], headers=headers)
    assert updated.status_code == 204
    assert updated.content == b""
    broker.faults.entity_errors["urn:ngsi-ld:Device:d2"] = "InternalError"
    bad = ld_entity(3, batteryLevel={"type": "Property", "value": 1, "observedAt": "2026-11-22 01:00"})
    mixed = await client.post(UPSERT, json=[ld_entity(1), ld_entity(2), bad], headers=headers)
    assert mixed.status_code == 207
    result = mixed.json()
    assert result["success"] == ["urn:ngsi-ld:Device:d1"]
    assert [e["entityId"] for e in result["errors"]] == ["urn:ngsi-ld:Device:d2", "urn:ngsi-ld:Device:d3"]
    check_problem(result["errors"][0]["error"], "InternalError", 500)
    check_problem(result["errors"][1]["error"], "BadRequestData", 400)
    got = await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Device:d1", headers={"NGSILD-Tenant": "kakogawa"})
    assert got.status_code == 200
    assert got.json()["batteryLevel"]["value"] == 0.5
    assert got.headers["content-type"].startswith("application/ld+json")
    query = await client.get(
        "/ngsi-ld/v1/entities", params={"type": "Device", "count": "true"}, headers={"NGSILD-Tenant": "kakogawa"}
    )
    assert query.headers["NGSILD-Results-Count"] == "2"
    assert set(broker.entities("kakogawa")) == {"urn:ngsi-ld:Device:d1", "urn:ngsi-ld:Device:d2"}


@pytest.mark.parametrize(
    ("entity", "fragment"),
    [
        ({"id": "d1", "type": "Device", "@context": [CORE]}, "URI"),
        ({"id": "urn:ngsi-ld:Device:x", "@context": [CORE]}, "type"),
        ({"id": "urn:ngsi-ld:Device:x", "type": "Device", "a": {"value": 1}, "@context": [CORE]}, "type must be"),
        ({"id": "urn:ngsi-ld:Device:x", "type": "Device", "a": {"type": "Property"}, "@context": [CORE]}, "value"),
        (
            {
                "id": "urn:ngsi-ld:Device:x",
                "type": "Device",
                "r": {"type": "Relationship", "object": "x y"},
                "@context": [CORE],
            },
            "URI",
        ),
        (
            {
                "id": "urn:ngsi-ld:Device:x",
                "type": "Device",
                "location": {"type": "Property", "value": 1},
                "@context": [CORE],
            },
            "GeoProperty",
        ),
        (
            {
                "id": "urn:ngsi-ld:Device:x",
                "type": "Device",
                "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [34.7, 134.8]}},
                "@context": [CORE],
            },
            "range",
        ),
        ({"id": "urn:ngsi-ld:Device:x", "type": "Device"}, "@context"),
    ],
)
async def test_upsert_refuses_bad_shapes(
    ld: tuple[NgsiLdBroker, httpx.AsyncClient], entity: dict[str, Any], fragment: str
) -> None:
    _, client = ld
    answer = await client.post(UPSERT, json=[entity], headers=LD)
    assert answer.status_code == 207
    error = answer.json()["errors"][0]["error"]
    check_problem(error, "BadRequestData", 400)
    assert fragment in error["detail"]


async def test_upsert_request_level_errors(ld: tuple[NgsiLdBroker, httpx.AsyncClient]) -> None:
    broker, client = ld
    answer = await client.post(UPSERT, content=b"[{", headers=LD)
    assert answer.status_code == 400
    check_problem(answer.json(), "InvalidRequest", 400)
    answer = await client.post(UPSERT, json={"id": "urn:x:y"}, headers=LD)
    check_problem(answer.json(), "BadRequestData", 400)
    answer = await client.post(UPSERT, params={"options": "merge"}, json=[ld_entity(1)], headers=LD)
    check_problem(answer.json(), "BadRequestData", 400)
    answer = await client.post(UPSERT, json=[ld_entity(1)])  # application/json with @context inside
    assert answer.json()["errors"][0]["error"]["detail"].endswith("@context goes in a Link header")
    plain = {k: v for k, v in ld_entity(1).items() if k != "@context"}
    link = {"Link": f'<{CORE}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'}
    assert (await client.post(UPSERT, json=[plain], headers=link)).status_code == 201
    unknown = {**ld_entity(2), "@context": ["https://example.org/unknown.jsonld"]}
    error = (await client.post(UPSERT, json=[unknown], headers=LD)).json()["errors"][0]["error"]
    check_problem(error, "LdContextNotAvailable", 503)
    missing = await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Device:none")
    check_problem(missing.json(), "ResourceNotFound", 404)
    tenant = await client.get("/ngsi-ld/v1/entities/urn:ngsi-ld:Device:d1", headers={"NGSILD-Tenant": "nowhere"})
    check_problem(tenant.json(), "NonexistentTenant", 404)
    broker.faults.answer(429, times=1, retry_after_s=2)
    throttled = await client.post(UPSERT, json=[ld_entity(1)], headers=LD)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "2")
    broker.faults.answer(500, times=1)
    failed = await client.post(UPSERT, json=[ld_entity(1)], headers=LD)
    check_problem(failed.json(), "InternalError", 500)
    assert (await client.post(UPSERT, json=[ld_entity(1)], headers=LD)).status_code == 204


async def test_csource_registration(ld: tuple[NgsiLdBroker, httpx.AsyncClient]) -> None:
    broker, client = ld
    registration = {
        "type": "ContextSourceRegistration",
        "information": [{"entities": [{"type": "Device"}]}],
        "endpoint": "https://agent.example:8443",
        "@context": [CORE],
    }
    answer = await client.post("/ngsi-ld/v1/csourceRegistrations", json=registration, headers=LD)
    assert answer.status_code == 201
    location = answer.headers["Location"]
    assert location.startswith("/ngsi-ld/v1/csourceRegistrations/urn:ngsi-ld:ContextSourceRegistration:")
    assert (await client.get(location)).json()["endpoint"] == "https://agent.example:8443"
    assert len(broker.registrations) == 1
    assert (await client.delete(location)).status_code == 204
    refused = await client.post("/ngsi-ld/v1/csourceRegistrations", json={"type": "Other"}, headers=LD)
    check_problem(refused.json(), "BadRequestData", 400)


async def test_orion_update_and_errors() -> None:
    broker = OrionBroker()
    scope = {"Fiware-Service": "kakogawa", "Fiware-ServicePath": "/water"}
    entity = {"id": "wl-0007", "type": "WaterObserved", "height": {"type": "Number", "value": 1.2}}
    async with StandInServer(broker.app()) as server, httpx.AsyncClient(base_url=server.url) as client:
        ok = await client.post("/v2/op/update", json={"actionType": "append", "entities": [entity]}, headers=scope)
        assert (ok.status_code, ok.content) == (204, b"")
        assert (await client.get("/v2/entities/wl-0007", headers=scope)).json()["height"]["value"] == 1.2
        assert (await client.get("/v2/entities/wl-0007")).status_code == 404  # other service: not visible
        unknown = {"actionType": "update", "entities": [{**entity, "id": "wl-9"}]}
        answer = await client.post("/v2/op/update", json=unknown, headers=scope)
        assert (answer.status_code, answer.json()["error"]) == (404, "NotFound")
        bad = {"actionType": "append", "entities": [entity, {"id": "a b", "type": "T"}]}
        answer = await client.post("/v2/op/update", json=bad, headers=scope)
        assert answer.status_code == 400
        assert set(answer.json()) == {"error", "description"}
        answer = await client.post(
            "/v2/op/update",
            json={"actionType": "append", "entities": [entity]},
            headers={"Fiware-ServicePath": "water"},
        )
        assert answer.json()["error"] == "BadRequest"
        big = {"actionType": "append", "entities": [{**entity, "note": {"value": "x" * 1_100_000}}]}
        answer = await client.post("/v2/op/update", json=big, headers=scope)
        assert (answer.status_code, answer.json()["error"]) == (413, "RequestEntityTooLarge")
        answer = await client.post("/v2/op/update", content=b"{}", headers={**scope, "Content-Type": "text/plain"})
        assert answer.status_code == 415
        listed = await client.get("/v2/entities", params={"type": "WaterObserved", "options": "count"}, headers=scope)
        assert listed.headers["Fiware-Total-Count"] == "1"


async def test_oauth_client_credentials_and_bearer_errors() -> None:
    authority = TokenAuthority({"agent": "s3cret"}, lifetime_s=60)
    broker = NgsiLdBroker(authority=authority)
    async with (
        StandInServer(authority.app()) as tokens,
        StandInServer(broker.app()) as server,
        httpx.AsyncClient() as client,
    ):
        url = f"{tokens.url}/oauth2/token"
        form = {"grant_type": "client_credentials"}
        wrong = await client.post(url, data=form, auth=("agent", "nope"))
        assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
        assert wrong.headers["WWW-Authenticate"].startswith("Basic")
        grant = await client.post(url, data={"grant_type": "password"}, auth=("agent", "s3cret"))
        assert grant.json()["error"] == "unsupported_grant_type"
        issued = await client.post(url, data=form, auth=("agent", "s3cret"))
        body = issued.json()
        assert (body["token_type"], body["expires_in"], issued.headers["Cache-Control"]) == ("Bearer", 60, "no-store")
        upsert = f"{server.url}{UPSERT}"
        missing = await client.post(upsert, json=[ld_entity(1)], headers=LD)
        assert missing.status_code == 401
        bearer = {**LD, "Authorization": f"Bearer {body['access_token']}"}
        assert (await client.post(upsert, json=[ld_entity(1)], headers=bearer)).status_code == 201
        authority.expire_all()
        expired = await client.post(upsert, json=[ld_entity(1)], headers=bearer)
        assert expired.status_code == 401
        assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]


async def test_down_refuses_connections_then_serves_again() -> None:
    broker = NgsiLdBroker()
    server = StandInServer(broker.app())
    async with server, httpx.AsyncClient(base_url=server.url) as client:
        port = server.port
        await server.down()
        with pytest.raises(httpx.ConnectError):
            await client.post(UPSERT, json=[ld_entity(1)], headers=LD)
        await server.up()
        assert server.port == port
        assert (await client.post(UPSERT, json=[ld_entity(1)], headers=LD)).status_code == 201


async def test_ld_batch_delete_answers_as_the_specification_says(ld: tuple[NgsiLdBroker, httpx.AsyncClient]) -> None:
    broker, client = ld
    assert (await client.post(UPSERT, json=[ld_entity(1), ld_entity(2)], headers=LD)).status_code == 201
    delete = "/ngsi-ld/v1/entityOperations/delete"
    one = await client.post(delete, json=["urn:ngsi-ld:Device:d1"])
    assert (one.status_code, one.content) == (204, b"")
    mixed = await client.post(delete, json=["urn:ngsi-ld:Device:d2", "urn:ngsi-ld:Device:d1", "not a uri"])
    assert mixed.status_code == 207
    body = mixed.json()
    assert body["success"] == ["urn:ngsi-ld:Device:d2"]
    assert [e["entityId"] for e in body["errors"]] == ["urn:ngsi-ld:Device:d1", "not a uri"]
    check_problem(body["errors"][0]["error"], "ResourceNotFound", 404)
    check_problem(body["errors"][1]["error"], "BadRequestData", 400)
    assert broker.entities() == {}
    for bad in ([], {"id": "urn:ngsi-ld:Device:d1"}, [1]):
        answer = await client.post(delete, json=bad)
        check_problem(answer.json(), "BadRequestData", 400)
    tenant = await client.post(delete, json=["urn:ngsi-ld:Device:d1"], headers={"NGSILD-Tenant": "nowhere"})
    check_problem(tenant.json(), "NonexistentTenant", 404)
    broker.faults.answer(503, times=1, retry_after_s=2)
    busy = await client.post(delete, json=["urn:ngsi-ld:Device:d1"])
    assert (busy.status_code, busy.headers["Retry-After"]) == (503, "2")
    assert [r.status for r in broker.records if r.path == delete][-1] == 503


async def test_orion_delete_of_missing_entities_answers_as_orion_3_11() -> None:
    broker = OrionBroker()
    scope = {"Fiware-Service": "kakogawa"}
    entities = [{"id": f"d{n}", "type": "Device", "name": {"type": "Text", "value": "x"}} for n in (1, 2, 3)]
    async with StandInServer(broker.app()) as server, httpx.AsyncClient(base_url=server.url) as client:
        await client.post("/v2/op/update", json={"actionType": "append", "entities": entities}, headers=scope)

        async def delete(*ids: str, kind: str = "Device") -> httpx.Response:
            body = {"actionType": "delete", "entities": [{"id": i, "type": kind} for i in ids]}
            return await client.post("/v2/op/update", json=body, headers=scope)

        assert (await delete("d1")).status_code == 204
        partial = await delete("d2", "d1")
        assert (partial.status_code, partial.json()) == (
            422,
            {"error": "PartialUpdate", "description": "do not exist: d1 - [entity itself]"},
        )
        assert set(broker.entities("kakogawa")) == {"d3"}
        none = await delete("d1", "d2")
        assert (none.status_code, none.json()["error"]) == (404, "NotFound")
        assert (await delete("d3", kind="Other")).status_code == 404  # the type must match when given
        assert set(broker.entities("kakogawa")) == {"d3"}
