"""Gap reports and completeness per gateway: every sequence number is received, reported lost, or missing.

Holes in the received sequence numbers come from one window-function query (``LAG`` over the primary key), so the
answer does not read every row into Python; reported gaps are then subtracted in Python (there are few of them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry import validation
from device_registry.database import insert_for
from device_registry.errors import InvalidInput
from device_registry.inventory import EntityRow
from device_registry.models import Completeness, GapRecord, SeqRange
from device_registry.schema import gap_reports, received_messages


def check_gap(gap: GapRecord) -> GapRecord:
    validation.sequence_number(gap.from_seq, "gap from_seq")
    validation.sequence_number(gap.to_seq, "gap to_seq")
    if gap.from_seq > gap.to_seq:
        raise InvalidInput(f"gap {gap.from_seq}..{gap.to_seq} is empty: from_seq must not exceed to_seq")
    if not isinstance(gap.count, int) or gap.count < 0:
        raise InvalidInput(f"gap count must be a non-negative number of readings, got {gap.count!r}")
    validation.code(gap.reason, "gap reason")
    return gap


async def record(conn: AsyncConnection, gateway_id: str, gaps: Sequence[GapRecord], now: datetime) -> int:
    """Store gap reports (a repeated report of the same range is ignored); returns how many were new."""
    if not gaps:
        return 0
    rows = {
        (gap.from_seq, gap.to_seq): {
            "gateway_id": gateway_id,
            "from_seq": gap.from_seq,
            "to_seq": gap.to_seq,
            "count": gap.count,
            "reason": gap.reason,
            "reported_at": now,
        }
        for gap in map(check_gap, gaps)
    }
    stmt = (
        insert_for(conn)(gap_reports)
        .values(list(rows.values()))
        .on_conflict_do_nothing(index_elements=[gap_reports.c.gateway_id, gap_reports.c.from_seq, gap_reports.c.to_seq])
        .returning(gap_reports.c.from_seq)
    )
    return len((await conn.scalars(stmt)).all())


def subtract(holes: Iterable[SeqRange], covered: Iterable[SeqRange]) -> list[SeqRange]:
    """The parts of ``holes`` (sorted, disjoint) that no range of ``covered`` includes."""
    merged: list[SeqRange] = []
    for part in sorted(covered, key=lambda r: r.first):
        if merged and part.first <= merged[-1].last + 1:
            merged[-1] = SeqRange(merged[-1].first, max(merged[-1].last, part.last))
        else:
            merged.append(part)
    result: list[SeqRange] = []
    for hole in holes:
        start = hole.first
        for cover in merged:
            if cover.last < start or cover.first > hole.last:
                continue
            if cover.first > start:
                result.append(SeqRange(start, cover.first - 1))
            start = max(start, cover.last + 1)
            if start > hole.last:
                break
        if start <= hole.last:
            result.append(SeqRange(start, hole.last))
    return result


async def completeness(conn: AsyncConnection, gateway: EntityRow) -> Completeness:
    floor = gateway.seq_floor
    mine = received_messages.c.gateway_id == gateway.id
    above_floor = received_messages.c.seq > floor
    highest, count = (
        await conn.execute(sa.select(sa.func.max(received_messages.c.seq), sa.func.count()).where(mine, above_floor))
    ).one()
    seq = received_messages.c.seq
    previous = sa.func.coalesce(sa.func.lag(seq).over(order_by=seq), sa.literal(floor, sa.BigInteger))
    ordered = sa.select(seq.label("seq"), previous.label("previous")).where(mine, above_floor).subquery()
    holes_stmt = (
        sa.select(ordered.c.previous + 1, ordered.c.seq - 1)
        .where(ordered.c.seq - ordered.c.previous > 1)
        .order_by(ordered.c.seq)
    )
    holes = [SeqRange(int(first), int(last)) for first, last in (await conn.execute(holes_stmt)).all()]
    gaps_stmt = sa.select(gap_reports).where(gap_reports.c.gateway_id == gateway.id).order_by(gap_reports.c.from_seq)
    gaps = tuple(
        GapRecord(int(row.from_seq), int(row.to_seq), int(row._mapping["count"]), row.reason)
        for row in (await conn.execute(gaps_stmt)).all()
    )
    return Completeness(
        gateway_id=gateway.id,
        floor=floor,
        highest_seq=int(highest) if highest is not None else floor,
        received=int(count),
        reported_gaps=gaps,
        missing=tuple(subtract(holes, (SeqRange(g.from_seq, g.to_seq) for g in gaps))),
    )
