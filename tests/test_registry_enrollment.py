"""Enrollment tokens (one-time, expiring, stored hashed), certificate records and the audit query."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta

import pytest
import sqlalchemy as sa

from device_registry import InvalidInput, NotFound, Registry, State, TokenRefused
from device_registry.schema import enrollment_tokens
from tests.postgres import FakeClock, organisation, provisioned_gateway
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture


async def _gateway(registry: Registry, gateway_id: str = "gw-0001") -> str:
    await organisation(registry)
    await registry.create_gateway(gateway_id, "kakogawa", actor="admin")
    return gateway_id


async def test_a_token_works_once_and_is_stored_hashed(registry: Registry) -> None:
    gateway = await _gateway(registry)
    token = await registry.create_enrollment_token(gateway, actor="tech-3", ttl=timedelta(hours=2))
    async with registry.engine.connect() as conn:
        stored = (await conn.execute(sa.select(enrollment_tokens))).one()
    assert stored.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(tuple(stored))
    await registry.consume_enrollment_token(token, gateway)
    with pytest.raises(TokenRefused) as again:
        await registry.consume_enrollment_token(token, gateway)
    assert again.value.reason == "token_used"
    assert again.value.message.startswith("enrollment token for gw-0001 was already used at ")
    entries = (await registry.audit(entity=gateway))[-2:]
    assert [(e.action, e.actor, e.detail["refusal"]) for e in entries] == [
        ("enrollment.token_consumed", gateway, None),
        ("enrollment.token_refused", gateway, "token_used"),
    ]


async def test_expired_unknown_and_foreign_tokens_are_refused_with_distinct_reasons(
    registry: Registry, clock: FakeClock
) -> None:
    gateway = await _gateway(registry, "gw-0001")
    other = await _gateway(registry, "gw-0002")
    token = await registry.create_enrollment_token(gateway, actor="tech-3", ttl=timedelta(minutes=30))
    with pytest.raises(TokenRefused) as foreign:
        await registry.consume_enrollment_token(token, other)
    assert foreign.value.reason == "token_wrong_gateway"
    with pytest.raises(TokenRefused) as unknown:
        await registry.consume_enrollment_token("not-a-token", gateway)
    assert unknown.value.reason == "token_unknown"
    clock.advance(timedelta(minutes=30))
    with pytest.raises(TokenRefused) as expired:
        await registry.consume_enrollment_token(token, gateway)
    assert expired.value.reason == "token_expired"
    assert expired.value.message == (
        "enrollment token for gw-0001 expired at 2026-04-01T09:30:00+00:00: ask for a new one"
    )
    fresh = await registry.create_enrollment_token(gateway, actor="tech-3")
    await registry.consume_enrollment_token(fresh, gateway)


async def test_concurrent_uses_of_one_token_succeed_once(registry: Registry) -> None:
    gateway = await _gateway(registry)
    token = await registry.create_enrollment_token(gateway, actor="tech-3")
    outcomes = await asyncio.gather(
        *(registry.consume_enrollment_token(token, gateway) for _ in range(4)), return_exceptions=True
    )
    assert outcomes.count(None) == 1
    assert sorted(o.reason for o in outcomes if isinstance(o, TokenRefused)) == ["token_used"] * 3


async def test_tokens_for_decommissioned_gateways_and_bad_lifetimes(registry: Registry) -> None:
    gateway = await _gateway(registry)
    with pytest.raises(InvalidInput, match="at most 30 days"):
        await registry.create_enrollment_token(gateway, actor="tech-3", ttl=timedelta(days=31))
    token = await registry.create_enrollment_token(gateway, actor="tech-3")
    await registry.transition(gateway, State.DECOMMISSIONED, "admin", "never installed")
    with pytest.raises(TokenRefused) as guessed:  # without a valid token nobody learns the gateway's state
        await registry.consume_enrollment_token("not-the-token", gateway)
    assert guessed.value.reason == "token_unknown"
    with pytest.raises(TokenRefused) as refused:
        await registry.consume_enrollment_token(token, gateway)
    assert refused.value.reason == "gateway_decommissioned"
    with pytest.raises(InvalidInput, match="decommissioned: it cannot enroll"):
        await registry.create_enrollment_token(gateway, actor="tech-3")


async def test_certificates_are_recorded_and_revoked_once(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    recorded = await registry.record_certificate(gateway, "00ABCDEF", clock.now + timedelta(days=90), actor="pki")
    assert recorded.serial == "abcdef"
    assert recorded.is_valid_at(clock.now)
    revoked = await registry.revoke_certificate("abcdef", actor="pki", reason="key compromise")
    assert (revoked.status, revoked.revoked_at, revoked.revocation_reason) == ("revoked", clock.now, "key compromise")
    assert not revoked.is_valid_at(clock.now)
    await registry.revoke_certificate("abcdef", actor="pki", reason="again")
    assert len(await registry.audit(entity=gateway, action="certificate.revoked")) == 1
    with pytest.raises(NotFound, match="no certificate with serial 1234"):
        await registry.revoke_certificate("1234", actor="pki", reason="?")
    with pytest.raises(InvalidInput, match="1-40 hex digits"):
        await registry.record_certificate(gateway, "xyz", clock.now, actor="pki")
    with pytest.raises(InvalidInput, match="not_after must be an aware datetime"):
        await registry.record_certificate(gateway, "abc", clock.now.replace(tzinfo=None), actor="pki")


async def test_audit_query_filters_and_pages(registry: Registry, clock: FakeClock) -> None:
    await organisation(registry)
    start = clock.now
    for number in range(5):
        clock.advance(timedelta(minutes=1))
        await registry.append_audit(
            actor="agent-1",
            action="command.sent",
            entity_id=f"valve-{number % 2}",
            reason="operator asked",
            detail={"n": number},
        )
    assert [e.detail["n"] for e in await registry.audit(entity="valve-1")] == [1, 3]
    assert [e.detail["n"] for e in await registry.audit(since=start + timedelta(minutes=4))] == [3, 4]
    first = await registry.audit(action="command.sent", limit=2)
    rest = await registry.audit(action="command.sent", after=first[-1].id)
    assert [e.detail["n"] for e in [*first, *rest]] == [0, 1, 2, 3, 4]
    assert all(e.at.tzinfo is not None for e in rest)
    assert (await registry.audit(actor="admin"))[0].action == "organisation.created"
