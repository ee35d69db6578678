"""The commands API: validation against the hardware profile, roles, idempotency, confirmation, history, errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from device_registry import ApiRole, State
from kakehashi import wire
from tests.postgres import FakeClock, organisation, provisioned_gateway
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture
from tests.test_api_helpers import Api, assert_error
from tests.test_api_helpers import actions_fixture as actions_fixture
from tests.test_api_helpers import api_fixture as api_fixture

GW = "gw-0001"


@pytest.fixture(name="fleet")
async def fleet_fixture(api: Api, clock: FakeClock) -> Api:
    await provisioned_gateway(api.registry, clock, GW)
    org = await organisation(api.registry)
    for device, kind, profile in (
        ("valve-0001", "water_meter", "water-meter"),
        ("wl-0001", "water_level", "water-level"),
        ("wl-0007", "water_level", "khnode"),
        ("em-0001", "energy_meter", "sdm120"),
    ):
        await api.registry.create_device(device, org, kind, actor="admin", profile=profile, gateway_id=GW)
    return api


async def send(
    api: Api,
    device: str,
    name: str,
    params: dict[str, Any] | None = None,
    role: ApiRole = ApiRole.ASSET_MANAGER,
    **body: Any,
) -> Any:
    payload = {"name": name, "params": params or {}, "idempotency_key": body.pop("key", f"{device}-{name}"), **body}
    return await api.call("POST", f"/v1/devices/{device}/commands", role, json=payload)


async def test_a_command_is_created_validated_queued_and_dispatched(fleet: Api, clock: FakeClock) -> None:
    response = await send(fleet, "wl-0007", "flood_mode", {"minutes": 120}, precondition={"reported_version": 4})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"].startswith("c-")
    assert (body["state"], body["final"], body["gateway"], body["requested_by"]) == ("queued", False, GW, "tanaka@city")
    assert body["params"] == {"on": True, "minutes": 120}
    assert body["precondition"] == {"reported_version": 4}
    assert body["deadline"] == clock.now.timestamp() + 300
    assert body["status"] == "queued for gateway gw-0001: pending until 2026-04-01T09:05:00Z"
    assert body["pending_until"].startswith("2026-04-01T09:05:00")
    assert [(s["seq"], s["state"], s["actor"]) for s in body["history"]] == [(1, "queued", "tanaka@city")]
    assert fleet.actions.commands == [GW]
    again = await fleet.ok("GET", f"/v1/commands/{body['id']}", ApiRole.VIEWER)
    assert again == body


async def test_the_same_idempotency_key_answers_the_same_command(fleet: Api) -> None:
    first = (await send(fleet, "valve-0001", "open", key="k1")).json()
    again = await send(fleet, "valve-0001", "open", key="k1", ttl_s=60)
    assert again.json()["id"] == first["id"]
    conflict = await send(fleet, "wl-0001", "set_mode", {"value": "flood"}, key="k1")
    assert conflict.status_code == 201  # keys are per device
    clash = await send(fleet, "valve-0001", "close", key="k1")
    assert_error(clash, 409, "idempotency_conflict", "use a new key")


@pytest.mark.parametrize(
    ("device", "name", "params", "reason", "fragment"),
    [
        ("valve-0001", "explode", {}, "unknown_command", "it has: close, open"),
        ("em-0001", "open", {}, "unknown_command", "declares no commands"),
        ("valve-0001", "open", {"value": True}, "bad_params", "no parameter 'value'"),
        ("wl-0001", "set_mode", {"value": "storm"}, "bad_params", "flood, normal"),
        ("wl-0001", "set_sample_interval", {"value": 4000}, "out_of_range", "1..3600"),
        ("wl-0007", "flood_mode", {"minutes": 0}, "out_of_range", "1..10080"),
    ],
)
async def test_commands_that_do_not_fit_the_profile_are_refused(
    fleet: Api, device: str, name: str, params: dict[str, Any], reason: str, fragment: str
) -> None:
    assert_error(await send(fleet, device, name, params), 400, reason, fragment)
    assert (await fleet.registry.list_commands()).total == 0
    assert fleet.actions.commands == []


@pytest.mark.parametrize("ttl", [0, -5, 604_801, 1e300])
async def test_a_time_to_live_outside_a_week_is_refused(fleet: Api, ttl: float) -> None:
    assert_error(await send(fleet, "valve-0001", "open", ttl_s=ttl), 400, "bad_ttl", "7 days")


async def test_only_asset_managers_and_admins_send_commands(fleet: Api) -> None:
    for role in (ApiRole.VIEWER, ApiRole.CITY_OS):
        assert_error(await send(fleet, "valve-0001", "open", role=role), 403, "forbidden")
    assert (await send(fleet, "valve-0001", "open", role=ApiRole.ADMIN)).status_code == 201
    assert_error(await fleet.call("GET", "/v1/commands", ApiRole.CITY_OS), 403, "forbidden")


async def test_suspended_and_unknown_devices_refuse(fleet: Api) -> None:
    await fleet.registry.transition("valve-0001", State.ACTIVE, "admin", "test")
    await fleet.registry.transition("valve-0001", State.SUSPENDED, "admin", "leaking")
    assert_error(await send(fleet, "valve-0001", "open"), 409, "device_inactive", "suspended")
    assert_error(await send(fleet, "valve-0404", "open"), 404, "not_found")
    assert_error(await fleet.call("GET", "/v1/commands/c-nothing"), 404, "not_found")
    assert_error(await fleet.call("GET", "/v1/devices/valve-0404/commands"), 404, "not_found")


async def test_closing_the_valve_needs_a_second_person(fleet: Api) -> None:
    created = (await send(fleet, "valve-0001", "close")).json()
    assert (created["state"], created["requires_confirmation"]) == ("awaiting_confirmation", True)
    assert created["status"].startswith("awaiting confirmation by a second person: pending until")
    assert fleet.actions.commands == []
    path = f"/v1/commands/{created['id']}/confirm"
    assert_error(await fleet.call("POST", path, ApiRole.ASSET_MANAGER), 403, "confirmation_by_requester")
    assert_error(await fleet.call("POST", path, ApiRole.VIEWER), 403, "forbidden")
    confirmed = await fleet.ok("POST", path, ApiRole.ADMIN)
    assert (confirmed["state"], confirmed["confirmed_by"]) == ("queued", "root@city")
    assert [s["state"] for s in confirmed["history"]] == ["awaiting_confirmation", "queued"]
    assert fleet.actions.commands == [GW]
    assert_error(await fleet.call("POST", path, ApiRole.ADMIN), 409, "illegal_transition", "not awaiting")


async def test_cancel_and_the_whole_history(fleet: Api, clock: FakeClock) -> None:
    made = (await send(fleet, "wl-0001", "set_mode", {"value": "flood"})).json()
    other = (await send(fleet, "valve-0001", "open")).json()
    cancelled = await fleet.ok("POST", f"/v1/commands/{made['id']}/cancel", json={"reason": "wrong gauge"})
    assert (cancelled["state"], cancelled["final"], cancelled["reason"]) == ("cancelled", True, "wrong gauge")
    assert cancelled["status"] == "cancelled: wrong gauge"
    assert cancelled["pending_until"] is None
    again = await fleet.call("POST", f"/v1/commands/{made['id']}/cancel", json={"reason": "again"})
    assert_error(again, 409, "illegal_transition", "final")
    assert_error(await fleet.call("POST", f"/v1/commands/{made['id']}/cancel", json={}), 422, "invalid_request")
    await fleet.registry.mark_sent(other["id"])
    clock.advance(timedelta(seconds=2))
    acks = [wire.CommandAck(other["id"], wire.AckStatus.SUCCEEDED, 1.8e9, result={"read_back": True})]
    await fleet.registry.apply_acks(GW, 1, acks)
    shown = await fleet.ok("GET", f"/v1/commands/{other['id']}", ApiRole.VIEWER)
    assert [(s["state"], s["actor"]) for s in shown["history"]] == [
        ("queued", "tanaka@city"),
        ("sent", "system"),
        ("succeeded", GW),
    ]
    assert shown["result"] == {"read_back": True}
    assert shown["status"] == "succeeded"


async def test_listings_filter_by_device_state_and_gateway(fleet: Api) -> None:
    valve = (await send(fleet, "valve-0001", "open")).json()
    gauge = (await send(fleet, "wl-0001", "set_sample_interval", {"value": 30})).json()
    await fleet.registry.mark_sent(valve["id"])
    mine = await fleet.ok("GET", "/v1/devices/valve-0001/commands", ApiRole.VIEWER)
    assert ([c["id"] for c in mine["items"]], mine["total"]) == ([valve["id"]], 1)
    assert mine["items"][0]["history"] is None
    sent = await fleet.ok("GET", "/v1/commands", params={"state": "sent", "gateway": GW})
    assert [c["id"] for c in sent["items"]] == [valve["id"]]
    queued = await fleet.ok("GET", "/v1/commands", params={"state": "queued", "device": "wl-0001"})
    assert [c["id"] for c in queued["items"]] == [gauge["id"]]
    assert_error(await fleet.call("GET", "/v1/commands", params={"state": "lost"}), 422, "invalid_request")


async def test_the_catalogue_of_a_device(fleet: Api) -> None:
    node = await fleet.ok("GET", "/v1/devices/wl-0007/command-catalogue", ApiRole.VIEWER)
    flood = next(c for c in node if c["name"] == "flood_mode")
    assert [(p["name"], p["type"], p["required"], p["default"]) for p in flood["params"]] == [
        ("on", "bool", False, True),
        ("minutes", "int", False, 60),
    ]
    valve = await fleet.ok("GET", "/v1/devices/valve-0001/command-catalogue")
    assert {c["name"]: c["confirm"] for c in valve} == {"open": False, "close": True}
    assert await fleet.ok("GET", "/v1/devices/em-0001/command-catalogue") == []


async def test_a_failed_dispatch_request_leaves_the_command_queued(fleet: Api) -> None:
    fleet.actions.fail_delivery = True
    response = await send(fleet, "valve-0001", "open")
    assert response.status_code == 201
    assert response.json()["state"] == "queued"
