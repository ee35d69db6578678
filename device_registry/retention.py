"""Retention: delete history and latest values older than each device's retention period.

A device's own ``retention_s`` wins (every watch tag has one); everything else (other devices, gateways reporting
about themselves) keeps the registry default. Age is counted from the agent's receive time, which unlike a
device's clock can be trusted. Decommissioned devices are treated like the others: their history stays until it
expires. Message bookkeeping (dedupe and completeness) older than the default retention is pruned too; the gateway's
``seq_floor`` then remembers the highest pruned sequence number, so a very late replay still counts as a duplicate.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry.models import PurgeResult
from device_registry.schema import devices, entities, gap_reports, latest, readings, received_messages


async def _delete(conn: AsyncConnection, table: sa.Table, cutoff: float, devices_filter: sa.ColumnElement[bool]) -> int:
    result = await conn.execute(table.delete().where(table.c.received_at < cutoff, devices_filter))
    return int(result.rowcount)


async def _prune_messages(conn: AsyncConnection, cutoff: float) -> int:
    tops = (
        await conn.execute(
            sa.select(received_messages.c.gateway_id, sa.func.max(received_messages.c.seq))
            .where(received_messages.c.received_at < cutoff)
            .group_by(received_messages.c.gateway_id)
        )
    ).all()
    pruned = 0
    for gateway_id, top in tops:
        floor = await conn.scalar(sa.select(entities.c.seq_floor).where(entities.c.id == gateway_id))
        new_floor = max(int(top), int(floor or 0))
        await conn.execute(entities.update().where(entities.c.id == gateway_id).values(seq_floor=new_floor))
        result = await conn.execute(
            received_messages.delete().where(
                received_messages.c.gateway_id == gateway_id, received_messages.c.seq <= new_floor
            )
        )
        pruned += int(result.rowcount)
        await conn.execute(
            gap_reports.delete().where(gap_reports.c.gateway_id == gateway_id, gap_reports.c.to_seq <= new_floor)
        )
    return pruned


async def purge(conn: AsyncConnection, *, now: float, default_retention_s: int) -> PurgeResult:
    """Delete what has outlived its retention at ``now`` (epoch seconds)."""
    own = (
        await conn.scalars(sa.select(devices.c.retention_s).where(devices.c.retention_s.is_not(None)).distinct())
    ).all()
    deleted_readings = deleted_latest = 0
    for seconds in sorted(int(s) for s in own):
        with_this = readings.c.device_id.in_(sa.select(devices.c.id).where(devices.c.retention_s == seconds))
        deleted_readings += await _delete(conn, readings, now - seconds, with_this)
        latest_with_this = latest.c.device_id.in_(sa.select(devices.c.id).where(devices.c.retention_s == seconds))
        deleted_latest += await _delete(conn, latest, now - seconds, latest_with_this)
    has_own = sa.select(devices.c.id).where(devices.c.retention_s.is_not(None))
    default_cutoff = now - default_retention_s
    deleted_readings += await _delete(conn, readings, default_cutoff, readings.c.device_id.not_in(has_own))
    deleted_latest += await _delete(conn, latest, default_cutoff, latest.c.device_id.not_in(has_own))
    messages = await _prune_messages(conn, default_cutoff)
    return PurgeResult(readings=deleted_readings, latest=deleted_latest, messages=messages)
