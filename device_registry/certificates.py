"""Certificates issued to gateways and devices: record, revoke, list. The CA itself is ``cloud_agent.pki``.

The registry keeps what lifecycle rules need: serial (lowercase hex), not-after and status. Expiry is not a status:
a certificate is *active* when it is unrevoked and ``now < not_after``.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry.errors import AlreadyExists, NotFound
from device_registry.models import Certificate
from device_registry.schema import certificates


def _from_row(row: Row[tuple[object, ...]]) -> Certificate:
    return Certificate(
        serial=row.serial,
        entity_id=row.entity_id,
        not_after=row.not_after,
        status=row.status,
        issued_at=row.issued_at,
        revoked_at=row.revoked_at,
        revocation_reason=row.revocation_reason,
    )


async def record(
    conn: AsyncConnection, *, entity_id: str, serial: str, not_after: datetime, now: datetime
) -> Certificate:
    holder = await conn.scalar(sa.select(certificates.c.entity_id).where(certificates.c.serial == serial))
    if holder is not None:
        raise AlreadyExists(f"certificate serial {serial} is already recorded (issued to {holder})")
    values = {"serial": serial, "entity_id": entity_id, "not_after": not_after, "status": "active", "issued_at": now}
    await conn.execute(certificates.insert().values(values))
    return Certificate(
        serial=serial,
        entity_id=entity_id,
        not_after=not_after,
        status="active",
        issued_at=now,
        revoked_at=None,
        revocation_reason=None,
    )


async def get(conn: AsyncConnection, serial: str, *, lock: bool = False) -> Certificate:
    stmt = sa.select(certificates).where(certificates.c.serial == serial)
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"no certificate with serial {serial} is recorded")
    return _from_row(row)


async def of_entity(conn: AsyncConnection, entity_id: str) -> list[Certificate]:
    stmt = sa.select(certificates).where(certificates.c.entity_id == entity_id).order_by(certificates.c.issued_at)
    return [_from_row(row) for row in (await conn.execute(stmt)).all()]


async def has_active(conn: AsyncConnection, entity_id: str, now: datetime) -> bool:
    stmt = sa.select(certificates.c.serial).where(
        certificates.c.entity_id == entity_id, certificates.c.status == "active", certificates.c.not_after > now
    )
    return (await conn.scalar(stmt.limit(1))) is not None


async def revoke(conn: AsyncConnection, serials: list[str], *, reason: str, now: datetime) -> list[str]:
    """Revoke the still-active ones of ``serials``; returns those it revoked, sorted."""
    if not serials:
        return []
    stmt = (
        certificates.update()
        .where(certificates.c.serial.in_(serials), certificates.c.status == "active")
        .values(status="revoked", revoked_at=now, revocation_reason=reason)
        .returning(certificates.c.serial)
    )
    return sorted((await conn.scalars(stmt)).all())


async def revoke_all(conn: AsyncConnection, entity_id: str, *, reason: str, now: datetime) -> list[str]:
    """Revoke every active certificate of ``entity_id`` (expired ones too: revocation is forever)."""
    stmt = (
        certificates.update()
        .where(certificates.c.entity_id == entity_id, certificates.c.status == "active")
        .values(status="revoked", revoked_at=now, revocation_reason=reason)
        .returning(certificates.c.serial)
    )
    return sorted((await conn.scalars(stmt)).all())
