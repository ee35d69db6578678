"""Presence (status, will, heartbeat time-out), API tokens, and the multi-gateway batched ingest."""

from __future__ import annotations

from datetime import timedelta

import pytest

from device_registry import ApiRole, InvalidInput, NotFound, Registry, State, TokenRefused, TrafficRefused
from device_registry.errors import AlreadyExists
from kakehashi import wire
from tests.postgres import FakeClock, bound_device, provisioned_gateway, reading
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture

T0 = 1.8e9


def status(state: wire.StatusState, reason: wire.StatusReason, health: dict[str, object] | None = None):
    return wire.StatusMessage(state=state, reason=reason, sent_at=T0, health=health)


ONLINE = status(wire.StatusState.ONLINE, wire.StatusReason.CONNECTED, {"outbox": 0})
HEARTBEAT = status(wire.StatusState.ONLINE, wire.StatusReason.HEARTBEAT)
WILL = status(wire.StatusState.OFFLINE, wire.StatusReason.WILL)


async def test_status_connected_then_will_flips_presence_and_activates_the_gateway(
    registry: Registry, clock: FakeClock
) -> None:
    gateway = await provisioned_gateway(registry, clock)
    assert await registry.get_presence(gateway) is None
    change = await registry.record_status(gateway, ONLINE, received_at=T0)
    assert (change.came_online, change.went_offline) == (True, False)
    assert (await registry.get_gateway(gateway)).state is State.ACTIVE
    again = await registry.record_status(gateway, HEARTBEAT, received_at=T0 + 30)
    assert (again.came_online, again.presence.changed_at, again.presence.last_seen) == (False, T0, T0 + 30)
    assert again.presence.health == {"outbox": 0}  # a status without health keeps the last one
    gone = await registry.record_status(gateway, WILL, received_at=T0 + 40)
    assert (gone.went_offline, gone.presence.online, gone.presence.reason) == (True, False, "will")


async def test_silence_past_the_timeout_marks_a_gateway_offline_once(registry: Registry, clock: FakeClock) -> None:
    quiet = await provisioned_gateway(registry, clock, "gw-quiet")
    chatty = await provisioned_gateway(registry, clock, "gw-chatty")
    await registry.record_status(quiet, ONLINE, received_at=T0)
    await registry.record_status(chatty, ONLINE, received_at=T0)
    await registry.ingest_many([], seen={chatty: T0 + 80})
    assert await registry.expire_presence(90, now=T0 + 100) == [quiet]
    assert await registry.expire_presence(90, now=T0 + 101) == []
    found = await registry.presence_of([quiet, chatty])
    assert (found[quiet].online, found[quiet].reason) == (False, "heartbeat_timeout")
    assert found[chatty].online
    # traffic alone does not bring it back; its next heartbeat does
    await registry.ingest_many([], seen={quiet: T0 + 120})
    assert not (await registry.get_presence(quiet)).online  # type: ignore[union-attr]
    assert (await registry.record_status(quiet, HEARTBEAT, received_at=T0 + 121)).came_online
    with pytest.raises(InvalidInput):
        await registry.expire_presence(0)


async def test_a_suspended_gateway_status_is_refused(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await registry.record_status(gateway, ONLINE, received_at=T0)
    await registry.transition(gateway, State.SUSPENDED, "admin", "stolen")
    with pytest.raises(TrafficRefused):
        await registry.record_status(gateway, HEARTBEAT, received_at=T0 + 1)


async def test_ingest_many_stores_several_gateways_in_one_transaction(registry: Registry, clock: FakeClock) -> None:
    gw1 = await provisioned_gateway(registry, clock, "gw-0001")
    gw2 = await provisioned_gateway(registry, clock, "gw-0002")
    await bound_device(registry, "wl-0001", gw1)
    await bound_device(registry, "wl-0002", gw2)
    batches = [
        (gw2, [wire_message(2, "wl-0002")]),
        (gw1, [wire_message(1, "wl-0001"), wire_message(2, "wl-0001")]),
    ]
    results = await registry.ingest_many(batches, seen={gw1: T0, gw2: T0})
    assert [r.stored for r in results] == [1, 2]
    again = await registry.ingest_many(batches)
    assert [r.duplicates for r in again] == [1, 2]
    assert set(await registry.presence_of([gw1, gw2])) == {gw1, gw2}


async def test_ingest_many_rolls_back_everything_on_an_unknown_gateway(registry: Registry, clock: FakeClock) -> None:
    gw1 = await provisioned_gateway(registry, clock, "gw-0001")
    await bound_device(registry, "wl-0001", gw1)
    with pytest.raises(NotFound):
        await registry.ingest_many([(gw1, [wire_message(1, "wl-0001")]), ("gw-ghost", [wire_message(1, "wl-0001")])])
    assert await registry.history("wl-0001") == []


def wire_message(seq: int, device: str) -> tuple[int, float, list[wire.Reading]]:
    return (seq, T0 + seq, [reading(device, float(seq), at=T0 + seq)])


async def test_api_tokens_authenticate_until_revoked_or_expired(registry: Registry, clock: FakeClock) -> None:
    secret, token = await registry.create_api_token("tanaka@kakogawa", "asset-manager", actor="admin")
    assert secret.startswith("kh_")
    assert token.role is ApiRole.ASSET_MANAGER
    principal = await registry.authenticate_api_token(secret)
    assert (principal.name, principal.role) == ("tanaka@kakogawa", ApiRole.ASSET_MANAGER)
    with pytest.raises(AlreadyExists):
        await registry.create_api_token("tanaka@kakogawa", "viewer", actor="admin")
    with pytest.raises(TokenRefused) as unknown:
        await registry.authenticate_api_token("kh_nonsense")
    assert unknown.value.reason == "api_token_unknown"
    await registry.revoke_api_token("tanaka@kakogawa", actor="admin", reason="left the team")
    with pytest.raises(TokenRefused) as revoked:
        await registry.authenticate_api_token(secret)
    assert revoked.value.reason == "api_token_revoked"

    short, _ = await registry.create_api_token("city-os", ApiRole.CITY_OS, actor="admin", ttl=timedelta(hours=1))
    assert (await registry.authenticate_api_token(short)).role is ApiRole.CITY_OS
    clock.advance(timedelta(hours=2))
    with pytest.raises(TokenRefused) as expired:
        await registry.authenticate_api_token(short)
    assert expired.value.reason == "api_token_expired"
    assert [t.name for t in await registry.list_api_tokens()] == ["city-os", "tanaka@kakogawa"]
    actions = [entry.action for entry in await registry.audit(action="api_token.created")]
    assert actions == ["api_token.created", "api_token.created"]


@pytest.mark.parametrize(("name", "role"), [("Bad Name", "viewer"), ("ok", "root")])
async def test_bad_token_names_and_roles_are_refused(registry: Registry, name: str, role: str) -> None:
    with pytest.raises(InvalidInput):
        await registry.create_api_token(name, role, actor="admin")
