"""The pusher's durable source on the registry: stored readings messages become City OS entity updates.

The registry queues every stored readings message in ``northbound_outbox`` in its ingest transaction
(``Registry(northbound=True)``), so the City OS feed can miss nothing that was stored. This source turns those rows
into the entity updates the pusher sends (:class:`~cloud_agent.northbound.queue.NorthboundSource`):

1. a :class:`~cloud_agent.northbound.outbox_mapper.RowMapper` takes pending rows in order, reads their readings back
   and maps them to serialized entity documents, every sample of a message (in a worker process by default,
   :mod:`~cloud_agent.northbound.worker_mapper`, or in the agent's loop); while the pusher sends what is staged, the
   next rows are being mapped;
2. it stages the updates in a :class:`~cloud_agent.northbound.queue.MemoryQueue`, which keeps the order per entity;
3. a row is deleted from the outbox when all its updates were accepted, or marked dead with the reasons when some
   were refused for good. A message that maps to nothing is settled at once.

Watch-tag sightings never leave raw (see :mod:`~cloud_agent.northbound.outbox_mapper`). The crowd counts per zone
and hour (and what a tag's consent allows it to share, under a pseudonym) are recounted from the stored readings by
:class:`~cloud_agent.northbound.crowd_counts.StoredCrowdCounts` every ``crowd_flush_s`` and staged as entities of
their own, with no outbox row behind them; a restart recounts them the same way.

The staging is in memory: after a restart the rows still in the outbox are taken again and re-sent (upserts are
idempotent), so delivery is at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from cloud_agent.northbound.crowd_counts import StoredCrowdCounts
from cloud_agent.northbound.entities import Entity
from cloud_agent.northbound.outbox_mapper import MappedRow, RowMapper
from cloud_agent.northbound.queue import MemoryQueue, QueuedUpdate, QueueStats
from device_registry import Registry
from kakehashi.log import get_logger

log = get_logger(__name__)

Serializer = Callable[[Entity], dict[str, Any]]


class RegistryNorthboundSource:
    """A :class:`~cloud_agent.northbound.queue.NorthboundSource` over the registry's northbound outbox."""

    def __init__(
        self,
        registry: Registry,
        mapper: RowMapper,
        serialize: Serializer,
        *,
        crowd: StoredCrowdCounts | None = None,
        crowd_flush_s: float = 60.0,
        rows_per_load: int = 64,
        staged_updates: int = 10000,
        settle_s: float = 0.2,
    ) -> None:
        self._registry = registry
        self._mapper = mapper
        self._crowd = crowd
        self._crowd_flush_s = crowd_flush_s
        self._crowd_flushed = time.monotonic()
        self._serialize = serialize
        self._rows_per_load = rows_per_load
        self._staged_updates = staged_updates
        self._mapping: asyncio.Task[list[MappedRow]] | None = None
        """The rows being mapped now (one request at a time, after ``_taken_through``)."""
        self._staging = MemoryQueue()
        self._row_of: dict[int, int] = {}  # update id -> outbox row id
        self._open: dict[int, int] = {}  # outbox row id -> updates not yet settled
        self._dead: dict[int, list[str]] = {}  # outbox row id -> reasons of its dead-lettered updates
        self._taken_through = 0
        self._settle_s = settle_s
        self._done: list[int] = []
        """Outbox rows whose updates were all accepted, not yet deleted (see :meth:`_forget_done`)."""
        self._done_since = 0.0
        self.refused_readings = 0

    # -- loading rows into the staging ----------------------------------------------------------------------

    def _start_mapping(self) -> None:
        if self._mapping is None and self._staging.pending < self._staged_updates:
            self._mapping = asyncio.create_task(
                self._mapper.map_after(self._taken_through, self._rows_per_load), name="northbound-mapping"
            )

    async def _take_mapping(self) -> int:
        """Stage the rows being mapped (waiting for them); returns how many there were. A failed mapping raises
        (the pusher backs off) and the same rows are asked for again at the next fetch."""
        task, self._mapping = self._mapping, None
        if task is None:
            return 0
        rows = await task
        empty: list[int] = []
        for row in rows:
            self._taken_through = row.row_id
            self.refused_readings += row.refused
            if not row.documents:
                empty.append(row.row_id)
                continue
            ids = self._staging.put(row.documents)
            for update_id in ids:
                self._row_of[update_id] = row.row_id
            self._open[row.row_id] = len(ids)
        self._settled(empty)
        return len(rows)

    async def _settle(self, ids: Sequence[int], dead_reason: str | None = None) -> None:
        done: list[int] = []
        dead: list[tuple[int, str]] = []
        for update_id in ids:
            row = self._row_of.pop(update_id, None)
            if row is None:  # a crowd count, derived from stored sightings: nothing to settle in the outbox
                continue
            if dead_reason is not None:
                self._dead.setdefault(row, []).append(dead_reason)
            self._open[row] -= 1
            if self._open[row] == 0:
                del self._open[row]
                reasons = self._dead.pop(row, None)
                if reasons:
                    dead.append((row, "; ".join(sorted(set(reasons)))[:1024]))
                else:
                    done.append(row)
        self._settled(done)
        for row, reason in dead:
            await self._registry.northbound_dead([row], reason=reason)

    def _settled(self, rows: list[int]) -> None:
        if rows:
            if not self._done:
                self._done_since = time.monotonic()
            self._done.extend(rows)

    async def _forget_done(self, *, now: bool = False) -> None:
        """Delete the delivered messages' rows in one statement, at most every ``settle_s`` (or at once with ``now``);
        on failure they stay listed and are tried again at the next call."""
        if not self._done:
            return
        if not now and len(self._done) < 1000 and time.monotonic() - self._done_since < self._settle_s:
            return
        rows, self._done = self._done, []
        try:
            await self._registry.northbound_delivered(rows)
        except BaseException:
            self._done[:0] = rows
            raise

    # -- NorthboundSource -----------------------------------------------------------------------------------

    async def _flush_crowd(self) -> None:
        if self._crowd is None or time.monotonic() - self._crowd_flushed < self._crowd_flush_s:
            return
        self._crowd_flushed = time.monotonic()
        try:
            entities = await self._crowd.due(time.time())
        except Exception as exc:  # the registry is unavailable: recounted at the next flush, nothing is lost
            log.error("northbound_crowd_counts_failed", error=repr(exc))
            return
        if entities:
            self._staging.put([self._serialize(entity) for entity in entities])  # derived: no outbox row behind

    async def fetch(self, limit: int, per_entity: int = 1) -> list[QueuedUpdate]:
        await self._forget_done()
        await self._flush_crowd()
        if self._mapping is not None and self._mapping.done():
            await self._take_mapping()
        self._start_mapping()
        fetched = await self._staging.fetch(limit, per_entity)
        if not fetched and self._mapping is not None and await self._take_mapping():
            self._start_mapping()
            fetched = await self._staging.fetch(limit, per_entity)
        return fetched

    async def delivered(self, ids: Sequence[int]) -> None:
        await self._staging.delivered(ids)
        await self._settle(ids)

    async def retry_later(self, ids: Sequence[int], not_before: float, reason: str) -> None:
        await self._staging.retry_later(ids, not_before, reason)

    async def dead_letter(self, ids: Sequence[int], reason: str) -> None:
        await self._staging.dead_letter(ids, reason)
        self._staging.dead.clear()  # the registry keeps the dead letters (per message, with the reasons)
        log.warning("northbound_dead_letter", updates=len(ids), reason=reason[:200])
        await self._settle(ids, dead_reason=reason)

    async def flush(self) -> None:
        await self._forget_done(now=True)

    async def close(self) -> None:
        """Stop mapping (what was being mapped is asked for again after a restart) and stop the mapper."""
        task, self._mapping = self._mapping, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._mapper.close()

    async def stats(self) -> QueueStats:
        await self._forget_done(now=True)
        depth = await self._registry.northbound_depth()
        return QueueStats(depth.pending, depth.oldest_queued_at, depth.dead)
