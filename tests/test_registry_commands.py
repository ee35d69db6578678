"""Commands in the registry: creation rules, idempotency, confirmation, per-device serialisation, acks, expiry.

Every case runs on SQLite and PostgreSQL. The lifecycle rules themselves are checked pure (every pair of states), and
a property test drives random sequences of sends, acks, cancels, confirmations and expiries through the registry.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_registry import CommandRefused, CommandState, InvalidInput, NotFound, Registry, State, TrafficRefused
from device_registry.command_rules import TRANSITIONS, check_move, new_command_id
from kakehashi import wire
from kakehashi.identity import ID_PATTERN
from tests.postgres import FakeClock, bound_device, organisation, provisioned_gateway
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture

S = CommandState
TTL = timedelta(minutes=5)
_keys = itertools.count(1)


def key() -> str:
    return f"key-{next(_keys)}"


def ack(command_id: str, status: wire.AckStatus, **extra: object) -> wire.CommandAck:
    return wire.CommandAck(command_id, status, 1.8e9, **extra)  # type: ignore[arg-type]


async def fleet(registry: Registry, clock: FakeClock) -> tuple[str, str]:
    gateway = await provisioned_gateway(registry, clock)
    device = await bound_device(registry, "valve-0001", gateway, kind="valve")
    return gateway, device


async def command(registry: Registry, device: str = "valve-0001", name: str = "open", **options: object) -> str:
    made = await registry.create_command(
        device,
        name,
        {},
        actor="tanaka",
        ttl=TTL,
        idempotency_key=key(),
        **options,  # type: ignore[arg-type]
    )
    return made.id


# ----------------------------------------------------------------------------------------------------------------
# The rules, pure

ALLOWED = {
    S.AWAITING_CONFIRMATION: {S.QUEUED, S.CANCELLED, S.EXPIRED},
    S.QUEUED: {S.SENT, S.DELIVERED, S.SUCCEEDED, S.FAILED, S.EXPIRED, S.CANCELLED},
    S.SENT: {S.DELIVERED, S.SUCCEEDED, S.FAILED, S.EXPIRED, S.CANCELLED},
    S.DELIVERED: {S.SUCCEEDED, S.FAILED, S.EXPIRED},
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(S, S)))
def test_every_move_is_allowed_or_refused_as_the_table_says(current: S, target: S) -> None:
    if target in ALLOWED.get(current, set()):
        check_move("c-1", current, target)
        return
    with pytest.raises(CommandRefused) as refused:
        check_move("c-1", current, target)
    assert refused.value.reason == "illegal_transition"
    assert f"cannot become {target}" in refused.value.message
    assert set(TRANSITIONS[current]) == ALLOWED.get(current, set())


def test_final_states_are_exactly_the_ones_with_no_way_out() -> None:
    assert {state for state in S if state.is_final} == {s for s in S if not TRANSITIONS[s]}
    assert {state for state in S if state.is_final} == {S.SUCCEEDED, S.FAILED, S.EXPIRED, S.CANCELLED}


def test_command_ids_fit_the_wire_and_sort_by_creation(clock: FakeClock) -> None:
    first = new_command_id(clock.now)
    later = new_command_id(clock.advance(timedelta(milliseconds=1)))
    assert len(first) == 22
    assert first.startswith("c-")
    assert ID_PATTERN.fullmatch(first)
    assert first < later
    assert len({new_command_id(clock.now) for _ in range(1000)}) == 1000


# ----------------------------------------------------------------------------------------------------------------
# Creating


async def test_a_command_is_queued_with_its_deadline_history_and_audit(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    made = await registry.create_command(
        device, "set_mode", {"value": "flood"}, actor="tanaka", ttl=TTL, idempotency_key="k1", precondition_version=3
    )
    assert (made.state, made.gateway_id, made.params, made.requested_by) == (
        S.QUEUED,
        gateway,
        {"value": "flood"},
        "tanaka",
    )
    assert made.deadline == clock.now.timestamp() + 300
    assert (made.precondition_version, made.requires_confirmation, made.confirmed_by) == (3, False, None)
    assert await registry.get_command(made.id) == made
    steps = await registry.command_history(made.id)
    assert [(s.seq, s.state, s.actor, s.at) for s in steps] == [(1, S.QUEUED, "tanaka", clock.now)]
    assert steps[0].detail["idempotency_key"] == "k1"
    entries = await registry.audit(action="command.queued")
    assert [(e.actor, e.entity_id, e.detail["command"]) for e in entries] == [("tanaka", device, made.id)]


async def test_the_same_idempotency_key_returns_the_same_command(registry: Registry, clock: FakeClock) -> None:
    _, device = await fleet(registry, clock)
    first = await registry.create_command(device, "open", {}, actor="tanaka", ttl=TTL, idempotency_key="k")
    clock.advance(timedelta(seconds=10))
    again = await registry.create_command(device, "open", {}, actor="sato", ttl=TTL * 2, idempotency_key="k")
    assert again == first
    with pytest.raises(CommandRefused) as conflict:
        await registry.create_command(device, "close", {}, actor="tanaka", ttl=TTL, idempotency_key="k")
    assert (conflict.value.reason, conflict.value.http_status) == ("idempotency_conflict", 409)
    with pytest.raises(CommandRefused, match="idempotency key 'k'"):
        await registry.create_command(device, "open", {"x": 1}, actor="tanaka", ttl=TTL, idempotency_key="k")
    assert (await registry.list_commands(device=device)).total == 1


@pytest.mark.parametrize("state", [State.SUSPENDED, State.DECOMMISSIONED])
async def test_suspended_and_decommissioned_devices_refuse_commands(
    registry: Registry, clock: FakeClock, state: State
) -> None:
    _, device = await fleet(registry, clock)
    await registry.transition(device, State.ACTIVE, "admin", "test")
    await registry.transition(device, state, "admin", "test")
    with pytest.raises(CommandRefused) as refused:
        await command(registry, device)
    assert refused.value.reason == "device_inactive"
    assert f"is {state}" in refused.value.message


async def test_registered_and_unbound_devices_refuse_commands(registry: Registry, clock: FakeClock) -> None:
    await provisioned_gateway(registry, clock)
    org = await organisation(registry)
    await registry.create_device("wl-0001", org, "water_level", actor="admin")
    with pytest.raises(CommandRefused) as registered:
        await command(registry, "wl-0001")
    assert registered.value.reason == "device_inactive"
    await registry.create_device("node-0001", org, "node", actor="admin")
    await registry.record_certificate("node-0001", "abc1", clock.now + timedelta(days=9), actor="pki")
    with pytest.raises(CommandRefused) as unbound:
        await command(registry, "node-0001")
    assert unbound.value.reason == "device_unbound"
    with pytest.raises(NotFound):
        await command(registry, "nobody")
    with pytest.raises(NotFound):
        await command(registry, "gw-0001")


@pytest.mark.parametrize(
    ("ttl", "name", "idempotency_key", "version", "fragment"),
    [
        (timedelta(0), "open", "k", None, "time to live"),
        (timedelta(seconds=-1), "open", "k", None, "time to live"),
        (timedelta(days=7, seconds=1), "open", "k", None, "at most 7 days"),
        (TTL, "Open", "k", None, "command name"),
        (TTL, "open", "", None, "idempotency key"),
        (TTL, "open", "k" * 129, None, "idempotency key"),
        (TTL, "open", "k", -1, "precondition version"),
    ],
)
async def test_bad_arguments_are_refused(
    registry: Registry,
    clock: FakeClock,
    ttl: timedelta,
    name: str,
    idempotency_key: str,
    version: int | None,
    fragment: str,
) -> None:
    _, device = await fleet(registry, clock)
    with pytest.raises(InvalidInput, match=fragment):
        await registry.create_command(
            device, name, {}, actor="tanaka", ttl=ttl, idempotency_key=idempotency_key, precondition_version=version
        )
    assert (await registry.list_commands()).total == 0


async def test_a_week_is_the_longest_time_to_live(registry: Registry, clock: FakeClock) -> None:
    _, device = await fleet(registry, clock)
    made = await registry.create_command(device, "open", {}, actor="a", ttl=timedelta(days=7), idempotency_key="k")
    assert made.deadline == clock.now.timestamp() + 7 * 86400


# ----------------------------------------------------------------------------------------------------------------
# Confirmation by a second person


async def test_a_second_person_confirms_a_command(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    made = await registry.create_command(
        device, "close", {}, actor="tanaka", ttl=TTL, idempotency_key="k", requires_confirmation=True
    )
    assert made.state is S.AWAITING_CONFIRMATION
    assert await registry.commands_to_send(gateway) == []
    with pytest.raises(CommandRefused) as refused:
        await registry.mark_sent(made.id)
    assert refused.value.reason == "illegal_transition"
    with pytest.raises(CommandRefused) as same:
        await registry.confirm_command(made.id, actor="tanaka")
    assert (same.value.reason, same.value.http_status) == ("confirmation_by_requester", 403)
    clock.advance(timedelta(seconds=30))
    confirmed = await registry.confirm_command(made.id, actor="sato")
    assert (confirmed.state, confirmed.confirmed_by) == (S.QUEUED, "sato")
    assert [c.id for c in await registry.commands_to_send(gateway)] == [made.id]
    with pytest.raises(CommandRefused) as twice:
        await registry.confirm_command(made.id, actor="suzuki")
    assert twice.value.reason == "illegal_transition"
    steps = await registry.command_history(made.id)
    assert [(s.state, s.actor) for s in steps] == [(S.AWAITING_CONFIRMATION, "tanaka"), (S.QUEUED, "sato")]
    assert [e.actor for e in await registry.audit(action="command.queued")] == ["sato"]


async def test_a_confirmation_after_the_deadline_expires_the_command(registry: Registry, clock: FakeClock) -> None:
    _, device = await fleet(registry, clock)
    made = await command(registry, device, requires_confirmation=True)
    clock.advance(TTL)
    with pytest.raises(CommandRefused) as late:
        await registry.confirm_command(made, actor="sato")
    assert late.value.reason == "command_expired"
    assert (await registry.get_command(made)).state is S.EXPIRED


async def test_a_suspended_device_cannot_have_its_command_confirmed(registry: Registry, clock: FakeClock) -> None:
    _, device = await fleet(registry, clock)
    made = await command(registry, device, requires_confirmation=True)
    await registry.transition(device, State.ACTIVE, "admin", "test")
    await registry.transition(device, State.SUSPENDED, "admin", "leaking")
    with pytest.raises(CommandRefused) as refused:
        await registry.confirm_command(made, actor="sato")
    assert refused.value.reason == "device_inactive"
    assert (await registry.get_command(made)).state is S.AWAITING_CONFIRMATION


# ----------------------------------------------------------------------------------------------------------------
# Sending: per-device serialisation


async def test_one_command_per_device_is_in_flight_at_a_time(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    other = await bound_device(registry, "valve-0002", gateway, kind="valve")
    first = await command(registry, device)
    clock.advance(timedelta(seconds=1))
    second = await command(registry, device, "close")
    clock.advance(timedelta(seconds=1))
    third = await command(registry, other)
    assert [c.id for c in await registry.commands_to_send(gateway)] == [first, third]
    assert (await registry.mark_sent(first)).state is S.SENT
    assert [c.id for c in await registry.commands_to_send(gateway)] == [third]
    await registry.apply_acks(gateway, 1, [ack(first, wire.AckStatus.DELIVERED)])
    assert [c.id for c in await registry.commands_to_send(gateway)] == [third]
    await registry.apply_acks(gateway, 2, [ack(first, wire.AckStatus.SUCCEEDED)])
    assert [c.id for c in await registry.commands_to_send(gateway)] == [second, third]


async def test_nothing_is_sent_past_its_deadline_or_to_an_inactive_device(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    other_gateway = await provisioned_gateway(registry, clock, "gw-0002")
    await bound_device(registry, "valve-0009", other_gateway, kind="valve")
    made = await command(registry, device)
    await command(registry, "valve-0009")
    assert [c.id for c in await registry.commands_to_send(gateway, now=clock.now.timestamp() + 299)] == [made]
    assert await registry.commands_to_send(gateway, now=clock.now.timestamp() + 300) == []
    await registry.transition(device, State.ACTIVE, "admin", "test")
    await registry.transition(device, State.SUSPENDED, "admin", "test")
    assert await registry.commands_to_send(gateway) == []
    with pytest.raises(NotFound):
        await registry.commands_to_send("gw-nobody")


async def test_mark_sent_moves_a_queued_command_once(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    made = await command(registry, device)
    sent = await registry.mark_sent(made)
    assert sent.state is S.SENT
    assert await registry.mark_sent(made) == sent
    await registry.apply_acks(gateway, 1, [ack(made, wire.AckStatus.SUCCEEDED)])
    assert (await registry.mark_sent(made)).state is S.SUCCEEDED
    assert [s.state for s in await registry.command_history(made)] == [S.QUEUED, S.SENT, S.SUCCEEDED]
    assert [s.actor for s in await registry.command_history(made)] == ["tanaka", "system", gateway]


async def test_mark_sent_past_the_deadline_expires_instead(registry: Registry, clock: FakeClock) -> None:
    _, device = await fleet(registry, clock)
    made = await command(registry, device)
    clock.advance(TTL)
    assert (await registry.mark_sent(made)).state is S.EXPIRED


# ----------------------------------------------------------------------------------------------------------------
# Acknowledgements


async def test_acks_move_commands_and_keep_the_result(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    made = await command(registry, device)
    await registry.mark_sent(made)
    changed = await registry.apply_acks(gateway, 7, [ack(made, wire.AckStatus.DELIVERED)])
    assert [(c.id, c.state) for c in changed] == [(made, S.DELIVERED)]
    done = await registry.apply_acks(gateway, 8, [ack(made, wire.AckStatus.SUCCEEDED, result={"readback": True})])
    assert (done[0].state, done[0].result) == (S.SUCCEEDED, {"readback": True})
    steps = await registry.command_history(made)
    assert steps[-1].detail == {"ack": "succeeded", "gateway_at": 1.8e9, "seq": 8}
    assert [e.actor for e in await registry.audit(action="command.succeeded")] == [gateway]


async def test_delivered_and_succeeded_in_one_message(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    made = await command(registry, device)
    acks = [ack(made, wire.AckStatus.DELIVERED), ack(made, wire.AckStatus.SUCCEEDED), ack(made, wire.AckStatus.FAILED)]
    changed = await registry.apply_acks(gateway, 3, acks)
    assert [(c.id, c.state) for c in changed] == [(made, S.SUCCEEDED)]
    assert changed[0] == await registry.get_command(made)
    assert [s.state for s in await registry.command_history(made)] == [S.QUEUED, S.DELIVERED, S.SUCCEEDED]


async def test_a_repeated_acks_message_changes_nothing(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    made = await command(registry, device)
    await registry.mark_sent(made)
    assert len(await registry.apply_acks(gateway, 5, [ack(made, wire.AckStatus.DELIVERED)])) == 1
    assert await registry.apply_acks(gateway, 5, [ack(made, wire.AckStatus.SUCCEEDED)]) == []
    assert (await registry.get_command(made)).state is S.DELIVERED
    assert (await registry.completeness(gateway)).received == 1
    assert await registry.mark_received(gateway, 5, channel="acks") is False


async def test_a_rejection_is_a_failure_with_the_gateways_reason(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    made, other = await command(registry, device), await command(registry, device)
    await registry.mark_sent(made)
    changed = await registry.apply_acks(
        gateway,
        1,
        [
            ack(made, wire.AckStatus.REJECTED, reason="precondition: reported version is 4, not 3"),
            ack(other, wire.AckStatus.FAILED, reason="Modbus exception 2 (illegal data address)"),
        ],
    )
    assert [(c.state, c.reason) for c in changed] == [
        (S.FAILED, "rejected by the gateway: precondition: reported version is 4, not 3"),
        (S.FAILED, "Modbus exception 2 (illegal data address)"),
    ]


async def test_acks_of_unknown_or_other_gateways_commands_are_ignored_and_counted(
    registry: Registry, clock: FakeClock
) -> None:
    _, device = await fleet(registry, clock)
    intruder = await provisioned_gateway(registry, clock, "gw-0002")
    made = await command(registry, device)
    await registry.mark_sent(made)
    acks = [ack(made, wire.AckStatus.SUCCEEDED), ack("c-nothing", wire.AckStatus.SUCCEEDED)]
    assert await registry.apply_acks(intruder, 1, acks) == []
    assert (await registry.get_command(made)).state is S.SENT
    entries = await registry.audit(action="command.acks_ignored")
    assert [(e.actor, e.detail["count"]) for e in entries] == [(intruder, 2)]
    assert [a["why"] for a in entries[0].detail["acks"]] == ["other_gateway", "unknown"]  # type: ignore[index,union-attr]


async def test_a_final_state_never_changes(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    made = await command(registry, device)
    await registry.mark_sent(made)
    await registry.cancel_command(made, actor="tanaka", reason="wrong valve")
    assert await registry.apply_acks(gateway, 1, [ack(made, wire.AckStatus.SUCCEEDED)]) == []
    assert (await registry.get_command(made)).state is S.CANCELLED
    late = await registry.audit(action="command.acks_ignored")
    assert late[0].detail["acks"] == [{"command": made, "status": "succeeded", "why": "cancelled"}]
    assert await registry.expire_commands(now=clock.now.timestamp() + 10_000) == []


async def test_a_suspended_gateways_acks_are_refused(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    made = await command(registry, device)
    await registry.mark_received(gateway, 1, channel="events")
    await registry.transition(gateway, State.SUSPENDED, "admin", "stolen")
    with pytest.raises(TrafficRefused):
        await registry.apply_acks(gateway, 2, [ack(made, wire.AckStatus.SUCCEEDED)])
    assert (await registry.get_command(made)).state is S.QUEUED


# ----------------------------------------------------------------------------------------------------------------
# Cancelling and expiry


@pytest.mark.parametrize("stage", ["awaiting", "queued", "sent"])
async def test_cancel_from_awaiting_queued_or_sent(registry: Registry, clock: FakeClock, stage: str) -> None:
    _, device = await fleet(registry, clock)
    made = await command(registry, device, requires_confirmation=stage == "awaiting")
    if stage == "sent":
        await registry.mark_sent(made)
    cancelled = await registry.cancel_command(made, actor="sato", reason="wrong valve")
    assert (cancelled.state, cancelled.reason) == (S.CANCELLED, "wrong valve")
    step = (await registry.command_history(made))[-1]
    assert (step.state, step.actor, step.reason) == (S.CANCELLED, "sato", "wrong valve")


async def test_delivered_and_final_commands_cannot_be_cancelled(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    made = await command(registry, device)
    await registry.apply_acks(gateway, 1, [ack(made, wire.AckStatus.DELIVERED)])
    with pytest.raises(CommandRefused, match="already executing") as refused:
        await registry.cancel_command(made, actor="sato", reason="stop")
    assert refused.value.reason == "illegal_transition"
    await registry.apply_acks(gateway, 2, [ack(made, wire.AckStatus.SUCCEEDED)])
    with pytest.raises(CommandRefused, match="final"):
        await registry.cancel_command(made, actor="sato", reason="stop")
    with pytest.raises(InvalidInput):
        await registry.cancel_command(made, actor="sato", reason=" ")
    with pytest.raises(NotFound):
        await registry.cancel_command("c-none", actor="sato", reason="stop")


async def test_expiry_moves_every_open_command_past_its_deadline(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    awaiting = await command(registry, device, requires_confirmation=True)
    queued, sent, delivered = [await command(registry, device) for _ in range(3)]
    await registry.mark_sent(sent)
    await registry.apply_acks(gateway, 1, [ack(delivered, wire.AckStatus.DELIVERED)])
    done = await command(registry, device)
    await registry.apply_acks(gateway, 2, [ack(done, wire.AckStatus.SUCCEEDED)])
    clock.advance(timedelta(seconds=1))
    young = await registry.create_command(device, "open", {}, actor="a", ttl=TTL, idempotency_key=key())
    assert await registry.expire_commands(now=clock.now.timestamp() + 298) == []
    expired = await registry.expire_commands(now=clock.now.timestamp() + 299)
    assert {c.id for c in expired} == {awaiting, queued, sent, delivered}
    assert all(c.state is S.EXPIRED and c.reason and "deadline" in c.reason for c in expired)
    assert (await registry.get_command(done)).state is S.SUCCEEDED
    assert (await registry.get_command(young.id)).state is S.QUEUED
    assert {e.actor for e in await registry.audit(action="command.expired")} == {"system"}
    clock.advance(TTL)
    assert [c.id for c in await registry.expire_commands()] == [young.id]


# ----------------------------------------------------------------------------------------------------------------
# Listing


async def test_listing_filters_and_pages_in_creation_order(registry: Registry, clock: FakeClock) -> None:
    gateway, device = await fleet(registry, clock)
    other = await bound_device(registry, "valve-0002", gateway, kind="valve")
    made = []
    for index in range(5):
        clock.advance(timedelta(milliseconds=5))
        made.append(await command(registry, device if index % 2 == 0 else other))
    await registry.mark_sent(made[0])
    page = await registry.list_commands(limit=2)
    assert ([c.id for c in page.items], page.total, page.next_cursor) == (made[:2], 5, made[1])
    rest = await registry.list_commands(after=page.next_cursor, limit=10)
    assert ([c.id for c in rest.items], rest.next_cursor) == (made[2:], None)
    assert [c.id for c in (await registry.list_commands(device=other)).items] == [made[1], made[3]]
    assert [c.id for c in (await registry.list_commands(state=S.SENT, gateway=gateway)).items] == [made[0]]
    assert (await registry.list_commands(gateway="gw-0002")).total == 0
    with pytest.raises(InvalidInput):
        await registry.list_commands(limit=0)
    with pytest.raises(NotFound):
        await registry.command_history("c-none")


# ----------------------------------------------------------------------------------------------------------------
# Any sequence leaves a valid lifecycle

_operations = st.lists(
    st.one_of(
        st.sampled_from(["send", "expire", "confirm", "cancel", "tick"]),
        st.sampled_from(list(wire.AckStatus)),
    ),
    min_size=1,
    max_size=10,
)
_examples = itertools.count(1)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=_operations, confirm=st.booleans())
async def test_any_sequence_leaves_a_valid_lifecycle(
    registry: Registry, clock: FakeClock, operations: list[str | wire.AckStatus], confirm: bool
) -> None:
    example = next(_examples)
    gateway = f"gw-prop-{example}"
    await provisioned_gateway(registry, clock, gateway)
    device = await bound_device(registry, f"valve-prop-{example}", gateway, kind="valve")
    made = await command(registry, device, requires_confirmation=confirm)
    seq = 0
    refusals: list[str] = []
    for operation in operations:
        try:  # refusals are part of the game: they must be the lifecycle's own
            if operation == "send":
                await registry.mark_sent(made)
            elif operation == "expire":
                await registry.expire_commands()
            elif operation == "confirm":
                await registry.confirm_command(made, actor="sato")
            elif operation == "cancel":
                await registry.cancel_command(made, actor="sato", reason="changed my mind")
            elif operation == "tick":
                clock.advance(timedelta(minutes=2))
            else:
                seq += 1
                await registry.apply_acks(gateway, seq, [ack(made, wire.AckStatus(operation))])
        except CommandRefused as refused:
            refusals.append(refused.reason)
    assert set(refusals) <= {"illegal_transition", "command_expired"}
    steps = await registry.command_history(made)
    assert steps[0].state is (S.AWAITING_CONFIRMATION if confirm else S.QUEUED)
    assert [s.seq for s in steps] == list(range(1, len(steps) + 1))
    for before, after in itertools.pairwise(steps):
        assert after.state in TRANSITIONS[before.state], (before.state, after.state)
        assert before.at <= after.at
    assert all(not s.state.is_final for s in steps[:-1])
    assert (await registry.get_command(made)).state is steps[-1].state
