"""Twins: versioned desired deltas per gateway, pending deltas, reported state merging, stale versions refused."""

from __future__ import annotations

import copy
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_registry import InvalidInput, Registry, StaleVersion, State
from device_registry.merge import merge_patch
from kakehashi.wire import JSONObject, JSONValue
from tests.postgres import FakeClock, bound_device, organisation, provisioned_gateway
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture

_examples = itertools.count(1)

scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text("abcxyz", max_size=4)
keys = st.sampled_from(["a", "b", "c", "poll_s", "mode"])
values: st.SearchStrategy[JSONValue] = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8
)
documents: st.SearchStrategy[JSONObject] = st.dictionaries(keys, values, max_size=4)


# ----------------------------------------------------------------------------------------------------------------
# JSON Merge Patch (pure)


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [  # RFC 7396, appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_follows_rfc_7396(target: JSONValue, patch: JSONValue, result: JSONValue) -> None:
    assert merge_patch(target, patch) == result


@given(target=documents, patch=documents)
def test_merge_patch_is_idempotent_and_leaves_its_inputs_alone(target: JSONObject, patch: JSONObject) -> None:
    before = (copy.deepcopy(target), copy.deepcopy(patch))
    merged = merge_patch(target, patch)
    assert merge_patch(merged, patch) == merged
    assert merge_patch(merged, {}) == merged
    assert (target, patch) == before
    assert all(merged.get(key) == merge_patch(target.get(key), patch[key]) for key in patch if patch[key] is not None)  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------------------------------
# Twins in the registry


async def test_desired_changes_take_the_gateway_version_sequence(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await bound_device(registry, "valve-0003", gateway, kind="valve")
    assert await registry.set_desired(gateway, {"heartbeat_s": 60}, "operator-1") == 1
    assert await registry.set_desired("valve-0003", {"position": 40}, "operator-1") == 2
    assert await registry.set_desired(gateway, {"heartbeat_s": None, "modbus": {"poll_s": 5}}, "operator-2") == 3
    pending = await registry.pending_desired(gateway)
    assert [(d.version, d.target_id, d.delta) for d in pending] == [
        (1, gateway, {"heartbeat_s": 60}),
        (2, "valve-0003", {"devices": {"valve-0003": {"position": 40}}}),
        (3, gateway, {"heartbeat_s": None, "modbus": {"poll_s": 5}}),
    ]
    gateway_twin = await registry.get_twin(gateway)
    assert (gateway_twin.desired, gateway_twin.desired_version) == ({"modbus": {"poll_s": 5}}, 3)
    device_twin = await registry.get_twin("valve-0003")
    assert (device_twin.desired, device_twin.desired_version) == ({"position": 40}, 2)
    entry = (await registry.audit(entity="valve-0003", action="twin.desired"))[-1]
    assert (entry.actor, entry.detail["version"], entry.detail["delta"]) == ("operator-1", 2, {"position": 40})


async def test_reported_state_merges_and_acknowledges_pending_deltas(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await bound_device(registry, "valve-0003", gateway, kind="valve")
    for delta in ({"a": 1}, {"b": 2}, {"c": 3}):
        await registry.set_desired(gateway, delta, "operator-1")
    twin = await registry.merge_reported(gateway, 2, {"firmware": "0.4.1", "devices": {"valve-0003": {"position": 40}}})
    assert (twin.reported, twin.reported_version) == (
        {"firmware": "0.4.1", "devices": {"valve-0003": {"position": 40}}},
        2,
    )
    assert [d.version for d in await registry.pending_desired(gateway)] == [3]
    # The same version may be reported again; it merges.
    twin = await registry.merge_reported(gateway, 2, {"uptime_s": 12})
    assert twin.reported == {"firmware": "0.4.1", "devices": {"valve-0003": {"position": 40}}, "uptime_s": 12}
    device_twin = await registry.get_twin("valve-0003")
    assert (device_twin.reported, device_twin.reported_version) == ({"position": 40}, 2)


async def test_stale_and_unknown_versions_are_refused(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    for delta in ({"a": 1}, {"b": 2}):
        await registry.set_desired(gateway, delta, "operator-1")
    await registry.merge_reported(gateway, 2, {"a": 1, "b": 2}, seq=10)
    with pytest.raises(StaleVersion) as stale:
        await registry.merge_reported(gateway, 1, {"a": 0}, seq=11)
    assert stale.value.reason == "stale_version"
    assert stale.value.message == (
        "gateway gw-0001 reported version 1, older than the version 2 it already reported: refused as stale"
    )
    with pytest.raises(StaleVersion) as unknown:
        await registry.merge_reported(gateway, 9, {"a": 9}, seq=12)
    assert unknown.value.reason == "unknown_version"
    twin = await registry.get_twin(gateway)
    assert (twin.reported, twin.reported_version) == ({"a": 1, "b": 2}, 2)
    # Refused reports were still received: completeness counts them, and a redelivery changes nothing.
    assert (await registry.completeness(gateway)).received == 3
    assert (await registry.merge_reported(gateway, 1, {"a": 0}, seq=11)).reported == {"a": 1, "b": 2}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(deltas=st.lists(documents.filter(bool), min_size=1, max_size=6), data=st.data())
async def test_desired_and_reported_documents_follow_the_merge_model(
    registry: Registry, clock: FakeClock, deltas: list[JSONObject], data: st.DataObject
) -> None:
    gateway = await provisioned_gateway(registry, clock, f"gw-m{next(_examples)}")
    desired: JSONObject = {}
    for version, delta in enumerate(deltas, 1):
        assert await registry.set_desired(gateway, delta, "operator-1") == version
        desired = merge_patch(desired, delta)  # type: ignore[assignment]
    reports = data.draw(st.lists(st.tuples(st.integers(0, len(deltas)), documents), max_size=6), label="reports")
    reported: JSONObject = {}
    stored = 0
    for version, state in reports:
        if version < stored:
            with pytest.raises(StaleVersion):
                await registry.merge_reported(gateway, version, state)
            continue
        await registry.merge_reported(gateway, version, state)
        reported, stored = merge_patch(reported, state), version  # type: ignore[assignment]
    twin = await registry.get_twin(gateway)
    assert (twin.desired, twin.desired_version) == (desired, len(deltas))
    assert (twin.reported, twin.reported_version) == (reported, stored)
    assert [d.version for d in await registry.pending_desired(gateway)] == list(range(stored + 1, len(deltas) + 1))


async def test_a_device_moved_to_another_gateway_takes_its_desired_state_along(
    registry: Registry, clock: FakeClock
) -> None:
    first = await provisioned_gateway(registry, clock, "gw-0001")
    second = await provisioned_gateway(registry, clock, "gw-0002")
    await bound_device(registry, "valve-0003", first, kind="valve")
    await registry.set_desired("valve-0003", {"position": 40, "mode": "auto"}, "operator-1")
    await registry.bind_device("valve-0003", second, actor="tech-3", reason="moved to the other bank")
    (moved,) = await registry.pending_desired(second)
    assert (moved.version, moved.delta) == (1, {"devices": {"valve-0003": {"position": 40, "mode": "auto"}}})
    assert (await registry.get_twin("valve-0003")).desired_version == 1


async def test_desired_changes_need_a_reachable_live_target(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await organisation(registry)
    await registry.create_device("valve-0009", "kakogawa", "valve", actor="admin")
    with pytest.raises(InvalidInput, match="bound to no gateway: bind it before"):
        await registry.set_desired("valve-0009", {"position": 1}, "operator-1")
    with pytest.raises(InvalidInput, match="desired delta is empty"):
        await registry.set_desired(gateway, {}, "operator-1")
    with pytest.raises(InvalidInput, match="bytes encoded; the limit is 65536"):
        await registry.set_desired(gateway, {"blob": "x" * 70_000}, "operator-1")
    await registry.transition(gateway, State.DECOMMISSIONED, "admin", "site closed")
    with pytest.raises(InvalidInput, match="decommissioned: its desired state cannot change"):
        await registry.set_desired(gateway, {"a": 1}, "operator-1")
