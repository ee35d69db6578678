"""API lifecycle, twin and readings: every illegal transition answers 409, decommission and desired changes reach
the agent, latest values and history come back as stored."""

from __future__ import annotations

from datetime import timedelta

from device_registry import ApiRole, State
from device_registry.lifecycle import TRANSITIONS
from tests.postgres import FakeClock, provisioned_gateway, reading
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture
from tests.test_api_helpers import Api, assert_error
from tests.test_api_helpers import actions_fixture as actions_fixture
from tests.test_api_helpers import api_fixture as api_fixture

MANAGER = ApiRole.ASSET_MANAGER
ROUTE_TO: dict[State, tuple[State, ...]] = {  # how to bring a gateway with a certificate into each state
    State.REGISTERED: (),
    State.PROVISIONED: (State.PROVISIONED,),
    State.ACTIVE: (State.PROVISIONED, State.ACTIVE),
    State.SUSPENDED: (State.PROVISIONED, State.ACTIVE, State.SUSPENDED),
    State.DECOMMISSIONED: (State.DECOMMISSIONED,),
}


async def _move(api: Api, entity_id: str, to: State, reason: str = "test") -> tuple[int, dict[str, object]]:
    response = await api.call("POST", f"/v1/gateways/{entity_id}/lifecycle", MANAGER, json={"to": to, "reason": reason})
    return response.status_code, response.json()


async def test_every_illegal_transition_answers_409_with_a_clear_detail(api: Api, clock: FakeClock) -> None:
    await api.registry.create_organisation("kakogawa", "Kakogawa", actor="admin")
    checked = 0
    for index, (start, path) in enumerate(ROUTE_TO.items()):
        for target in State:
            if target in TRANSITIONS[start]:
                continue
            gateway = f"gw-{index}-{target}"
            await api.registry.create_gateway(gateway, "kakogawa", actor="admin")
            for step in path:
                if step is State.PROVISIONED:
                    serial = format(0x1000 + checked * 8 + index, "x")
                    await api.registry.record_certificate(gateway, serial, clock.now + timedelta(days=9), actor="pki")
                else:
                    assert (await _move(api, gateway, step))[0] == 200
            assert (await api.registry.get_gateway(gateway)).state is start
            status, body = await _move(api, gateway, target)
            assert status == 409, body
            assert (body["error"], body["entity"], body["from"], body["to"]) == (
                "illegal_transition",
                gateway,
                start.value,
                target.value,
            )
            assert f"cannot become {target}" in str(body["detail"]), body
            checked += 1
    assert checked == 25 - sum(len(edges) for edges in TRANSITIONS.values())


async def test_preconditions_and_states_that_do_not_exist(api: Api) -> None:
    await api.registry.create_organisation("kakogawa", "Kakogawa", actor="admin")
    await api.registry.create_gateway("gw-bare", "kakogawa", actor="admin")
    status, body = await _move(api, "gw-bare", State.PROVISIONED)
    assert (status, body["error"], body["from"], body["to"]) == (409, "precondition", "registered", "provisioned")
    assert "no active certificate" in str(body["detail"])
    asleep = await api.call("POST", "/v1/gateways/gw-bare/lifecycle", json={"to": "asleep", "reason": "x"})
    assert_error(asleep, 422, "invalid_request", "to (body)")
    no_reason = await api.call("POST", "/v1/gateways/gw-bare/lifecycle", json={"to": "decommissioned", "reason": ""})
    assert_error(no_reason, 422, "invalid_request", "reason (body)")
    wrong_collection = await api.call(
        "POST", "/v1/devices/gw-bare/lifecycle", json={"to": "decommissioned", "reason": "x"}
    )
    assert_error(wrong_collection, 404, "not_found", "device")


async def test_suspend_resume_decommission_reach_the_agent(api: Api, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(api.registry, clock)
    await api.registry.create_device("wl-1", "kakogawa", "water_level", actor="admin", gateway_id=gateway)
    await api.registry.ingest_readings(gateway, [(1, 1.8e9, [reading("wl-1")])])
    path = "/v1/devices/wl-1/lifecycle"
    suspended = await api.ok("POST", path, MANAGER, json={"to": "suspended", "reason": "valve leaking"})
    assert suspended == {
        "entity": "wl-1",
        "role": "device",
        "from_state": "active",
        "to_state": "suspended",
        "revoked_serials": [],
    }
    await api.ok("POST", path, MANAGER, json={"to": "active", "reason": "repaired"})
    assert api.actions.revoked == []
    gone = await api.ok(
        "POST", "/v1/gateways/gw-0001/lifecycle", MANAGER, json={"to": "decommissioned", "reason": "torn down"}
    )
    assert (gone["to_state"], len(gone["revoked_serials"])) == ("decommissioned", 1)
    assert api.actions.revoked == [("gw-0001", "cessation_of_operation")]
    again = await api.call("POST", "/v1/gateways/gw-0001/lifecycle", json={"to": "active", "reason": "oops"})
    assert_error(again, 409, "illegal_transition", "allowed from decommissioned: none")
    audit = await api.ok("GET", "/v1/audit", params={"entity": "wl-1", "action": "lifecycle.transition"})
    assert [(e["actor"], e["reason"]) for e in audit["items"][-2:]] == [
        ("tanaka@city", "valve leaking"),
        ("tanaka@city", "repaired"),
    ]


async def test_desired_changes_are_committed_then_delivered(api: Api, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(api.registry, clock)
    await api.registry.create_device("wl-1", "kakogawa", "water_level", actor="admin", gateway_id=gateway)
    await api.registry.create_device("wl-loose", "kakogawa", "water_level", actor="admin")
    first = await api.ok("PATCH", "/v1/gateways/gw-0001/twin/desired", MANAGER, json={"delta": {"poll_s": 5}})
    assert first == {"entity": "gw-0001", "gateway": "gw-0001", "version": 1}
    second = await api.ok("PATCH", "/v1/devices/wl-1/twin/desired", MANAGER, json={"delta": {"alarm_m": 2.5}})
    assert second == {"entity": "wl-1", "gateway": "gw-0001", "version": 2}
    assert api.actions.desired == ["gw-0001", "gw-0001"]
    pending = await api.registry.pending_desired("gw-0001")
    assert [d.delta for d in pending] == [{"poll_s": 5}, {"devices": {"wl-1": {"alarm_m": 2.5}}}]
    twin = await api.ok("GET", "/v1/devices/wl-1/twin", ApiRole.VIEWER)
    assert twin == {
        "entity": "wl-1",
        "desired": {"alarm_m": 2.5},
        "desired_version": 2,
        "reported": {},
        "reported_version": 0,
    }
    removed = await api.ok("PATCH", "/v1/devices/wl-1/twin/desired", json={"delta": {"alarm_m": None}})
    assert removed["version"] == 3
    assert (await api.ok("GET", "/v1/devices/wl-1/twin"))["desired"] == {}
    loose = await api.call("PATCH", "/v1/devices/wl-loose/twin/desired", json={"delta": {"a": 1}})
    assert_error(loose, 400, "invalid", "bound to no gateway")
    empty = await api.call("PATCH", "/v1/gateways/gw-0001/twin/desired", json={"delta": {}})
    assert_error(empty, 400, "invalid", "empty")
    assert api.actions.desired == ["gw-0001", "gw-0001", "gw-0001"]
    # a failed delivery leaves the delta queued; the change is still answered
    api.actions.fail_delivery = True
    late = await api.ok("PATCH", "/v1/gateways/gw-0001/twin/desired", json={"delta": {"poll_s": 10}})
    assert late["version"] == 4
    assert len(await api.registry.pending_desired("gw-0001")) == 4
    entries = await api.ok("GET", "/v1/audit", params={"action": "twin.desired", "limit": 2})
    assert [e["actor"] for e in entries["items"]] == ["tanaka@city", "tanaka@city"]
    assert entries["next"] == entries["items"][-1]["id"]
    rest = await api.ok("GET", "/v1/audit", params={"action": "twin.desired", "after": entries["next"]})
    assert ([e["actor"] for e in rest["items"]], rest["next"]) == (["root@city", "root@city"], None)


async def test_latest_values_and_history(api: Api, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(api.registry, clock)
    await api.registry.create_device("wl-1", "kakogawa", "water_level", actor="admin", gateway_id=gateway)
    batch = [
        (
            seq,
            1.8e9 + seq,
            [
                reading("wl-1", 1.0 + seq, at=1.8e9 + seq),
                reading("wl-1", seq % 2 == 0, quantity="alarm", at=1.8e9 + seq),
            ],
        )
        for seq in range(1, 6)
    ]
    await api.registry.ingest_readings(gateway, batch)
    latest = await api.ok("GET", "/v1/devices/wl-1/latest", ApiRole.CITY_OS)
    assert [(r["quantity"], r["value"], r["seq"]) for r in latest["items"]] == [("alarm", False, 5), ("level", 6.0, 5)]
    history = await api.ok("GET", "/v1/devices/wl-1/history", ApiRole.CITY_OS, params={"quantity": "level", "limit": 3})
    assert ([r["value"] for r in history["items"]], history["more"]) == ([2.0, 3.0, 4.0], True)
    window = await api.ok("GET", "/v1/devices/wl-1/history", params={"since": 1.8e9 + 4, "until": 1.8e9 + 5})
    assert sorted((r["quantity"], r["observed_at"]) for r in window["items"]) == [
        ("alarm", 1.8e9 + 4),
        ("level", 1.8e9 + 4),
    ]
    assert window["more"] is False
    assert_error(await api.call("GET", "/v1/devices/wl-9/latest"), 404, "not_found")
    assert (await api.ok("GET", "/v1/gateways/gw-0001/latest"))["items"] == []
