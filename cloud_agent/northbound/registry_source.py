"""The pusher's durable source on the registry: stored readings messages become City OS entity updates.

The registry queues every stored readings message in ``northbound_outbox`` in its ingest transaction
(``Registry(northbound=True)``), so the City OS feed can miss nothing that was stored. This source turns those rows
into the entity updates the pusher sends (:class:`~cloud_agent.northbound.queue.NorthboundSource`):

1. it takes pending rows in order and reads their readings back;
2. it groups each message's readings by device and observed time and maps each group with
   :func:`~cloud_agent.northbound.mapping.entities_for` (so every sample reaches the City OS, not only the newest
   of a message), serialised for the configured broker (NGSI-LD or NGSI v2);
3. it stages the updates in a :class:`~cloud_agent.northbound.queue.MemoryQueue`, which keeps the order per entity;
4. a row is deleted from the outbox when all its updates were accepted, or marked dead with the reasons when some
   were refused for good. A message that maps to nothing is settled at once.

Watch-tag sightings never leave raw: a tag's readings map to nothing here except an SOS, which leaves as an
``Alert`` without anything of the tag (:func:`~cloud_agent.northbound.alerts.tag_alerts`). The crowd counts per zone
and hour (and what a tag's consent allows it to share, under a pseudonym) are recounted from the stored readings by
:class:`~cloud_agent.northbound.crowd_counts.StoredCrowdCounts` every ``crowd_flush_s`` and staged as entities of
their own, with no outbox row behind them; a restart recounts them the same way.

The staging is in memory: after a restart the rows still in the outbox are taken again and re-sent (upserts are
idempotent), so delivery is at least once. Devices, gateways and twins are cached for ``cache_s`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from cloud_agent.northbound.alerts import tag_alerts
from cloud_agent.northbound.crowd_counts import StoredCrowdCounts
from cloud_agent.northbound.entities import Entity
from cloud_agent.northbound.mapping import entities_for
from cloud_agent.northbound.queue import MemoryQueue, QueuedUpdate, QueueStats
from device_registry import WATCH_TAG, Device, Gateway, NotFound, Registry, StoredReading
from kakehashi.log import get_logger
from kakehashi.wire import JSONObject

log = get_logger(__name__)

Serializer = Callable[[Entity], dict[str, Any]]


class RegistryNorthboundSource:
    """A :class:`~cloud_agent.northbound.queue.NorthboundSource` over the registry's northbound outbox."""

    def __init__(
        self,
        registry: Registry,
        serialize: Serializer,
        *,
        crowd: StoredCrowdCounts | None = None,
        crowd_flush_s: float = 60.0,
        rows_per_load: int = 32,
        staged_updates: int = 5000,
        cache_s: float = 30.0,
        settle_s: float = 0.2,
    ) -> None:
        self._registry = registry
        self._crowd = crowd
        self._crowd_flush_s = crowd_flush_s
        self._crowd_flushed = time.monotonic()
        self._serialize = serialize
        self._rows_per_load = rows_per_load
        self._staged_updates = staged_updates
        self._cache_s = cache_s
        self._staging = MemoryQueue()
        self._row_of: dict[int, int] = {}  # update id -> outbox row id
        self._open: dict[int, int] = {}  # outbox row id -> updates not yet settled
        self._dead: dict[int, list[str]] = {}  # outbox row id -> reasons of its dead-lettered updates
        self._taken_through = 0
        self._settle_s = settle_s
        self._done: list[int] = []
        """Outbox rows whose updates were all accepted, not yet deleted (see :meth:`_forget_done`)."""
        self._done_since = 0.0
        self._entities: dict[str, tuple[float, Device | Gateway | None]] = {}
        self._settings: dict[str, tuple[float, JSONObject]] = {}
        self.refused_readings = 0

    # -- what the mapping needs, cached ----------------------------------------------------------------------

    async def _entity(self, entity_id: str) -> Device | Gateway | None:
        cached = self._entities.get(entity_id)
        if cached is not None and time.monotonic() - cached[0] < self._cache_s:
            return cached[1]
        found: Device | Gateway | None
        try:
            found = await self._registry.get_device(entity_id)
        except NotFound:
            try:
                found = await self._registry.get_gateway(entity_id)
            except NotFound:
                found = None
        self._entities[entity_id] = (time.monotonic(), found)
        return found

    async def _twin_settings(self, entity_id: str) -> JSONObject:
        cached = self._settings.get(entity_id)
        if cached is not None and time.monotonic() - cached[0] < self._cache_s:
            return cached[1]
        try:
            twin = await self._registry.get_twin(entity_id)
            settings: JSONObject = {**twin.desired, **twin.reported}
        except NotFound:
            settings = {}
        self._settings[entity_id] = (time.monotonic(), settings)
        return settings

    async def _documents(self, readings: Sequence[StoredReading]) -> list[dict[str, Any]]:
        groups: dict[tuple[str, float], list[StoredReading]] = {}
        for reading in readings:
            groups.setdefault((reading.device_id, reading.observed_at), []).append(reading)
        documents: list[dict[str, Any]] = []
        for (device_id, _observed), group in sorted(groups.items(), key=lambda item: item[0][1]):
            device = await self._entity(device_id)
            if device is None:
                self.refused_readings += len(group)
                continue
            gateway = await self._entity(group[0].gateway_id)
            if isinstance(device, Device) and device.kind == WATCH_TAG:  # counted from the store; an SOS leaves
                seen_by = gateway if isinstance(gateway, Gateway) else None
                documents.extend(self._serialize(alert) for alert in tag_alerts(device, group, seen_by))
                continue
            settings = await self._twin_settings(device_id)
            for entity in entities_for(
                device, group, gateway=gateway if isinstance(gateway, Gateway) else None, settings=settings
            ):
                documents.append(self._serialize(entity))
        return documents

    # -- loading rows into the staging ----------------------------------------------------------------------

    async def _load(self) -> None:
        rows = await self._registry.northbound_pending(limit=self._rows_per_load, after=self._taken_through)
        if not rows:
            return
        readings = await self._registry.northbound_readings(rows)
        empty: list[int] = []
        for row in rows:
            self._taken_through = row.id
            documents = await self._documents(readings[(row.gateway_id, row.seq)])
            await asyncio.sleep(0)  # mapping is CPU work: let the answers of requests in flight be handled meanwhile
            if not documents:
                empty.append(row.id)
                continue
            ids = self._staging.put(documents)
            for update_id in ids:
                self._row_of[update_id] = row.id
            self._open[row.id] = len(ids)
        await self._registry.northbound_delivered(empty)

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
        if done:
            if not self._done:
                self._done_since = time.monotonic()
            self._done.extend(done)
        for row, reason in dead:
            await self._registry.northbound_dead([row], reason=reason)

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
        if self._staging.pending < max(limit, self._staged_updates):
            await self._load()
        return await self._staging.fetch(limit, per_entity)

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

    async def stats(self) -> QueueStats:
        await self._forget_done(now=True)
        depth = await self._registry.northbound_depth()
        return QueueStats(depth.pending, depth.oldest_queued_at, depth.dead)
