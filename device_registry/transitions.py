"""Applying lifecycle transitions to stored entities: gather facts, check, change state, run effects, audit.

The rules are :mod:`device_registry.lifecycle`; this module is their storage side and runs in the caller's
transaction, with the entity's row locked (PostgreSQL) so two concurrent transitions cannot both pass the check.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry import audit, certificates
from device_registry.errors import IllegalTransition
from device_registry.inventory import EntityRow, entity
from device_registry.lifecycle import EFFECTS, Effect, Facts, State, check_transition
from device_registry.models import Transition
from device_registry.schema import entities


async def facts(conn: AsyncConnection, row: EntityRow, now: datetime) -> Facts:
    return Facts(
        entity_id=row.id,
        role=row.role,
        state=row.state,
        kind=row.kind,
        has_active_certificate=await certificates.has_active(conn, row.id, now),
        gateway_id=row.gateway_id,
        consent=row.consent,
    )


async def apply(
    conn: AsyncConnection, entity_id: str, to_state: State, *, actor: str, reason: str, now: datetime
) -> Transition:
    """Move ``entity_id`` to ``to_state`` or raise :class:`IllegalTransition`; audited as ``lifecycle.transition``."""
    row = await entity(conn, entity_id, lock=True)
    check_transition(await facts(conn, row, now), to_state)
    return await _enter(conn, row, to_state, actor=actor, reason=reason, now=now)


async def _enter(
    conn: AsyncConnection, row: EntityRow, to_state: State, *, actor: str, reason: str, now: datetime
) -> Transition:
    await conn.execute(
        entities.update()
        .where(entities.c.id == row.id, entities.c.state == row.state.value)
        .values(state=to_state.value, state_changed_at=now)
    )
    revoked: list[str] = []
    for effect in EFFECTS[to_state]:
        if effect is Effect.REVOKE_CERTIFICATES:
            revoked += await certificates.revoke_all(conn, row.id, reason=f"{to_state}: {reason}", now=now)
    await audit.append(
        conn,
        at=now,
        actor=actor,
        action="lifecycle.transition",
        entity_id=row.id,
        reason=reason,
        detail={
            "role": row.role,
            "from": row.state.value,
            "to": to_state.value,
            "revoked_certificates": audit.json_list(revoked),
        },
    )
    return Transition(
        entity_id=row.id, role=row.role, from_state=row.state, to_state=to_state, revoked_serials=tuple(revoked)
    )


async def provision_if_registered(
    conn: AsyncConnection, entity_id: str, *, actor: str, reason: str, now: datetime
) -> Transition | None:
    """registered → provisioned if every precondition now holds (a certificate was recorded, a device was bound);
    None if the entity is past registered or not ready yet (a watch tag bound before its consent is recorded)."""
    row = await entity(conn, entity_id, lock=True)
    if row.state is not State.REGISTERED:
        return None
    try:
        check_transition(await facts(conn, row, now), State.PROVISIONED)
    except IllegalTransition:
        return None
    return await _enter(conn, row, State.PROVISIONED, actor=actor, reason=reason, now=now)


async def activate_if_provisioned(conn: AsyncConnection, row: EntityRow, *, reason: str, now: datetime) -> bool:
    """provisioned → active on the first authenticated message (actor ``system``); False if another did it first."""
    if row.state is not State.PROVISIONED:
        return False
    changed = await conn.execute(
        entities.update()
        .where(entities.c.id == row.id, entities.c.state == State.PROVISIONED.value)
        .values(state=State.ACTIVE.value, state_changed_at=now)
    )
    if changed.rowcount != 1:
        return False
    await audit.append(
        conn,
        at=now,
        actor=audit.SYSTEM,
        action="lifecycle.transition",
        entity_id=row.id,
        reason=reason,
        detail={"role": row.role, "from": State.PROVISIONED, "to": State.ACTIVE, "revoked_certificates": []},
    )
    return True
