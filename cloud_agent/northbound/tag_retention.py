"""Retention at the City OS end: a consented tag's pseudonymised ``Device`` is deleted there when it may no longer be.

A consented tag goes to the City OS as ``urn:ngsi-ld:Device:tag-<pseudonym>``
(:mod:`cloud_agent.northbound.crowd_counts`). :class:`TagRetention` deletes that entity as soon as the tag no longer
qualifies (:func:`~cloud_agent.northbound.crowd_counts.sharing`): its consent was withdrawn, its ``share`` label no
longer has the ``zone`` scope, it is not active any more (suspended, decommissioned), or it has not been seen for
``retention_s``. Every ``period_s`` it reads the watch tags' records from the registry and compares them with the
previous pass; at the first pass (after every start) it deletes the entity of *every* tag that does not qualify,
since it cannot know what an earlier run left there -- a repeated deletion is harmless: not-found counts as done.

Deletions wait in memory until the broker confirms them: an outage, a 5xx or a 429 pauses them with exponential
back-off (``Retry-After`` where given) and nothing is dropped, however long the City OS is down; a restart plans
them again from the registry. A tag that qualifies again before its deletion went out is not deleted. A confirmed
deletion is sent once more ``repeat_after_s`` later, which removes the entity again should an upsert that was still
queued in the pusher when the tag stopped qualifying have re-created it.

``CrowdFlowObserved`` entities are not deleted: they are aggregates (distinct-tag counts per zone and hour, held
back below ``min_count``) that single out nobody, and the city keeps them as statistics. Only pseudonyms leave this
module, in entity ids and logs; never a tag id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from cloud_agent.northbound.crowd_counts import TagStates, sharing
from cloud_agent.northbound.ngsi_clients import EntityDeleter, EntityFailure, PushError
from cloud_agent.northbound.privacy import Pseudonymiser, tag_urn
from kakehashi.log import get_logger
from kakehashi.waiting import until_set

__all__ = ["TagRetention"]

log = get_logger(__name__)
DEVICE: Final = "Device"


class TagRetention:
    """Deletes the City OS ``Device`` of every consented tag that stopped qualifying (see the module doc)."""

    def __init__(
        self,
        registry: TagStates,
        deleter: EntityDeleter,
        secret: bytes,
        *,
        retention_s: float = 86_400.0,
        period_s: float = 60.0,
        batch_size: int = 100,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 300.0,
        repeat_after_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_s <= 0 or period_s <= 0 or batch_size < 1 or repeat_after_s < 0:
            raise ValueError("retention_s and period_s must be above 0, batch_size at least 1, repeat_after_s ≥ 0")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("backoff_initial_s must be above 0 and at most backoff_max_s")
        self._registry = registry
        self._deleter = deleter
        self._pseudonyms = Pseudonymiser(secret)
        self._retention_s = retention_s
        self._period_s = period_s
        self._batch_size = batch_size
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._repeat_after_s = repeat_after_s
        self._clock = clock
        self._shared: set[str] | None = None  # entity ids that qualified at the last pass; None before the first
        self._pending: dict[str, float] = {}  # entity id -> not before (epoch seconds)
        self._repeat: dict[str, float] = {}  # entity id -> when to send its deletion once more
        self._failures = 0
        self._resume_at = 0.0
        self.deleted = 0
        """Deletions the broker confirmed (including entities that were already gone)."""
        self.failed_requests = 0
        """Delete requests that failed as a whole (outage, 5xx, 429, refused): their deletions wait and retry."""
        self.refused = 0
        """Single deletions the broker refused (kept, retried after ``backoff_max_s``)."""

    @property
    def pending(self) -> frozenset[str]:
        """Entity ids whose deletion the broker has not confirmed yet."""
        return frozenset(self._pending)

    async def plan(self, now: float) -> None:
        """Read the tags' records and queue the deletion of every entity that must go."""
        qualify: set[str] = set()
        known: set[str] = set()
        for tag in await self._registry.watch_tag_states():
            entity_id = tag_urn(self._pseudonyms.pseudonym(tag.tag_id))
            known.add(entity_id)
            if sharing(tag, now, self._retention_s):
                qualify.add(entity_id)
        gone = (known if self._shared is None else self._shared) - qualify
        for entity_id in gone:
            self._pending.setdefault(entity_id, now)
            self._repeat.pop(entity_id, None)
        for entity_id in qualify:  # shared (again): it belongs at the City OS
            self._pending.pop(entity_id, None)
            self._repeat.pop(entity_id, None)
        self._shared = qualify
        if gone:
            log.info("tag_devices_to_delete", count=len(gone), pending=len(self._pending))

    async def deliver(self, now: float) -> None:
        """Send the deletions due at ``now`` in batches; stop at the first failed request (back-off)."""
        if now < self._resume_at:
            return
        due = [i for i, at in self._pending.items() if at <= now]
        due += [i for i, at in self._repeat.items() if at <= now and i not in self._pending]
        for start in range(0, len(due), self._batch_size):
            chunk = due[start : start + self._batch_size]
            try:
                failures = await self._deleter.delete([(entity_id, DEVICE) for entity_id in chunk])
            except PushError as exc:
                self._failures += 1
                self.failed_requests += 1
                wait = exc.retry_after if exc.retry_after is not None else self._wait(self._failures)
                self._resume_at = now + wait
                event = "tag_device_delete_retry" if exc.transient else "tag_device_delete_refused"
                log.warning(
                    event, kind=exc.kind, status=exc.status, detail=exc.detail, entities=len(chunk), wait_s=wait
                )
                return
            self._failures = 0
            self._settle(chunk, failures, now)

    def _settle(self, chunk: list[str], failures: dict[str, EntityFailure], now: float) -> None:
        for entity_id in chunk:
            failure = failures.get(entity_id)
            if failure is not None:
                self.refused += 1
                self._pending[entity_id] = now + self._backoff[1]
                self._repeat.pop(entity_id, None)
                log.warning("tag_device_delete_failed", entity=entity_id, kind=failure.kind, detail=failure.detail)
            elif entity_id in self._pending:
                del self._pending[entity_id]
                self.deleted += 1
                if self._repeat_after_s:
                    self._repeat[entity_id] = now + self._repeat_after_s
            else:
                self._repeat.pop(entity_id, None)

    def _wait(self, failures: int) -> float:
        initial, ceiling = self._backoff
        return float(min(ceiling, initial * 2.0 ** min(failures - 1, 30)))

    def _next_due(self, now: float) -> float:
        times = [*self._pending.values(), *self._repeat.values()]
        return max(self._resume_at, min(times)) - now if times else self._period_s

    async def run_once(self) -> None:
        """One pass: plan from the registry, then send what is due."""
        now = self._clock()
        await self.plan(now)
        await self.deliver(now)

    async def run(self, stop: asyncio.Event) -> None:
        """Plan every ``period_s`` and delete with back-off until ``stop`` is set."""
        next_plan = 0.0
        while not stop.is_set():
            now = self._clock()
            if now >= next_plan or now < next_plan - self._period_s:  # also when the clock stepped back
                try:
                    await self.plan(now)
                except Exception:  # the registry is unreachable: try again next period, keep what is pending
                    log.exception("tag_retention_plan_failed")
                next_plan = now + self._period_s
            try:
                await self.deliver(self._clock())
            except Exception:  # a defect in a client must not end retention: back off and go on
                log.exception("tag_retention_client_crashed")
                self._failures += 1
                self._resume_at = self._clock() + self._wait(self._failures)
            now = self._clock()
            wait = min(next_plan - now, self._next_due(now))
            await until_set(stop, within=min(self._period_s, max(0.01, wait)))
