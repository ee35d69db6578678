"""API registry routes: create and read organisations, gateways and devices; filters; pagination; error shapes."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from device_registry import ApiRole, State
from kakehashi import wire
from tests.postgres import FakeClock, provisioned_gateway, reading
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture
from tests.test_api_helpers import Api, assert_error
from tests.test_api_helpers import actions_fixture as actions_fixture
from tests.test_api_helpers import api_fixture as api_fixture

MANAGER = ApiRole.ASSET_MANAGER


async def test_register_and_read_gateways_and_devices(api: Api, clock: FakeClock) -> None:
    org = await api.ok("POST", "/v1/organisations", json={"id": "kakogawa", "name": "Kakogawa City"})
    assert (org["id"], org["name"]) == ("kakogawa", "Kakogawa City")
    gateway = await api.ok(
        "POST",
        "/v1/gateways",
        MANAGER,
        json={
            "id": "gw-0001",
            "organisation": "kakogawa",
            "hardware_serial": "PI-1",
            "location": {"latitude": 34.75, "longitude": 134.83, "place": "Kako river"},
            "labels": {"zone": "north"},
        },
    )
    assert (gateway["state"], gateway["labels"], gateway["location"]["place"]) == (
        "registered",
        {"zone": "north"},
        "Kako river",
    )
    device = await api.ok(
        "POST",
        "/v1/devices",
        MANAGER,
        json={
            "id": "wl-0001",
            "organisation": "kakogawa",
            "kind": "water_level",
            "profile": "wl-gauge",
            "gateway": "gw-0001",
        },
    )
    assert (device["state"], device["gateway"], device["consent"]) == ("provisioned", "gw-0001", None)
    shown = await api.ok("GET", "/v1/devices/wl-0001", ApiRole.CITY_OS)
    assert shown == device
    detail = await api.ok("GET", "/v1/gateways/gw-0001", ApiRole.VIEWER)
    assert (detail["presence"], detail["certificates"]) == (None, [])
    await api.registry.record_certificate("gw-0001", "abc1", clock.now + timedelta(days=90), actor="pki")
    status = wire.StatusMessage(state=wire.StatusState.ONLINE, reason=wire.StatusReason.CONNECTED, sent_at=1.8e9)
    await api.registry.record_status("gw-0001", status, received_at=1.8e9)
    detail = await api.ok("GET", "/v1/gateways/gw-0001")
    assert (detail["state"], detail["presence"]["online"], detail["presence"]["reason"]) == (
        "active",
        True,
        "connected",
    )
    assert [(c["serial"], c["status"]) for c in detail["certificates"]] == [("abc1", "active")]
    assert await api.ok("GET", "/v1/entities/gw-0001", ApiRole.CITY_OS) == {
        "id": "gw-0001",
        "role": "gateway",
        "collection": "gateways",
    }
    assert (await api.ok("GET", "/v1/entities/wl-0001"))["collection"] == "devices"
    assert_error(await api.call("GET", "/v1/entities/nope"), 404, "not_found", "no gateway or device")
    organisations = await api.ok("GET", "/v1/organisations")
    assert ([o["id"] for o in organisations["items"]], organisations["next"]) == (["kakogawa"], None)
    # who did it: the token names
    entries = (await api.ok("GET", "/v1/audit", params={"actor": "tanaka@city"}))["items"]
    assert [(e["action"], e["entity"]) for e in entries] == [
        ("gateway.created", "gw-0001"),
        ("device.created", "wl-0001"),
        ("device.bound", "wl-0001"),
        ("lifecycle.transition", "wl-0001"),
    ]
    assert (await api.ok("GET", "/v1/audit", params={"entity": "kakogawa"}))["items"][0]["actor"] == "root@city"


async def test_registry_refusals_answer_in_the_error_shape(api: Api, clock: FakeClock) -> None:
    await provisioned_gateway(api.registry, clock)
    missing = await api.call("GET", "/v1/devices/wl-9999")
    assert missing.json() == {"error": "not_found", "detail": "there is no device with id 'wl-9999'"}
    assert missing.status_code == 404
    assert_error(await api.call("GET", "/v1/devices/gw-0001"), 404, "not_found")  # a gateway is not a device
    twice = await api.call("POST", "/v1/gateways", json={"id": "gw-0001", "organisation": "kakogawa"})
    assert_error(twice, 409, "already_exists", "gw-0001")
    bad_id = await api.call("POST", "/v1/gateways", json={"id": "GW 1!", "organisation": "kakogawa"})
    assert_error(bad_id, 400, "invalid")
    bad_label = await api.call("GET", "/v1/devices", params={"label": "zone"})
    assert_error(bad_label, 400, "invalid", "key=value")
    unbound = await api.call(
        "POST", "/v1/devices", json={"id": "wl-1", "organisation": "nowhere", "kind": "water_level"}
    )
    assert unbound.status_code in (400, 404)
    assert set(unbound.json()) == {"error", "detail"}


async def test_validation_errors_name_the_field(api: Api) -> None:
    missing = await api.call("POST", "/v1/devices", json={"id": "wl-1", "organisation": "kakogawa"})
    body = assert_error(missing, 422, "invalid_request", "kind (body)")
    assert body["fields"] == [{"field": "kind (body)", "problem": "Field required"}]
    extra = await api.call("POST", "/v1/organisations", json={"id": "a", "name": "A", "colour": "red"})
    assert_error(extra, 422, "invalid_request", "colour (body)")
    state = await api.call("GET", "/v1/devices", params={"state": "asleep"})
    assert_error(state, 422, "invalid_request", "state (query)")
    limit = await api.call("GET", "/v1/gateways", params={"limit": 0})
    assert_error(limit, 422, "invalid_request", "limit (query)")
    not_json = await api.call("POST", "/v1/organisations", content=b"{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422
    assert set(not_json.json()) >= {"error", "detail"}


async def test_unknown_routes_and_methods(api: Api) -> None:
    assert_error(await api.call("GET", "/v1/nothing-here"), 404, "not_found", "/v1/nothing-here", "/docs")
    assert_error(await api.client.get("/v2/devices"), 404, "not_found")
    assert_error(await api.call("DELETE", "/v1/devices"), 405, "method_not_allowed", "DELETE")


async def test_pagination_through_a_250_device_fleet(api: Api, clock: FakeClock) -> None:
    await provisioned_gateway(api.registry, clock, "gw-a")
    await provisioned_gateway(api.registry, clock, "gw-b")

    async def register(index: int) -> None:
        await api.registry.create_device(
            f"wl-{index:04d}",
            "kakogawa",
            "water_level" if index % 5 else "energy_meter",
            actor="admin",
            gateway_id="gw-a" if index < 200 else "gw-b",
            labels={"zone": "north" if index % 2 else "south"},
        )

    step = 1 if api.registry.engine.dialect.name == "sqlite" else 25  # SQLite has one writer: concurrency only waits
    for start in range(0, 250, step):
        await asyncio.gather(*(register(index) for index in range(start, start + step)))
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        params = {"limit": 100} if after is None else {"limit": 100, "after": after}
        page = await api.ok("GET", "/v1/devices", ApiRole.CITY_OS, params=params)
        assert page["total"] == 250
        seen += [d["id"] for d in page["items"]]
        pages += 1
        after = page["next"]
        if after is None:
            break
    assert (pages, seen) == (3, [f"wl-{i:04d}" for i in range(250)])
    by_gateway = await api.ok("GET", "/v1/devices", params={"gateway": "gw-b", "limit": 1000})
    assert (by_gateway["total"], by_gateway["next"]) == (50, None)
    meters = await api.ok("GET", "/v1/devices", params={"kind": "energy_meter", "label": "zone=south"})
    assert meters["total"] == 25  # every 5th is a meter; those are even (i % 10 == 0)
    assert all(d["kind"] == "energy_meter" and d["labels"] == {"zone": "south"} for d in meters["items"])
    both = await api.call("GET", "/v1/devices", params=[("label", "zone=north"), ("label", "zone=south")])
    assert_error(both, 400, "invalid", "given twice")
    north_a = await api.ok("GET", "/v1/devices", params=[("label", "zone=north"), ("gateway", "gw-a")])
    assert north_a["total"] == 100
    await api.registry.transition("wl-0003", State.DECOMMISSIONED, "admin", "flooded")
    gone = await api.ok("GET", "/v1/devices", params={"state": "decommissioned", "organisation": "kakogawa"})
    assert [d["id"] for d in gone["items"]] == ["wl-0003"]
    assert (await api.ok("GET", "/v1/devices", params={"organisation": "himeji"}))["total"] == 0


async def test_gateway_filters_and_completeness(api: Api, clock: FakeClock) -> None:
    for index in range(5):
        await provisioned_gateway(api.registry, clock, f"gw-{index:04d}")
    await api.ok("POST", "/v1/gateways", json={"id": "gw-new", "organisation": "kakogawa", "labels": {"zone": "east"}})
    registered = await api.ok("GET", "/v1/gateways", ApiRole.CITY_OS, params={"state": "registered"})
    assert [g["id"] for g in registered["items"]] == ["gw-new"]
    labelled = await api.ok("GET", "/v1/gateways", params={"label": "zone=east", "organisation": "kakogawa"})
    assert labelled["total"] == 1
    first = await api.ok("GET", "/v1/gateways", params={"limit": 2})
    second = await api.ok("GET", "/v1/gateways", params={"limit": 2, "after": first["next"]})
    assert [g["id"] for g in first["items"] + second["items"]] == ["gw-0000", "gw-0001", "gw-0002", "gw-0003"]
    await api.registry.create_device("wl-1", "kakogawa", "water_level", actor="admin", gateway_id="gw-0001")
    await api.registry.ingest_readings("gw-0001", [(1, 1.8e9, [reading("wl-1")]), (4, 1.8e9, [reading("wl-1")])])
    await api.registry.record_gap("gw-0001", 2, 2, 10, "disk_budget")
    complete = await api.ok("GET", "/v1/gateways/gw-0001/completeness", ApiRole.VIEWER)
    assert (complete["highest_seq"], complete["received"], complete["missing"]) == (4, 2, [{"first": 3, "last": 3}])
    assert (complete["reported_lost_readings"], complete["complete"]) == (10, False)


async def test_bind_consent_and_hardware_replacement(api: Api, clock: FakeClock) -> None:
    await provisioned_gateway(api.registry, clock, "gw-a")
    await provisioned_gateway(api.registry, clock, "gw-b")
    await api.ok("POST", "/v1/devices", MANAGER, json={"id": "wl-1", "organisation": "kakogawa", "kind": "water_level"})
    bound = await api.ok("PUT", "/v1/devices/wl-1/gateway", MANAGER, json={"gateway": "gw-a", "reason": "installed"})
    assert (bound["gateway"], bound["state"]) == ("gw-a", "provisioned")
    tag = {"id": "tag-1", "organisation": "kakogawa", "kind": "watch_tag", "consent": False, "retention_s": 86400}
    assert (await api.ok("POST", "/v1/devices", MANAGER, json=tag))["retention_s"] == 86400
    consent = await api.ok("PUT", "/v1/devices/tag-1/consent", MANAGER, json={"consent": True, "reason": "form signed"})
    assert consent["consent"] is True
    not_a_tag = await api.call("PUT", "/v1/devices/wl-1/consent", json={"consent": True, "reason": "x"})
    assert_error(not_a_tag, 400, "invalid", "only watch tags")
    # a node with its own certificate: replacing the board revokes it, and the agent is told (superseded)
    await api.registry.create_device("node-1", "kakogawa", "node", actor="admin", hardware_serial="ESP-1")
    await api.registry.record_certificate("node-1", "beef", clock.now + timedelta(days=90), actor="pki")
    replaced = await api.ok(
        "POST",
        "/v1/devices/node-1/hardware-replacements",
        MANAGER,
        json={"hardware_serial": "ESP-2", "reason": "flooded"},
    )
    assert replaced == {"entity": "node-1", "old_serial": "ESP-1", "new_serial": "ESP-2", "revoked_serials": ["beef"]}
    assert api.actions.revoked == [("node-1", "superseded")]
    # without certificates nothing is revoked and the agent is not bothered
    await api.ok(
        "POST", "/v1/devices/wl-1/hardware-replacements", json={"hardware_serial": "WL-9", "reason": "cracked"}
    )
    assert api.actions.revoked == [("node-1", "superseded")]
    # moving a device to another gateway queues its desired state there
    await api.ok("PATCH", "/v1/devices/wl-1/twin/desired", json={"delta": {"alarm_m": 2.5}})
    moved = await api.ok("PUT", "/v1/devices/wl-1/gateway", json={"gateway": "gw-b", "reason": "moved upstream"})
    assert moved["gateway"] == "gw-b"
    assert api.actions.desired[-1] == "gw-b"
    assert [d.gateway_id for d in await api.registry.pending_desired("gw-b")] == ["gw-b"]


async def test_the_mounted_csv_import_and_enrollment_routes(api: Api, clock: FakeClock) -> None:
    await provisioned_gateway(api.registry, clock)
    csv = b"id,organisation,kind\nwl-0007,kakogawa,water_level\n"
    headers = {"Content-Type": "text/csv"}
    refused = await api.call("POST", "/v1/devices/import", ApiRole.VIEWER, content=csv, headers=headers)
    assert_error(refused, 403, "forbidden", "admin or asset-manager")
    report = await api.ok("POST", "/v1/devices/import", MANAGER, content=csv, headers=headers)
    assert (report["created"], report["failed"]) == (1, 0)
    assert (await api.ok("GET", "/v1/devices/wl-0007"))["kind"] == "water_level"
    entry = (await api.ok("GET", "/v1/audit", params={"entity": "wl-0007"}))["items"][0]
    assert (entry["action"], entry["actor"]) == ("device.created", "tanaka@city")
    wrong_type = await api.call(
        "POST", "/v1/devices/import", content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert_error(wrong_type, 415, "csv_content_type", "text/csv")
    # enrollment takes no bearer token; an agent without a CA answers 503 in the error shape
    enroll = await api.client.post("/v1/enroll", json={"gateway_id": "gw-0001", "token": "x", "csr_pem": "y"})
    assert_error(enroll, 503, "enrollment_disabled", "no CA")
