"""The gate every uplink message passes: is this gateway allowed to talk, and is this sequence number new?

A gateway's messages are accepted while it is provisioned or active; the first one makes a provisioned gateway
active (audited, actor ``system``). Anything else is refused and counted on the gateway. Every sequence number is
claimed in ``received_messages`` with ``INSERT ... ON CONFLICT DO NOTHING RETURNING seq``: the unique key decides,
so two agents handling a redelivered message concurrently still store it once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import ReturningInsert

from device_registry.inventory import EntityRow, entity
from device_registry.lifecycle import ACCEPTS_TRAFFIC
from device_registry.schema import entities, received_messages
from device_registry.transitions import activate_if_provisioned


@dataclass(frozen=True, slots=True)
class Admission:
    """The gateway as it is after the gate, and whether this message activated it."""

    gateway: EntityRow
    accepted: bool
    activated: bool


async def admit(conn: AsyncConnection, gateway_id: str, *, now: datetime, refused_readings: int = 0) -> Admission:
    """Let ``gateway_id``'s message in, or refuse it (counting ``refused_readings`` on the gateway)."""
    gateway = await entity(conn, gateway_id, role="gateway")
    return await admit_row(conn, gateway, now=now, refused_readings=refused_readings)


async def admit_row(
    conn: AsyncConnection, gateway: EntityRow, *, now: datetime, refused_readings: int = 0
) -> Admission:
    """:func:`admit` for a gateway row the caller has already read."""
    if gateway.state not in ACCEPTS_TRAFFIC:
        if refused_readings:
            await count_refused(conn, gateway.id, refused_readings)
        return Admission(gateway, accepted=False, activated=False)
    activated = await activate_if_provisioned(
        conn, gateway, reason="first authenticated message from the gateway", now=now
    )
    return Admission(gateway, accepted=True, activated=activated)


async def count_refused(conn: AsyncConnection, entity_id: str, readings: int) -> None:
    await conn.execute(
        entities.update()
        .where(entities.c.id == entity_id)
        .values(refused_readings=entities.c.refused_readings + readings)
    )


@functools.cache
def _claim_statement(dialect: str) -> ReturningInsert[int]:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(received_messages)
        .on_conflict_do_nothing(index_elements=[received_messages.c.gateway_id, received_messages.c.seq])
        .returning(received_messages.c.seq)
    )


async def claim(conn: AsyncConnection, gateway: EntityRow, seqs: Sequence[tuple[int, float]], channel: str) -> set[int]:
    """Record the ``(seq, received_at)`` pairs; returns the seqs that were new (each distinct in ``seqs``).

    Sequence numbers at or below the gateway's ``seq_floor`` were pruned with expired history and count as seen.
    One ``executemany`` with ``RETURNING``, which SQLAlchemy sends as multi-row inserts on both databases.
    """
    first: dict[int, float] = {}
    for seq, received_at in seqs:
        first.setdefault(seq, received_at)
    rows = [
        {"gateway_id": gateway.id, "seq": seq, "channel": channel, "received_at": received_at}
        for seq, received_at in first.items()
        if seq > gateway.seq_floor
    ]
    if not rows:
        return set()
    return {int(seq) for seq in (await conn.scalars(_claim_statement(conn.dialect.name), rows)).all()}


@functools.cache
def _claim_many_statement(dialect: str) -> ReturningInsert[Any]:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(received_messages)
        .on_conflict_do_nothing(index_elements=[received_messages.c.gateway_id, received_messages.c.seq])
        .returning(received_messages.c.gateway_id, received_messages.c.seq)
    )


async def claim_many(
    conn: AsyncConnection, claims: Sequence[tuple[EntityRow, int, float]], channel: str
) -> set[tuple[str, int]]:
    """:func:`claim` for the ``(gateway, seq, received_at)`` of several gateways in one statement; returns the new
    ``(gateway id, seq)`` pairs. Rows are sent in (gateway, seq) order so concurrent agents lock in one order."""
    first: dict[tuple[str, int], float] = {}
    for gateway, seq, received_at in claims:
        if seq > gateway.seq_floor:
            first.setdefault((gateway.id, seq), received_at)
    rows = [
        {"gateway_id": gateway_id, "seq": seq, "channel": channel, "received_at": received_at}
        for (gateway_id, seq), received_at in sorted(first.items())
    ]
    if not rows:
        return set()
    returned = await conn.execute(_claim_many_statement(conn.dialect.name), rows)
    return {(str(row.gateway_id), int(row.seq)) for row in returned.all()}


async def claim_one(conn: AsyncConnection, gateway: EntityRow, seq: int, received_at: float, channel: str) -> bool:
    """Record one sequence number; True if it was new."""
    return seq in await claim(conn, gateway, [(seq, received_at)], channel)
