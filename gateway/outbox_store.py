"""The outbox's SQLite store: durable, ordered, budgeted messages waiting for the broker's PUBACK.

Every uplink message (readings, events, reported state, command acks) is committed here before it counts as
accepted, and gets the gateway's next sequence number in the same transaction, so sequence numbers are dense,
strictly increasing and survive restarts. The database runs in WAL mode with ``synchronous=FULL``: a committed
message survives kill -9 and power loss. Rows are deleted only after the broker acknowledged them.

When the disk budget is exhausted, low-priority telemetry is thinned (every other stored telemetry message, oldest
first); alarms and events are never evicted. Every eviction is recorded as a gap and reported upstream in an events
message, so the cloud can prove completeness. This class is synchronous; :class:`gateway.outbox.Outbox` runs it on
one worker thread.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.model import Priority
from kakehashi import wire
from kakehashi.errors import KakehashiError
from kakehashi.log import get_logger

log = get_logger(__name__)

SCHEMA_VERSION = 1
# Thinning frees at least this share of the budget at once, so a sustained overload does not thin on every append.
THIN_CHUNK = 0.1
# Alarms and events may use this much more than the budget before even they are refused.
HARD_LIMIT_FACTOR = 1.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    priority INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (priority, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS origins (origin TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drops (
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
"""

_COUNTERS = ("next_seq", "dropped_messages", "dropped_readings", "intake_dropped_readings", "accepted_readings")


class OutboxError(KakehashiError):
    reason = "outbox"


class OutboxFullError(OutboxError):
    """Even alarms cannot be stored: the outbox is past its hard limit."""

    reason = "outbox_full"


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A message to commit: ``encode(seq)`` makes its payload once its sequence number is known."""

    channel: wire.Channel
    priority: Priority
    readings: int
    encode: Callable[[int], bytes]
    # (origin, its own sequence number) for relayed messages (an edge node's): committed at most once. An origin's
    # messages must be appended one at a time, in its order; anything at or below its high-water mark is a duplicate.
    origin: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    channel: wire.Channel
    priority: Priority
    readings: int
    payload: bytes


@dataclass(slots=True)
class AppendResult:
    """What an append did: the sequence numbers given (``None`` for a message refused at intake) and any evictions."""

    seqs: list[int | None] = field(default_factory=list)
    duplicates: set[int] = field(default_factory=set)  # indexes of relayed messages already committed before
    evicted_messages: int = 0
    evicted_readings: int = 0
    intake_dropped_readings: int = 0


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth_messages: int
    depth_readings: int
    bytes_used: int
    budget_bytes: int
    next_seq: int
    oldest_created: float | None
    accepted_readings: int
    dropped_messages: int
    dropped_readings: int
    intake_dropped_readings: int

    def to_json(self) -> dict[str, int | float | None]:
        return {
            "depth_messages": self.depth_messages,
            "depth_readings": self.depth_readings,
            "bytes_used": self.bytes_used,
            "budget_bytes": self.budget_bytes,
            "next_seq": self.next_seq,
            "oldest_age_s": None if self.oldest_created is None else round(time.time() - self.oldest_created, 3),
            "accepted_readings": self.accepted_readings,
            "dropped_messages": self.dropped_messages,
            "dropped_readings": self.dropped_readings,
            "intake_dropped_readings": self.intake_dropped_readings,
        }


def _gap_ranges(evicted: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """Coalesce evicted (seq, readings) pairs into (from_seq, to_seq, readings) ranges of consecutive seqs."""
    ranges: list[tuple[int, int, int]] = []
    for seq, readings in sorted(evicted):
        if ranges and ranges[-1][1] == seq - 1:
            start, _, count = ranges[-1]
            ranges[-1] = (start, seq, count + readings)
        else:
            ranges.append((seq, seq, readings))
    return ranges


class OutboxStore:
    """The synchronous store. Use from one thread at a time."""

    def __init__(self, path: Path, budget_bytes: int) -> None:
        if budget_bytes < 64 * 1024:
            raise OutboxError(f"outbox budget {budget_bytes} bytes is too small: allow at least 64 KiB")
        self.path = path
        self.budget_bytes = budget_bytes
        self.hard_limit_bytes = int(budget_bytes * HARD_LIMIT_FACTOR)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(
                f"cannot open the outbox {path} ({exc}): check the data directory's permissions"
            ) from None
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"the outbox {path} cannot use WAL mode (got {mode}): put it on a local filesystem")
        self._db.execute("PRAGMA synchronous=FULL")
        # Schema and counters appear in one transaction: a reader never sees the tables without their rows.
        self._db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}")
        try:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            for key in _COUNTERS:
                self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, 1 if key == "next_seq" else 0))
            row = self._db.execute(
                "SELECT COALESCE(SUM(length(payload)), 0), COALESCE(MAX(seq), 0) FROM outbox"
            ).fetchone()
            # Never reuse a sequence number, even if meta was somehow behind the table.
            self._db.execute("UPDATE meta SET value = MAX(value, ?) WHERE key = 'next_seq'", (int(row[1]) + 1,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._bytes_used = int(row[0])
        self._next_seq = self._meta("next_seq")

    def _meta(self, key: str) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _bump(self, key: str, amount: int) -> None:
        if amount:
            self._db.execute("UPDATE meta SET value = value + ? WHERE key = ?", (amount, key))

    # -- writing -------------------------------------------------------------------------------------------------

    def append(self, messages: Sequence[PendingMessage], *, now: float | None = None) -> AppendResult:
        """Commit ``messages`` in one transaction, in order of importance then arrival; returns their seqs."""
        now = time.time() if now is None else now
        result = AppendResult(seqs=[None] * len(messages))
        order = sorted(range(len(messages)), key=lambda i: (messages[i].priority, i))
        evicted: list[tuple[int, int]] = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            bytes_used = self._bytes_used
            next_seq = self._next_seq
            accepted = 0
            for index in order:
                message = messages[index]
                if message.origin is not None:
                    origin, origin_seq = message.origin
                    row = self._db.execute("SELECT last_seq FROM origins WHERE origin = ?", (origin,)).fetchone()
                    if row is not None and origin_seq <= int(row[0]):
                        result.duplicates.add(index)
                        continue
                payload = message.encode(next_seq)
                size = len(payload)
                if message.priority is Priority.TELEMETRY and bytes_used + size > self.budget_bytes:
                    bytes_used -= self._thin(bytes_used + size - self.budget_bytes, evicted)
                    if bytes_used + size > self.budget_bytes:
                        result.intake_dropped_readings += message.readings
                        continue
                elif bytes_used + size > self.hard_limit_bytes:
                    raise OutboxFullError(
                        f"outbox {self.path} is past its hard limit ({self.hard_limit_bytes} bytes) with only alarms "
                        "and events left: raise [outbox] budget_mb or restore the uplink"
                    )
                self._db.execute(
                    "INSERT INTO outbox (seq, channel, priority, readings, created, payload) VALUES (?, ?, ?, ?, ?, ?)",
                    (next_seq, message.channel.value, int(message.priority), message.readings, now, payload),
                )
                if message.origin is not None:
                    self._db.execute(
                        "INSERT INTO origins VALUES (?, ?) "
                        "ON CONFLICT (origin) DO UPDATE SET last_seq = excluded.last_seq",
                        message.origin,
                    )
                result.seqs[index] = next_seq
                next_seq += 1
                bytes_used += size
                accepted += message.readings
            if evicted or result.intake_dropped_readings:
                next_seq, bytes_used = self._report_drops(evicted, result, next_seq, bytes_used, now)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (next_seq,))
            self._bump("accepted_readings", accepted)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._bytes_used = bytes_used
        self._next_seq = next_seq
        return result

    def _thin(self, need: int, evicted: list[tuple[int, int]]) -> int:
        """Evict every other stored telemetry message, oldest first, until ``need`` bytes (at least a chunk) are
        free; returns the bytes freed and appends (seq, readings) of each eviction to ``evicted``."""
        target = max(need, int(self.budget_bytes * THIN_CHUNK))
        freed = 0
        while freed < need:
            rows = self._db.execute(
                "SELECT seq, readings, length(payload) FROM outbox WHERE priority = ? ORDER BY seq",
                (int(Priority.TELEMETRY),),
            ).fetchall()
            if not rows:
                break
            victims = rows[1::2] or rows
            chosen: list[tuple[int, int]] = []
            for seq, readings, size in victims:
                chosen.append((seq, readings))
                freed += size
                if freed >= target:
                    break
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _ in chosen])
            evicted.extend(chosen)
        return freed

    def _report_drops(
        self, evicted: list[tuple[int, int]], result: AppendResult, next_seq: int, bytes_used: int, now: float
    ) -> tuple[int, int]:
        """Record the evictions and append one events message reporting them (never evicted itself)."""
        events: list[wire.GapReport | wire.Event] = []
        for start, end, readings in _gap_ranges(evicted):
            self._db.execute("INSERT INTO drops VALUES (?, ?, ?, 'disk_budget', ?)", (start, end, readings, now))
            events.append(wire.GapReport(from_seq=start, to_seq=end, count=readings, reason="disk_budget"))
        if result.intake_dropped_readings:
            events.append(
                wire.Event(
                    kind="intake_drop",
                    at=now,
                    device_id=None,
                    attrs={"readings": result.intake_dropped_readings, "reason": "disk_budget"},
                )
            )
        result.evicted_messages = len(evicted)
        result.evicted_readings = sum(readings for _, readings in evicted)
        self._bump("dropped_messages", result.evicted_messages)
        self._bump("dropped_readings", result.evicted_readings)
        self._bump("intake_dropped_readings", result.intake_dropped_readings)
        log.warning(
            "outbox_thinned",
            evicted_messages=result.evicted_messages,
            evicted_readings=result.evicted_readings,
            intake_dropped_readings=result.intake_dropped_readings,
        )
        for chunk_start in range(0, len(events), wire.MAX_EVENTS):
            chunk = tuple(events[chunk_start : chunk_start + wire.MAX_EVENTS])
            payload = wire.encode_events(wire.EventsMessage(seq=next_seq, sent_at=now, events=chunk))
            self._db.execute(
                "INSERT INTO outbox (seq, channel, priority, readings, created, payload) VALUES (?, ?, ?, 0, ?, ?)",
                (next_seq, wire.Channel.EVENTS.value, int(Priority.EVENT), now, payload),
            )
            next_seq += 1
            bytes_used += len(payload)
        return next_seq, bytes_used

    def delete(self, seqs: Sequence[int]) -> None:
        """Forget messages the broker has acknowledged."""
        if not seqs:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            freed = 0
            for start in range(0, len(seqs), 500):
                chunk = list(seqs[start : start + 500])
                marks = ",".join("?" * len(chunk))
                row = self._db.execute(
                    f"SELECT COALESCE(SUM(length(payload)), 0) FROM outbox WHERE seq IN ({marks})", chunk
                ).fetchone()
                freed += int(row[0])
                self._db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._bytes_used -= freed

    # -- reading -------------------------------------------------------------------------------------------------

    def fetch_after(self, after_seq: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` stored messages with seq > ``after_seq``, in sequence order."""
        rows = self._db.execute(
            "SELECT seq, channel, priority, readings, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [
            StoredMessage(int(seq), wire.Channel(channel), Priority(priority), int(readings), bytes(payload))
            for seq, channel, priority, readings, payload in rows
        ]

    def stats(self) -> OutboxStats:
        depth, readings, oldest = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(readings), 0), MIN(created) FROM outbox"
        ).fetchone()
        return OutboxStats(
            depth_messages=int(depth),
            depth_readings=int(readings),
            bytes_used=self._bytes_used,
            budget_bytes=self.budget_bytes,
            next_seq=self._next_seq,
            oldest_created=None if oldest is None else float(oldest),
            accepted_readings=self._meta("accepted_readings"),
            dropped_messages=self._meta("dropped_messages"),
            dropped_readings=self._meta("dropped_readings"),
            intake_dropped_readings=self._meta("intake_dropped_readings"),
        )

    def drops(self) -> list[tuple[int, int, int, str]]:
        """Every recorded eviction range: (from_seq, to_seq, readings, reason)."""
        rows = self._db.execute("SELECT from_seq, to_seq, readings, reason FROM drops ORDER BY from_seq").fetchall()
        return [(int(a), int(b), int(c), str(d)) for a, b, c, d in rows]

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
