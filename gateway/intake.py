"""The intake: the sink every source submits to. It group-commits readings into the outbox.

Sources call ``await intake.submit(readings)``. Submissions that arrive while a commit is running are gathered and
committed together in the next transaction (group commit), split into wire messages of at most
``max_readings_per_message`` readings and grouped by priority, so the disk budget policy can thin telemetry without
touching alarms. ``submit`` returns only once the readings are durably committed: that is the moment they count as
accepted. Back-pressure is natural: a source waits for its own commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.model import Priority, Reading
from gateway.outbox import Outbox
from gateway.outbox_store import PendingMessage
from kakehashi import wire
from kakehashi.errors import KakehashiError
from kakehashi.log import get_logger

log = get_logger(__name__)

DEFAULT_MAX_READINGS_PER_MESSAGE = 500
MAX_READINGS_PER_COMMIT = 20_000


class IntakeClosedError(KakehashiError):
    reason = "intake_closed"


@dataclass
class _Submission:
    readings: Sequence[Reading]
    done: asyncio.Future[None]


@dataclass
class IntakeStats:
    submitted_readings: int = 0
    commits: int = 0
    messages: int = 0
    rejected_readings: int = 0
    relay_duplicates: int = 0
    by_priority: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def readings_message(readings: Sequence[Reading], sent_at: float) -> PendingMessage:
    """A readings message for the outbox; it is encoded once its sequence number is known."""
    wire_readings = tuple(reading.to_wire() for reading in readings)
    priority = min(reading.priority for reading in readings)

    def encode(seq: int) -> bytes:
        return wire.encode_readings(wire.ReadingsMessage(seq=seq, sent_at=sent_at, readings=wire_readings))

    return PendingMessage(wire.Channel.READINGS, priority, len(readings), encode)


class Intake:
    """Implements :class:`gateway.sources.base.ReadingSink` over an :class:`Outbox` with group commit."""

    def __init__(self, outbox: Outbox, *, max_readings_per_message: int = DEFAULT_MAX_READINGS_PER_MESSAGE) -> None:
        self._outbox = outbox
        self._max_per_message = max_readings_per_message
        self._pending: list[_Submission] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.stats = IntakeStats()

    async def submit_once(self, origin: str, origin_seq: int, readings: Sequence[Reading]) -> bool:
        """Commit a relayed message (an edge node's) at most once, bypassing group commit; returns True once it is
        durably held, whether committed now or before (a duplicate), and False if the disk budget refused it (the
        sender should keep it and retry later)."""
        if self._closed:
            raise IntakeClosedError("the gateway is shutting down: readings are no longer accepted")
        message = readings_message(readings, time.time())
        pending = PendingMessage(
            message.channel, message.priority, message.readings, message.encode, (origin, origin_seq)
        )
        result = await self._outbox.append([pending])
        if 0 in result.duplicates:
            self.stats.relay_duplicates += 1
            return True
        if result.seqs[0] is None:
            return False
        self.stats.submitted_readings += len(readings)
        return True

    async def submit(self, readings: Sequence[Reading]) -> None:
        """Commit ``readings`` durably; returns when they are accepted."""
        if not readings:
            return
        if self._closed:
            raise IntakeClosedError("the gateway is shutting down: readings are no longer accepted")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Submission(readings, done))
        self._wake.set()
        await done

    def _take_batch(self) -> list[_Submission]:
        batch: list[_Submission] = []
        total = 0
        while self._pending and (not batch or total + len(self._pending[0].readings) <= MAX_READINGS_PER_COMMIT):
            submission = self._pending.pop(0)
            batch.append(submission)
            total += len(submission.readings)
        return batch

    def _messages(self, batch: list[_Submission]) -> list[PendingMessage]:
        by_priority: dict[Priority, list[Reading]] = defaultdict(list)
        for submission in batch:
            for reading in submission.readings:
                by_priority[reading.priority].append(reading)
        now = time.time()
        messages = []
        for priority in sorted(by_priority):
            readings = by_priority[priority]
            for start in range(0, len(readings), self._max_per_message):
                messages.append(readings_message(readings[start : start + self._max_per_message], now))
        return messages

    async def _commit(self, batch: list[_Submission]) -> None:
        try:
            messages = self._messages(batch)
            await self._outbox.append(messages)
        except (KakehashiError, wire.WireError) as exc:
            if len(batch) > 1 and isinstance(exc, wire.WireError):
                # One source submitted something the wire contract refuses: isolate it, commit the others.
                for submission in batch:
                    await self._commit([submission])
                return
            count = sum(len(s.readings) for s in batch)
            self.stats.rejected_readings += count
            log.error("intake_rejected", readings=count, reason=exc.reason, detail=exc.message)
            for submission in batch:
                if not submission.done.done():
                    submission.done.set_exception(exc)
            return
        self.stats.commits += 1
        self.stats.messages += len(messages)
        for submission in batch:
            for reading in submission.readings:
                self.stats.by_priority[reading.priority.name.lower()] += 1
        self.stats.submitted_readings += sum(len(s.readings) for s in batch)
        for submission in batch:
            if not submission.done.done():
                submission.done.set_result(None)

    async def run(self) -> None:
        """Commit submissions until cancelled; on cancellation, commit what is pending first."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while batch := self._take_batch():
                    await self._commit(batch)
        finally:
            self._closed = True
            with contextlib.suppress(BaseException):
                while batch := self._take_batch():
                    await asyncio.shield(self._commit(batch))

    async def drain(self) -> None:
        """Commit everything submitted so far, then refuse further submissions (clean shutdown)."""
        self._closed = True
        while batch := self._take_batch():
            await self._commit(batch)
