"""The northbound queue's interface (what the pusher needs from wherever updates wait) and an in-memory queue.

An update is one serialized entity document (NGSI-LD normalized with ``@context``, or NGSI v2 normalized), as
:mod:`cloud_agent.northbound.entities` makes it: a dictionary, or already JSON (:class:`SerializedEntity`, what the
mapping worker hands over: the agent then never rebuilds the dictionaries it only passes on). The queue is the
durable part: the registry fills it in the same transaction as the readings, the pusher drains it. Any storage can
be a source if it keeps this contract:

``fetch(limit, per_entity=1)``
    Up to ``limit`` updates, oldest first (by ``id``), taking for each entity up to ``per_entity`` of its **oldest
    unsettled updates**, and only if none of that entity's updates is handed out and its ``not_before`` has passed
    (wall clock). What it returns is *handed out* until settled by one of the three calls below; after a restart
    nothing is handed out any more and everything unsettled can be fetched again (delivery is at least once). This
    is what keeps the order per entity: a later update of an entity waits while an earlier one is in flight or
    waiting for a retry, and the updates of one entity in a batch are in their order (NGSI-LD batch upsert and
    Orion's ``/v2/op/update`` apply a batch's entities in array order; see ``docs/northbound-transport.md``).
``delivered(ids)``
    The broker accepted them: remove them (or mark them done).
``retry_later(ids, not_before, reason)``
    Not accepted this time: count an attempt, remember ``reason`` as the last error, hand them out again no earlier
    than ``not_before`` (Unix seconds).
``dead_letter(ids, reason)``
    Never deliverable: move them out of the queue with ``reason`` kept for an operator; the entity's next update
    becomes its head.
``stats()``
    How many updates wait (handed out or not), the ``first_queued_at`` of the oldest one, and how many are
    dead-lettered; for the metrics.
``flush()``
    Write down now whatever settling the source batches (the pusher calls it when it stops). A source may record
    deliveries lazily (the registry source deletes delivered messages in one statement every 0.2 s): what a crash
    loses of them is only sent again, never lost.

``ids`` passed to the settling calls are always ids the source handed out and not yet settled.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson


@dataclass(frozen=True, slots=True)
class SerializedEntity:
    """An entity document already serialized: its id, and its JSON as it goes in a request body."""

    id: str
    json: orjson.Fragment


Document = dict[str, Any] | SerializedEntity
"""An entity document: a dictionary, or its JSON already made."""


def document_id(document: Document) -> str:
    """The entity id of a document (a URN for NGSI-LD)."""
    if isinstance(document, SerializedEntity):
        return document.id
    return str(document["id"])


@dataclass(frozen=True, slots=True)
class QueuedUpdate:
    """One entity update waiting to go north."""

    id: int
    """Queue position; ascending in the order the updates were queued."""
    entity: Document
    """The serialized entity document as it goes in the request body (its ``id`` is the entity id)."""
    attempts: int
    """How many times it was sent and not accepted."""
    first_queued_at: float
    """When it was queued (Unix seconds)."""

    @property
    def entity_id(self) -> str:
        """The entity's id (a URN for NGSI-LD)."""
        return document_id(self.entity)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The queue's size for the metrics."""

    pending: int
    oldest_queued_at: float | None
    dead: int


class NorthboundSource(Protocol):
    """Where the pusher takes updates from and settles them (contract in the module docstring)."""

    async def fetch(self, limit: int, per_entity: int = 1) -> list[QueuedUpdate]: ...

    async def delivered(self, ids: Sequence[int]) -> None: ...

    async def retry_later(self, ids: Sequence[int], not_before: float, reason: str) -> None: ...

    async def dead_letter(self, ids: Sequence[int], reason: str) -> None: ...

    async def stats(self) -> QueueStats: ...

    async def flush(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    update: QueuedUpdate
    not_before: float = 0.0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An update that was dead-lettered, and why."""

    update: QueuedUpdate
    reason: str
    at: float


@dataclass
class MemoryQueue:
    """A :class:`NorthboundSource` in memory (the registry source's staging, tests, benchmarks).

    Every entity with waiting updates is in exactly one place: the ``ready`` heap (by its head's id), the
    ``delayed`` heap (by ``not_before``, after a failed attempt), or handed out (``out``: how many of its first
    updates are). So :meth:`fetch` costs O(limit · log n) however many entities wait, and once nothing of an entity
    is handed out any more it is ready (or delayed) again with its next update as head.
    """

    _entries: dict[int, _Entry] = field(default_factory=dict)
    _by_entity: dict[str, deque[int]] = field(default_factory=dict)
    _out: dict[str, int] = field(default_factory=dict)
    _hold: dict[str, float] = field(default_factory=dict)
    """Entity -> ``not_before`` of its updates handed back by :meth:`retry_later` while others were still out."""
    _ready: list[tuple[int, str]] = field(default_factory=list)
    _delayed: list[tuple[float, int, str]] = field(default_factory=list)
    _handed_out: set[int] = field(default_factory=set)
    _next_id: int = 1
    dead: list[DeadLetter] = field(default_factory=list)

    @property
    def pending(self) -> int:
        """Updates waiting (handed out or not)."""
        return len(self._entries)

    def put(self, entities: Sequence[Document]) -> list[int]:
        """Queue entity documents in order; returns their ids."""
        ids = []
        now = time.time()
        for entity in entities:
            update = QueuedUpdate(self._next_id, entity, 0, now)
            self._entries[update.id] = _Entry(update)
            waiting = self._by_entity.get(update.entity_id)
            if waiting is None:
                self._by_entity[update.entity_id] = deque((update.id,))
                heapq.heappush(self._ready, (update.id, update.entity_id))
            else:
                waiting.append(update.id)
            ids.append(update.id)
            self._next_id += 1
        return ids

    def last_error(self, update_id: int) -> str | None:
        """The reason of the last failed attempt of a waiting update."""
        return self._entries[update_id].last_error

    async def fetch(self, limit: int, per_entity: int = 1) -> list[QueuedUpdate]:
        now = time.time()
        while self._delayed and self._delayed[0][0] <= now:
            _, head, entity_id = heapq.heappop(self._delayed)
            heapq.heappush(self._ready, (head, entity_id))
        chosen: list[int] = []
        while self._ready and len(chosen) < limit:
            _, entity_id = heapq.heappop(self._ready)
            waiting = self._by_entity[entity_id]
            take = min(per_entity, limit - len(chosen), len(waiting))
            taken = [waiting[i] for i in range(take)]
            self._out[entity_id] = take
            self._handed_out.update(taken)
            chosen.extend(taken)
        chosen.sort()  # by queue position: an entity's updates stay in their order within the batch
        return [self._entries[i].update for i in chosen]

    def _back(self, entity_id: str) -> None:
        """One of the entity's handed-out updates was settled or handed back: when none is out, it waits again."""
        left = self._out[entity_id] - 1
        if left:
            self._out[entity_id] = left
            return
        del self._out[entity_id]
        waiting = self._by_entity.get(entity_id)
        if not waiting:
            self._hold.pop(entity_id, None)
            return
        hold = self._hold.pop(entity_id, None)
        if hold is None:
            heapq.heappush(self._ready, (waiting[0], entity_id))
        else:
            heapq.heappush(self._delayed, (hold, waiting[0], entity_id))

    def _settle(self, update_id: int) -> QueuedUpdate:
        self._handed_out.remove(update_id)
        entry = self._entries.pop(update_id)
        entity_id = entry.update.entity_id
        waiting = self._by_entity[entity_id]
        waiting.remove(update_id)
        if not waiting:
            del self._by_entity[entity_id]
        self._back(entity_id)
        return entry.update

    async def delivered(self, ids: Sequence[int]) -> None:
        for update_id in ids:
            self._settle(update_id)

    async def retry_later(self, ids: Sequence[int], not_before: float, reason: str) -> None:
        for update_id in ids:
            self._handed_out.remove(update_id)
            entry = self._entries[update_id]
            entry.update = QueuedUpdate(
                entry.update.id, entry.update.entity, entry.update.attempts + 1, entry.update.first_queued_at
            )
            entry.not_before, entry.last_error = not_before, reason
            entity_id = entry.update.entity_id
            self._hold[entity_id] = max(not_before, self._hold.get(entity_id, not_before))
            self._back(entity_id)

    async def dead_letter(self, ids: Sequence[int], reason: str) -> None:
        now = time.time()
        for update_id in ids:
            self.dead.append(DeadLetter(self._settle(update_id), reason, now))

    async def flush(self) -> None:
        return None

    async def stats(self) -> QueueStats:
        oldest = next(iter(self._entries.values()), None)  # by id: the first queued of those left
        return QueueStats(len(self._entries), None if oldest is None else oldest.update.first_queued_at, len(self.dead))
