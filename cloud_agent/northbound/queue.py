"""The northbound queue's interface (what the pusher needs from wherever updates wait) and an in-memory queue.

An update is one serialized entity document (NGSI-LD normalized with ``@context``, or NGSI v2 normalized), as
:mod:`cloud_agent.northbound.entities` makes it. The queue is the durable part: the registry fills it in the same
transaction as the readings, the pusher drains it. Any storage can be a source if it keeps this contract:

``fetch(limit)``
    Up to ``limit`` updates, oldest first (by ``id``), taking for each entity only its **oldest unsettled update**, and
    only if that update is not already handed out and its ``not_before`` has passed (wall clock). What it returns is
    *handed out* until settled by one of the three calls below; after a restart nothing is handed out any more and
    everything unsettled can be fetched again (delivery is at least once). Taking only the head per entity is what
    keeps the order per entity: a later update of an entity waits while an earlier one is in flight or waiting for
    a retry, and a batch never holds two updates of one entity.
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

``ids`` passed to the settling calls are always ids the source handed out and not yet settled.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class QueuedUpdate:
    """One entity update waiting to go north."""

    id: int
    """Queue position; ascending in the order the updates were queued."""
    entity: dict[str, Any]
    """The serialized entity document as it goes in the request body (its ``id`` is the entity id)."""
    attempts: int
    """How many times it was sent and not accepted."""
    first_queued_at: float
    """When it was queued (Unix seconds)."""

    @property
    def entity_id(self) -> str:
        """The entity's id (a URN for NGSI-LD)."""
        return str(self.entity["id"])


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The queue's size for the metrics."""

    pending: int
    oldest_queued_at: float | None
    dead: int


class NorthboundSource(Protocol):
    """Where the pusher takes updates from and settles them (contract in the module docstring)."""

    async def fetch(self, limit: int) -> list[QueuedUpdate]: ...

    async def delivered(self, ids: Sequence[int]) -> None: ...

    async def retry_later(self, ids: Sequence[int], not_before: float, reason: str) -> None: ...

    async def dead_letter(self, ids: Sequence[int], reason: str) -> None: ...

    async def stats(self) -> QueueStats: ...


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
    """A :class:`NorthboundSource` in memory (tests and benchmarks): nothing survives the process."""

    _entries: dict[int, _Entry] = field(default_factory=dict)
    _by_entity: dict[str, deque[int]] = field(default_factory=dict)
    _handed_out: set[int] = field(default_factory=set)
    _next_id: int = 1
    dead: list[DeadLetter] = field(default_factory=list)

    def put(self, entities: Sequence[dict[str, Any]]) -> list[int]:
        """Queue entity documents in order; returns their ids."""
        ids = []
        now = time.time()
        for entity in entities:
            update = QueuedUpdate(self._next_id, entity, 0, now)
            self._entries[update.id] = _Entry(update)
            self._by_entity.setdefault(update.entity_id, deque()).append(update.id)
            ids.append(update.id)
            self._next_id += 1
        return ids

    def last_error(self, update_id: int) -> str | None:
        """The reason of the last failed attempt of a waiting update."""
        return self._entries[update_id].last_error

    async def fetch(self, limit: int) -> list[QueuedUpdate]:
        now = time.time()
        heads = []
        for queue in self._by_entity.values():
            head = queue[0]
            if head not in self._handed_out and self._entries[head].not_before <= now:
                heads.append(head)
        heads.sort()
        chosen = heads[:limit]
        self._handed_out.update(chosen)
        return [self._entries[i].update for i in chosen]

    def _settle(self, update_id: int) -> QueuedUpdate:
        self._handed_out.discard(update_id)
        entry = self._entries.pop(update_id)
        queue = self._by_entity[entry.update.entity_id]
        queue.remove(update_id)
        if not queue:
            del self._by_entity[entry.update.entity_id]
        return entry.update

    async def delivered(self, ids: Sequence[int]) -> None:
        for update_id in ids:
            self._settle(update_id)

    async def retry_later(self, ids: Sequence[int], not_before: float, reason: str) -> None:
        for update_id in ids:
            self._handed_out.discard(update_id)
            entry = self._entries[update_id]
            entry.update = QueuedUpdate(
                entry.update.id, entry.update.entity, entry.update.attempts + 1, entry.update.first_queued_at
            )
            entry.not_before, entry.last_error = not_before, reason

    async def dead_letter(self, ids: Sequence[int], reason: str) -> None:
        now = time.time()
        for update_id in ids:
            self.dead.append(DeadLetter(self._settle(update_id), reason, now))

    async def stats(self) -> QueueStats:
        oldest = min((e.update.first_queued_at for e in self._entries.values()), default=None)
        return QueueStats(len(self._entries), oldest, len(self.dead))
