"""Lifecycle: the full state × state matrix, preconditions, automatic transitions, effects and their audit entries."""

from __future__ import annotations

from datetime import timedelta

import pytest

from device_registry import IllegalTransition, InvalidInput, NotFound, Registry, State
from tests.postgres import FakeClock, bound_device, organisation, provisioned_gateway, reading, watch_tag
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture

# Written out by hand (not derived from device_registry.lifecycle) so that the test checks the machine.
LEGAL = {
    ("registered", "provisioned"),
    ("registered", "decommissioned"),
    ("provisioned", "active"),
    ("provisioned", "decommissioned"),
    ("active", "suspended"),
    ("active", "decommissioned"),
    ("suspended", "active"),
    ("suspended", "decommissioned"),
}
ALLOWED_TEXT = {
    "registered": "provisioned, decommissioned",
    "provisioned": "active, decommissioned",
    "active": "suspended, decommissioned",
    "suspended": "active, decommissioned",
    "decommissioned": "none",
}
PATH = {
    State.REGISTERED: (),
    State.PROVISIONED: (State.PROVISIONED,),
    State.ACTIVE: (State.PROVISIONED, State.ACTIVE),
    State.SUSPENDED: (State.PROVISIONED, State.ACTIVE, State.SUSPENDED),
    State.DECOMMISSIONED: (State.DECOMMISSIONED,),
}


async def _tag_in(registry: Registry, tag_id: str, state: State) -> None:
    """A consented watch tag (every precondition holds without automatic transitions) driven to ``state``."""
    await watch_tag(registry, tag_id, consent=False)
    await registry.set_consent(tag_id, True, actor="admin", reason="consent form signed")
    for step in PATH[state]:
        await registry.transition(tag_id, step, "admin", f"to {step}")
    assert (await registry.get_device(tag_id)).state is state


@pytest.mark.parametrize("from_state", list(State))
async def test_every_pair_of_states_is_legal_or_refused_with_the_reason(registry: Registry, from_state: State) -> None:
    for number, to_state in enumerate(State):
        tag_id = f"tag-{number:04d}"
        await _tag_in(registry, tag_id, from_state)
        audited = len(await registry.audit(entity=tag_id, action="lifecycle.transition"))
        if (from_state.value, to_state.value) in LEGAL:
            done = await registry.transition(tag_id, to_state, "operator-7", "matrix")
            assert (done.from_state, done.to_state) == (from_state, to_state)
            assert (await registry.get_device(tag_id)).state is to_state
            entry = (await registry.audit(entity=tag_id, action="lifecycle.transition"))[-1]
            assert (entry.actor, entry.reason, entry.detail["from"], entry.detail["to"]) == (
                "operator-7",
                "matrix",
                from_state.value,
                to_state.value,
            )
            continue
        with pytest.raises(IllegalTransition) as refused:
            await registry.transition(tag_id, to_state, "operator-7", "matrix")
        assert refused.value.message == (
            f"device {tag_id} is {from_state}: it cannot become {to_state} "
            f"(allowed from {from_state}: {ALLOWED_TEXT[from_state]})"
        )
        assert refused.value.reason == "illegal_transition"
        assert (refused.value.from_state, refused.value.to_state) == (from_state, to_state)
        assert (await registry.get_device(tag_id)).state is from_state
        assert len(await registry.audit(entity=tag_id, action="lifecycle.transition")) == audited


async def test_decommissioned_device_cannot_come_back(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0007", gateway)
    await registry.transition("wl-0007", State.DECOMMISSIONED, "admin", "washed away")
    with pytest.raises(IllegalTransition, match=r"^device wl-0007 is decommissioned: it cannot become active "):
        await registry.transition("wl-0007", State.ACTIVE, "admin", "found it")
    with pytest.raises(IllegalTransition) as refused:
        await registry.transition("wl-0007", State.ACTIVE, "admin", "found it")
    assert refused.value.message == (
        "device wl-0007 is decommissioned: it cannot become active (allowed from decommissioned: none)"
    )


async def test_gateway_needs_an_active_certificate_to_be_provisioned(registry: Registry, clock: FakeClock) -> None:
    await organisation(registry)
    await registry.create_gateway("gw-0001", "kakogawa", actor="admin")
    with pytest.raises(IllegalTransition) as refused:
        await registry.transition("gw-0001", State.PROVISIONED, "admin", "ready")
    assert refused.value.reason == "precondition"
    assert refused.value.message == (
        "gateway gw-0001 cannot become provisioned: it has no active certificate "
        "(record the certificate issued to it first)"
    )
    # An already expired certificate neither provisions it nor satisfies the precondition.
    await registry.record_certificate("gw-0001", "abc1", clock.now - timedelta(seconds=1), actor="pki")
    assert (await registry.get_gateway("gw-0001")).state is State.REGISTERED
    with pytest.raises(IllegalTransition, match="no active certificate"):
        await registry.transition("gw-0001", State.PROVISIONED, "admin", "ready")


async def test_recording_a_certificate_provisions_a_registered_gateway(registry: Registry, clock: FakeClock) -> None:
    await provisioned_gateway(registry, clock, "gw-0001")
    gateway = await registry.get_gateway("gw-0001")
    assert gateway.state is State.PROVISIONED
    entry = (await registry.audit(entity="gw-0001", action="lifecycle.transition"))[-1]
    assert (entry.actor, entry.detail["from"], entry.detail["to"]) == ("pki", "registered", "provisioned")
    assert entry.reason.startswith("certificate ")
    assert entry.reason.endswith(" issued")


async def test_device_needs_a_gateway_and_a_watch_tag_needs_consent(registry: Registry, clock: FakeClock) -> None:
    await organisation(registry)
    await registry.create_device("wl-0001", "kakogawa", "water_level", actor="admin")
    with pytest.raises(IllegalTransition, match="bound to no gateway and has no certificate of its own"):
        await registry.transition("wl-0001", State.PROVISIONED, "admin", "ready")
    await watch_tag(registry, "tag-0001", consent=False)
    with pytest.raises(IllegalTransition, match="watch tag without recorded consent") as refused:
        await registry.transition("tag-0001", State.PROVISIONED, "admin", "ready")
    assert refused.value.reason == "precondition"
    # Binding a tag before its consent is recorded binds it, but it stays registered (nothing of it is stored).
    gateway = await provisioned_gateway(registry, clock)
    tag = await registry.bind_device("tag-0001", gateway, actor="admin", reason="home gateway")
    assert (tag.gateway_id, tag.state) == (gateway, State.REGISTERED)
    # A device with a certificate of its own (an edge node) needs no gateway.
    await registry.create_device("node-0001", "kakogawa", "node", actor="admin")
    await registry.record_certificate("node-0001", "beef", clock.now + timedelta(days=30), actor="pki")
    assert (await registry.get_device("node-0001")).state is State.PROVISIONED


async def test_binding_provisions_and_first_messages_activate(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await organisation(registry)
    await registry.create_device("wl-0007", "kakogawa", "water_level", actor="admin")
    device = await registry.bind_device("wl-0007", gateway, actor="tech-3", reason="installed at bridge 3")
    assert device.state is State.PROVISIONED
    assert device.gateway_id == gateway
    result = await registry.ingest_readings(gateway, [(1, 1.8e9, [reading("wl-0007")])])
    assert result.activated == (gateway, "wl-0007")
    assert (await registry.get_gateway(gateway)).state is State.ACTIVE
    assert (await registry.get_device("wl-0007")).state is State.ACTIVE
    automatic = [e for e in await registry.audit(action="lifecycle.transition") if e.detail["to"] == "active"]
    assert [(e.entity_id, e.actor) for e in automatic] == [(gateway, "system"), ("wl-0007", "system")]


async def test_decommissioning_revokes_certificates_and_keeps_history(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0007", gateway)
    await registry.ingest_readings(gateway, [(1, 1.8e9, [reading("wl-0007")])])
    serial = (await registry.certificates(gateway))[0].serial
    done = await registry.transition(gateway, State.DECOMMISSIONED, "admin", "site closed")
    assert done.revoked_serials == (serial,)
    (certificate,) = await registry.certificates(gateway)
    assert certificate.status == "revoked"
    assert certificate.revoked_at == clock.now
    assert certificate.revocation_reason == "decommissioned: site closed"
    assert [r.value for r in await registry.history("wl-0007")] == [1.0]
    with pytest.raises(InvalidInput, match="decommissioned: no certificate can be issued"):
        await registry.record_certificate(gateway, "1234", clock.now + timedelta(days=1), actor="pki")


async def test_transitions_need_an_actor_a_reason_and_a_known_entity(registry: Registry) -> None:
    await watch_tag(registry, "tag-0001", consent=True)
    with pytest.raises(InvalidInput, match="reason must say why"):
        await registry.transition("tag-0001", State.ACTIVE, "admin", " ")
    with pytest.raises(InvalidInput, match="actor"):
        await registry.transition("tag-0001", State.ACTIVE, "", "because")
    with pytest.raises(NotFound, match="no gateway or device with id 'tag-9999'"):
        await registry.transition("tag-9999", State.ACTIVE, "admin", "because")
    with pytest.raises(ValueError, match="'sleeping' is not a valid State"):
        await registry.transition("tag-0001", "sleeping", "admin", "because")  # type: ignore[arg-type]
