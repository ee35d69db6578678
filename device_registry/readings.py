"""Reading back stored readings: the latest value of each quantity, and history in observed-time order."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry.errors import InvalidInput
from device_registry.models import StoredReading
from device_registry.schema import latest, readings
from kakehashi import wire

MAX_HISTORY = 100_000


def _value(row: sa.Row[Any]) -> float | str | bool | bytes:
    if row.num is not None:
        return float(row.num)
    if row.text is not None:
        return str(row.text)
    if row.flag is not None:
        return bool(row.flag)
    return bytes(row.data)


def stored_reading(row: sa.Row[Any]) -> StoredReading:
    return StoredReading(
        device_id=row.device_id,
        quantity=row.quantity,
        value=_value(row),
        unit=row.unit,
        observed_at=float(row.observed_at),
        received_at=float(row.received_at),
        clock=wire.ClockQuality(row.clock),
        gateway_id=row.gateway_id,
        seq=int(row.seq),
    )


async def latest_of(conn: AsyncConnection, device_id: str) -> list[StoredReading]:
    stmt = sa.select(latest).where(latest.c.device_id == device_id).order_by(latest.c.quantity)
    return [stored_reading(row) for row in (await conn.execute(stmt)).all()]


async def history(
    conn: AsyncConnection,
    device_id: str,
    *,
    quantity: str | None,
    since: float | None,
    until: float | None,
    limit: int,
) -> list[StoredReading]:
    """Readings of ``device_id`` with ``since <= observed_at < until``, oldest first, at most ``limit``."""
    if not 1 <= limit <= MAX_HISTORY:
        raise InvalidInput(f"limit must be 1 to {MAX_HISTORY}, not {limit}")
    stmt = sa.select(readings).where(readings.c.device_id == device_id)
    if quantity is not None:
        stmt = stmt.where(readings.c.quantity == quantity)
    if since is not None:
        stmt = stmt.where(readings.c.observed_at >= since)
    if until is not None:
        stmt = stmt.where(readings.c.observed_at < until)
    stmt = stmt.order_by(readings.c.observed_at, readings.c.id).limit(limit)
    return [stored_reading(row) for row in (await conn.execute(stmt)).all()]
