"""The append-only audit log: who did what to which entity, when and why, with a JSON detail.

There is deliberately no update or delete here; the database refuses both (migration 2). Entries never carry a
watch tag's sightings: an audit entry cannot be deleted, so it must not hold data that retention has to delete.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry.errors import InvalidInput
from device_registry.models import AuditEntry
from device_registry.schema import audit_log
from kakehashi.wire import JSONObject, JSONValue

SYSTEM: Final = "system"
"""The actor of what the registry does by itself (activation on the first message, retention)."""
MAX_ACTOR: Final = 128
MAX_REASON: Final = 1024


def json_list(items: Iterable[str | int]) -> list[JSONValue]:
    """``items`` as a JSON array for an audit detail."""
    result: list[JSONValue] = []
    result.extend(items)
    return result


def check_actor(actor: str) -> str:
    """Return ``actor`` if it names someone (1-128 characters), else raise :class:`InvalidInput`."""
    if not isinstance(actor, str) or not actor.strip() or len(actor) > MAX_ACTOR:
        raise InvalidInput(f"actor {actor!r} must name who acts in 1-{MAX_ACTOR} characters (a user, service or id)")
    return actor


def check_reason(reason: str) -> str:
    """Return ``reason`` if it says why (1-1024 characters), else raise :class:`InvalidInput`."""
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise InvalidInput(f"reason must say why in 1-{MAX_REASON} characters, got {reason!r}")
    return reason


def entry(
    *, at: datetime, actor: str, action: str, entity_id: str | None, reason: str, detail: JSONObject | None = None
) -> dict[str, object]:
    """An audit row for :func:`append_many`."""
    return {
        "at": at,
        "actor": check_actor(actor),
        "action": action,
        "entity_id": entity_id,
        "reason": check_reason(reason),
        "detail": detail or {},
    }


async def append_many(conn: AsyncConnection, rows: Sequence[dict[str, object]]) -> None:
    """Append audit rows (made by :func:`entry`) in the caller's transaction."""
    if rows:
        await conn.execute(audit_log.insert(), list(rows))


async def append(
    conn: AsyncConnection,
    *,
    at: datetime,
    actor: str,
    action: str,
    entity_id: str | None,
    reason: str,
    detail: JSONObject | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction and return it."""
    row = entry(at=at, actor=actor, action=action, entity_id=entity_id, reason=reason, detail=detail)
    new_id = (await conn.execute(audit_log.insert().values(row).returning(audit_log.c.id))).scalar_one()
    return AuditEntry(
        id=int(new_id), at=at, actor=actor, action=action, entity_id=entity_id, reason=reason, detail=detail or {}
    )


async def query(
    conn: AsyncConnection,
    *,
    entity_id: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    after_id: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Entries matching every given filter, oldest first; page with ``after_id`` (the last id you saw)."""
    if not 1 <= limit <= 10_000:
        raise InvalidInput(f"limit must be 1 to 10000, not {limit}")
    stmt = sa.select(audit_log).order_by(audit_log.c.id).limit(limit)
    if entity_id is not None:
        stmt = stmt.where(audit_log.c.entity_id == entity_id)
    if actor is not None:
        stmt = stmt.where(audit_log.c.actor == actor)
    if action is not None:
        stmt = stmt.where(audit_log.c.action == action)
    if since is not None:
        stmt = stmt.where(audit_log.c.at >= since)
    if after_id is not None:
        stmt = stmt.where(audit_log.c.id > after_id)
    rows = (await conn.execute(stmt)).all()
    return [
        AuditEntry(
            id=int(row.id),
            at=row.at,
            actor=row.actor,
            action=row.action,
            entity_id=row.entity_id,
            reason=row.reason,
            detail=dict(row.detail),
        )
        for row in rows
    ]
