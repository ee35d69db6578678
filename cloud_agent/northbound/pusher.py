"""The pusher: drains the northbound queue into the City OS broker in batches, keeping every update through
outages, throttling and partial failures.

- **Batches, bounded:** one request carries up to ``batch_size`` updates, at most one per entity (the queue hands
  out only each entity's oldest unsettled update, which also keeps the order per entity); at most
  ``max_in_flight`` requests are open at once. The queue is only read when a request slot is free, so a slow
  broker slows the pusher down instead of piling up requests. A batch goes out when it is full, when nothing else
  is in flight, or ``linger_s`` after its first update was taken: while requests are in flight a short batch waits
  for their answers (which free more entities' next updates) instead of going out as many small requests.
- **Whole request failed, transient** (connection refused or reset, time-out, 5xx, 401/403 after a fresh token,
  token endpoint unavailable): the batch goes back to the queue and the pusher pauses with exponential back-off
  and jitter (``backoff_initial_s`` doubling up to ``backoff_max_s``); after a failure only one request is in
  flight until one succeeds. 429 and 503 with ``Retry-After`` pause exactly that long. Nothing is dead-lettered
  for an outage, however long.
- **Whole request refused** (another 4xx: one bad entity can make Orion refuse a whole batch; a body too large):
  the batch is split in halves and each half sent again, down to single updates, which are dead-lettered with the
  broker's reason.
- **Per entity (207):** the accepted entities are delivered; failures of a transient kind (``InternalError``,
  ``LdContextNotAvailable``, status ≥ 500) are retried with back-off up to ``max_attempts``, then dead-lettered as
  ``retries_exhausted``; the others are dead-lettered at once with their reason. 201 and 204 are both success.
  An answer names entity ids, so when an entity had several updates in the request, all of them share its fate;
  refused for good, they are sent again one per request, in order, so that only the refused one is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud_agent.northbound.ngsi_clients import BrokerClient, PushError
from cloud_agent.northbound.queue import NorthboundSource, QueuedUpdate
from kakehashi.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class PusherSettings:
    """How the pusher batches and retries."""

    batch_size: int = 100
    max_in_flight: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    max_attempts: int = 10
    """Transient per-entity failures (in a 207) before the update is dead-lettered; failures of whole requests
    (outages, 5xx, 429) never count here, and a restart of the agent starts the count again."""
    updates_per_entity: int = 10
    """How many consecutive updates of one entity may share a request (in their order). NGSI-LD brokers apply
    repeated ids of a batch upsert in array order (ETSI GS CIM 009, batch upsert), Orion applies a ``/v2/op/update``
    entity by entity; 1 sends each entity at most once per request, for brokers that merge repeats."""
    linger_s: float = 0.02
    """How long a batch that is not full may wait for more updates while other requests are in flight."""
    idle_poll_s: float = 0.1
    """How often an empty queue is looked at again (or at once after :meth:`Pusher.wake`)."""
    stop_grace_s: float = 15.0
    """When stopping, how long requests in flight may take to finish and be recorded in the queue."""

    def __post_init__(self) -> None:
        if min(self.batch_size, self.max_in_flight, self.max_attempts, self.updates_per_entity) < 1:
            raise ValueError("batch_size, max_in_flight, max_attempts and updates_per_entity must be at least 1")
        if self.linger_s < 0:
            raise ValueError("linger_s must not be negative")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("backoff_initial_s must be above 0 and at most backoff_max_s")


@dataclass
class PusherMetrics:
    """Counters for the agent's metrics."""

    requests: int = 0
    delivered: int = 0
    retried: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    last_error_at: float | None = None
    paused_until: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "requests": self.requests,
            "delivered": self.delivered,
            "retried": self.retried,
            "dead_lettered": dict(self.dead_lettered),
            "failures": dict(self.failures),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


class Pusher:
    """Moves updates from a :class:`NorthboundSource` to a :class:`BrokerClient` until stopped."""

    def __init__(self, source: NorthboundSource, client: BrokerClient, settings: PusherSettings | None = None) -> None:
        self.source = source
        self.client = client
        self.settings = settings or PusherSettings()
        self.metrics = PusherMetrics()
        self._failures_in_row = 0
        self._resume_at = 0.0
        self._entity_failures: dict[int, int] = {}
        """Update id → transient per-entity failures so far (in memory: a restart grants fresh tries)."""
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """New updates were queued: look at once instead of at the next idle poll."""
        self._wake.set()

    async def snapshot(self) -> dict[str, Any]:
        """The metrics with the queue's depth and the age of its oldest update."""
        stats = await self.source.stats()
        oldest = None if stats.oldest_queued_at is None else round(max(0.0, time.time() - stats.oldest_queued_at), 3)
        return {**self.metrics.as_dict(), "queue_depth": stats.pending, "oldest_age_s": oldest, "dead": stats.dead}

    async def run(self, stop: asyncio.Event) -> None:
        """Push until ``stop`` is set; requests in flight then finish (they are bounded by the client's time-out)."""
        in_flight: set[asyncio.Task[None]] = set()
        forming: list[QueuedUpdate] = []
        forming_since = 0.0
        stopping = asyncio.create_task(stop.wait(), name="northbound-stop")
        log.info("northbound_pusher_started", **_settings_fields(self.settings))
        try:
            while not stop.is_set():
                pause = self._resume_at - time.monotonic()
                limit = 1 if self._failures_in_row else self.settings.max_in_flight
                if pause > 0:
                    await _first(stopping, *in_flight, within=pause)
                    continue
                if len(in_flight) >= limit:
                    await _first(stopping, *in_flight)
                    continue
                try:
                    more = await self.source.fetch(
                        self.settings.batch_size - len(forming), per_entity=self.settings.updates_per_entity
                    )
                except Exception as exc:
                    self._queue_failed("fetch", exc)
                    continue
                if more:
                    if not forming:
                        forming_since = time.monotonic()
                    forming.extend(more)
                lingered = time.monotonic() - forming_since
                if forming and (
                    len(forming) >= self.settings.batch_size or not in_flight or lingered >= self.settings.linger_s
                ):
                    task = asyncio.create_task(self._send(forming), name="northbound-push")
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    forming = []
                    continue
                within = self.settings.linger_s - lingered if forming else self.settings.idle_poll_s
                self._wake.clear()
                waking = asyncio.create_task(self._wake.wait())
                try:
                    await _first(stopping, waking, *in_flight, within=max(0.0, within))
                finally:
                    waking.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waking
        finally:
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
            if forming:  # taken but never sent: hand them back
                with contextlib.suppress(Exception):
                    await self.source.retry_later([u.id for u in forming], time.time(), "pusher stopped before sending")
            if in_flight:
                _, late = await asyncio.wait(set(in_flight), timeout=self.settings.stop_grace_s)
                for task in late:  # settling against a queue that keeps failing: sent again after a restart
                    task.cancel()
                for result in await asyncio.gather(*in_flight, *late, return_exceptions=True):
                    if isinstance(result, Exception):
                        log.error("northbound_push_crashed", error=repr(result))
            try:
                await self.source.flush()
            except Exception as exc:  # delivered updates whose settling is lost are sent again after a restart
                self._queue_failed("flush", exc)
            log.info("northbound_pusher_stopped", **self.metrics.as_dict())

    async def _send(self, batch: Sequence[QueuedUpdate]) -> None:
        self.metrics.requests += 1
        try:
            failures = await self.client.push([u.entity for u in batch])
        except PushError as exc:
            await self._request_failed(batch, exc)
            return
        except Exception as exc:  # a defect in a client must not leave the batch handed out for good
            log.exception("northbound_client_crashed", entities=len(batch))
            await self._request_failed(batch, PushError("internal", repr(exc), transient=True))
            return
        self._failures_in_row = 0
        by_entity: dict[str, list[QueuedUpdate]] = {}
        for update in batch:
            by_entity.setdefault(update.entity_id, []).append(update)
        accepted = [u.id for u in batch if u.entity_id not in failures]
        for update_id in accepted:
            self._entity_failures.pop(update_id, None)
        if accepted:
            await self._settle("delivered", self.source.delivered, accepted)
            self.metrics.delivered += len(accepted)
        for entity_id, failure in failures.items():
            updates = by_entity.get(entity_id)
            if updates is None:
                continue
            reason = f"{failure.kind}: {failure.detail}"
            self.metrics.failures[failure.kind] += 1
            head = updates[0].id  # the tries are counted on the entity's first update in the batch
            tries = self._entity_failures.pop(head, 0) + 1
            if failure.transient and tries < self.settings.max_attempts:
                self._entity_failures[head] = tries
                ids = [u.id for u in updates]
                await self._settle(
                    "retry_later", self.source.retry_later, ids, time.time() + self._backoff(tries), reason
                )
                self.metrics.retried += len(ids)
            elif len(updates) > 1:
                # one answer per entity id: send its updates one by one, in order, to find the one refused
                log.info("northbound_entity_isolated", entity_id=entity_id, updates=len(updates), kind=failure.kind)
                for update in updates:
                    await self._send([update])
            else:
                kind = failure.kind if not failure.transient else "retries_exhausted"
                await self._dead_letter(updates, kind, reason)

    async def _request_failed(self, batch: Sequence[QueuedUpdate], exc: PushError) -> None:
        reason = f"{exc.kind}: {exc.detail}"
        self.metrics.failures[exc.kind] += 1
        self.metrics.last_error, self.metrics.last_error_at = reason, time.time()
        if not exc.transient:
            if len(batch) > 1 and exc.splittable:
                half = len(batch) // 2
                log.info("northbound_batch_split", status=exc.status, kind=exc.kind, entities=len(batch))
                await self._send(batch[:half])
                await self._send(batch[half:])
            else:
                await self._dead_letter(batch, exc.kind, reason)
            return
        self._failures_in_row += 1
        wait = exc.retry_after if exc.retry_after is not None else self._backoff(self._failures_in_row)
        self._resume_at = max(self._resume_at, time.monotonic() + wait)
        await self._settle("retry_later", self.source.retry_later, [u.id for u in batch], time.time() + wait, reason)
        self.metrics.retried += len(batch)
        log.warning(
            "northbound_push_failed",
            kind=exc.kind,
            status=exc.status,
            detail=exc.detail,
            entities=len(batch),
            pause_s=round(wait, 3),
            failures_in_row=self._failures_in_row,
        )

    async def _dead_letter(self, updates: Sequence[QueuedUpdate], kind: str, reason: str) -> None:
        await self._settle("dead_letter", self.source.dead_letter, [u.id for u in updates], reason)
        for update in updates:
            self._entity_failures.pop(update.id, None)
        self.metrics.dead_lettered[kind] += len(updates)
        self.metrics.last_error, self.metrics.last_error_at = reason, time.time()
        log.warning(
            "northbound_dead_lettered",
            kind=kind,
            reason=reason,
            entities=len(updates),
            entity_ids=[u.entity_id for u in updates[:10]],
        )

    async def _settle(self, operation: str, call: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Record an outcome in the queue, trying again with back-off while the queue's storage fails: an outcome
        is never dropped (the broker already has the update, or we know it must be retried or dead-lettered)."""
        failures = 0
        while True:
            try:
                await call(*args)
            except Exception as exc:
                failures += 1
                self._queue_failed(operation, exc)
                await asyncio.sleep(self._backoff(failures))
            else:
                return

    def _queue_failed(self, operation: str, exc: Exception) -> None:
        self.metrics.failures["queue"] += 1
        self.metrics.last_error, self.metrics.last_error_at = f"queue {operation}: {exc!r}", time.time()
        self._resume_at = max(self._resume_at, time.monotonic() + self.settings.backoff_initial_s)
        log.error("northbound_queue_failed", operation=operation, error=repr(exc))

    def _backoff(self, failures: int) -> float:
        """Exponential back-off with jitter: between half and all of initial × 2^(failures-1), capped."""
        ceiling = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2.0 ** min(failures - 1, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


async def _first(*waitables: asyncio.Task[Any], within: float | None = None) -> None:
    """Wait until one of the tasks is done (or ``within`` seconds passed); never cancels them."""
    await asyncio.wait(waitables, timeout=within, return_when=asyncio.FIRST_COMPLETED)


def _settings_fields(settings: PusherSettings) -> dict[str, Any]:
    return {
        "batch_size": settings.batch_size,
        "max_in_flight": settings.max_in_flight,
        "backoff_max_s": settings.backoff_max_s,
        "max_attempts": settings.max_attempts,
        "updates_per_entity": settings.updates_per_entity,
        "linger_s": settings.linger_s,
    }
