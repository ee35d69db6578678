"""The registry's northbound outbox (mixed into :class:`~device_registry.Registry`): what the City OS has yet to get.

With ``Registry(northbound=True)`` every readings message that stored readings gets a row in ``northbound_outbox`` in
its ingest transaction, so nothing stored can be missed by the City OS feed. The agent's pusher takes pending rows
in order (:meth:`northbound_pending`), reads their readings back (:meth:`northbound_readings`), and then deletes the
rows the City OS accepted (:meth:`northbound_delivered`), postpones those to try again (:meth:`northbound_retry`), or
dead-letters those it refused for good (:meth:`northbound_dead`, kept with the reason for people to look at).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from device_registry.database import reading, writing
from device_registry.models import NorthboundDepth, NorthboundItem, StoredReading
from device_registry.readings import stored_reading
from device_registry.schema import northbound_outbox, readings

PENDING = "pending"
DEAD = "dead"


class _Registry(Protocol):
    engine: AsyncEngine

    def _now(self) -> datetime: ...


class NorthboundMethods:
    """The northbound outbox: pending, readings back, delivered, retry, dead letter, depth."""

    async def northbound_pending(
        self: _Registry, *, limit: int = 500, now: float | None = None, after: int = 0
    ) -> list[NorthboundItem]:
        """Pending messages due now, oldest first; ``after`` skips the ids up to it (already taken)."""
        at = self._now().timestamp() if now is None else float(now)
        stmt = (
            sa.select(northbound_outbox)
            .where(
                northbound_outbox.c.state == PENDING,
                northbound_outbox.c.not_before <= at,
                northbound_outbox.c.id > after,
            )
            .order_by(northbound_outbox.c.id)
            .limit(max(1, min(limit, 10_000)))
        )
        async with reading(self.engine) as conn:
            return [
                NorthboundItem(int(r.id), r.gateway_id, int(r.seq), float(r.queued_at), int(r.attempts))
                for r in (await conn.execute(stmt)).all()
            ]

    async def northbound_readings(
        self: _Registry, items: Sequence[NorthboundItem]
    ) -> dict[tuple[str, int], list[StoredReading]]:
        """The stored readings of each item's message (an empty list if retention already removed them)."""
        found: dict[tuple[str, int], list[StoredReading]] = {(i.gateway_id, i.seq): [] for i in items}
        if not items:
            return found
        by_gateway: dict[str, list[int]] = {}
        for item in items:
            by_gateway.setdefault(item.gateway_id, []).append(item.seq)
        async with reading(self.engine) as conn:
            for gateway_id, seqs in by_gateway.items():
                stmt = (
                    sa.select(readings)
                    .where(readings.c.gateway_id == gateway_id, readings.c.seq.in_(seqs))
                    .order_by(readings.c.seq, readings.c.id)
                )
                for row in (await conn.execute(stmt)).all():
                    found[(gateway_id, int(row.seq))].append(stored_reading(row))
        return found

    async def northbound_delivered(self: _Registry, ids: Sequence[int]) -> None:
        """The City OS accepted these: forget them."""
        if ids:
            async with writing(self.engine) as conn:
                await conn.execute(northbound_outbox.delete().where(northbound_outbox.c.id.in_(list(ids))))

    async def northbound_retry(self: _Registry, ids: Sequence[int], *, not_before: float, reason: str) -> None:
        """Try these again not before ``not_before`` (epoch seconds); counts the attempt and keeps the reason."""
        if ids:
            async with writing(self.engine) as conn:
                await conn.execute(
                    northbound_outbox.update()
                    .where(northbound_outbox.c.id.in_(list(ids)), northbound_outbox.c.state == PENDING)
                    .values(
                        attempts=northbound_outbox.c.attempts + 1, not_before=float(not_before), reason=reason[:1024]
                    )
                )

    async def northbound_dead(self: _Registry, ids: Sequence[int], *, reason: str) -> None:
        """The City OS refused these for good: keep them, marked dead with the reason, out of the pending queue."""
        if ids:
            async with writing(self.engine) as conn:
                await conn.execute(
                    northbound_outbox.update()
                    .where(northbound_outbox.c.id.in_(list(ids)))
                    .values(state=DEAD, attempts=northbound_outbox.c.attempts + 1, reason=reason[:1024])
                )

    async def northbound_depth(self: _Registry) -> NorthboundDepth:
        async with reading(self.engine) as conn:
            by_state = sa.select(northbound_outbox.c.state, sa.func.count()).group_by(northbound_outbox.c.state)
            counts: dict[str, int] = {str(state): int(count) for state, count in (await conn.execute(by_state)).all()}
            oldest = await conn.scalar(
                sa.select(sa.func.min(northbound_outbox.c.queued_at)).where(northbound_outbox.c.state == PENDING)
            )
        return NorthboundDepth(
            pending=int(counts.get(PENDING, 0)),
            dead=int(counts.get(DEAD, 0)),
            oldest_queued_at=None if oldest is None else float(oldest),
        )
