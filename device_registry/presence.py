"""Gateway presence: online or offline, from status messages, the last will and a heartbeat time-out.

A gateway publishes a retained ``online`` status when it connects and again on every heartbeat, an ``offline`` one
when it shuts down, and the broker publishes its last will (``offline``, reason ``will``) when the connection drops.
The agent records each status with *its own* receive time: the will's payload is fixed when the gateway connects, so
the gateway's timestamps cannot order a will against later heartbeats. Any uplink message refreshes ``last_seen``;
only a status message brings an offline gateway back online (a late-delivered reading does not prove a connection).
A gateway still marked online whose ``last_seen`` is older than the time-out is marked offline
(``heartbeat_timeout``): a lost will, or a broker that crashed with the gateway connected, cannot leave it online.

Several agents may share the work: every write is a conditional upsert, so two agents marking the same gateway
offline, or recording statuses of one gateway, leave one consistent row.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Executable

from device_registry.models import Presence, PresenceChange
from device_registry.schema import presence
from kakehashi.wire import JSONObject

HEARTBEAT_TIMEOUT: Final = "heartbeat_timeout"


def _presence(row: Any) -> Presence:
    return Presence(
        gateway_id=row.gateway_id,
        online=bool(row.online),
        changed_at=float(row.changed_at),
        last_seen=float(row.last_seen),
        reason=row.reason,
        health=dict(row.health),
    )


async def get(conn: AsyncConnection, gateway_id: str, *, lock: bool = False) -> Presence | None:
    stmt = sa.select(presence).where(presence.c.gateway_id == gateway_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    return None if row is None else _presence(row)


async def of_gateways(conn: AsyncConnection, gateway_ids: list[str]) -> dict[str, Presence]:
    if not gateway_ids:
        return {}
    rows = await conn.execute(sa.select(presence).where(presence.c.gateway_id.in_(gateway_ids)))
    return {row.gateway_id: _presence(row) for row in rows}


async def record_status(
    conn: AsyncConnection, gateway_id: str, *, online: bool, reason: str, health: JSONObject | None, now: float
) -> PresenceChange:
    """Record one status message received at ``now`` (the caller has checked the gateway may talk)."""
    before = await get(conn, gateway_id, lock=True)
    doc: JSONObject = dict(health) if health is not None else ({} if before is None else dict(before.health))
    changed = before is None or before.online != online
    after = Presence(
        gateway_id=gateway_id,
        online=online,
        changed_at=now if changed else before.changed_at,  # type: ignore[union-attr]
        last_seen=now if before is None else max(before.last_seen, now),
        reason=reason,
        health=doc,
    )
    values = {
        "online": after.online,
        "changed_at": after.changed_at,
        "last_seen": after.last_seen,
        "reason": after.reason,
        "health": after.health,
    }
    if before is None:
        await conn.execute(presence.insert().values(gateway_id=gateway_id, **values))
    else:
        await conn.execute(presence.update().where(presence.c.gateway_id == gateway_id).values(**values))
    return PresenceChange(after, came_online=online and changed, went_offline=not online and changed)


@functools.cache
def _touch_statement(dialect: str) -> Executable:
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(presence)
    return insert.on_conflict_do_update(
        index_elements=[presence.c.gateway_id],
        set_={"last_seen": sa.func.max(presence.c.last_seen, insert.excluded.last_seen)}
        if dialect == "sqlite"
        else {"last_seen": sa.func.greatest(presence.c.last_seen, insert.excluded.last_seen)},
    )


async def touch(conn: AsyncConnection, seen: Mapping[str, float]) -> None:
    """Refresh ``last_seen`` of gateways that sent uplinks; a gateway never seen before starts offline."""
    if not seen:
        return
    rows = [
        {"gateway_id": gw, "online": False, "changed_at": at, "last_seen": at, "reason": "traffic", "health": {}}
        for gw, at in sorted(seen.items())
    ]
    await conn.execute(_touch_statement(conn.dialect.name), rows)


async def expire(conn: AsyncConnection, *, now: float, timeout_s: float) -> list[str]:
    """Mark offline every online gateway not heard from for ``timeout_s``; returns their ids."""
    stale = presence.c.online.is_(True) & (presence.c.last_seen < now - timeout_s)
    ids = sorted((await conn.scalars(sa.select(presence.c.gateway_id).where(stale))).all())
    if not ids:
        return []
    result = await conn.execute(
        presence.update()
        .where(presence.c.gateway_id.in_(ids), stale)
        .values(online=False, changed_at=now, reason=HEARTBEAT_TIMEOUT)
        .returning(presence.c.gateway_id)
    )
    return sorted(str(gateway_id) for gateway_id in result.scalars().all())
