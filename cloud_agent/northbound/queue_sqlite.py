"""A durable :class:`~cloud_agent.northbound.queue.NorthboundSource` in its own SQLite file (WAL, synchronous=FULL),
for the agent until the registry's own queue table exists.

Two tables: ``northbound_queue`` (waiting updates; the head of an entity is its smallest id) and
``northbound_dead`` (dead-lettered updates with their reason). One connection is used from a worker thread under a
lock; every settling call is one transaction, so a crash loses nothing that was queued and, at worst, repeats a
delivery whose settlement did not commit. Which updates are handed out is kept in memory only, as the contract
says: after a restart everything unsettled is fetched again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from cloud_agent.northbound.queue import QueuedUpdate, QueueStats

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS northbound_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    entity_id TEXT NOT NULL,
    document BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_queued_at REAL NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS northbound_queue_entity ON northbound_queue (entity_id, id);
CREATE TABLE IF NOT EXISTS northbound_dead (
    id INTEGER PRIMARY KEY,
    entity_id TEXT NOT NULL,
    document BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    first_queued_at REAL NOT NULL,
    dead_at REAL NOT NULL,
    reason TEXT NOT NULL
);
"""

_HEADS = """
SELECT q.id, q.document, q.attempts, q.first_queued_at
FROM northbound_queue q
JOIN (SELECT min(id) AS id FROM northbound_queue GROUP BY entity_id) h ON h.id = q.id
WHERE q.not_before <= ?
ORDER BY q.id
LIMIT ?
"""


class SqliteQueue:
    """The northbound queue in a SQLite file; :meth:`open` it, :meth:`put` updates, hand it to the pusher."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._handed_out: set[int] = set()

    async def open(self) -> SqliteQueue:
        """Open (creating it if needed) the file; returns self."""

        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            return db

        self._db = await asyncio.to_thread(connect)
        return self

    async def close(self) -> None:
        """Close the file."""
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise RuntimeError("the northbound queue is not open")

        def locked() -> T:
            with self._lock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return result

        return await asyncio.to_thread(locked)

    async def put(self, entities: Sequence[dict[str, Any]]) -> None:
        """Queue entity documents in order, in one transaction."""
        now = time.time()
        rows = [(str(e["id"]), orjson.dumps(e), now) for e in entities]

        def insert(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO northbound_queue (entity_id, document, first_queued_at) VALUES (?, ?, ?)", rows)

        await self._run(insert)

    async def fetch(self, limit: int) -> list[QueuedUpdate]:
        handed_out = frozenset(self._handed_out)

        def select(db: sqlite3.Connection) -> list[QueuedUpdate]:
            rows = db.execute(_HEADS, (time.time(), limit + len(handed_out))).fetchall()
            fresh = [r for r in rows if r[0] not in handed_out][:limit]
            return [QueuedUpdate(r[0], orjson.loads(r[1]), r[2], r[3]) for r in fresh]

        updates = await self._run(select)
        self._handed_out.update(u.id for u in updates)
        return updates

    async def delivered(self, ids: Sequence[int]) -> None:
        rows = [(i,) for i in ids]
        await self._run(lambda db: db.executemany("DELETE FROM northbound_queue WHERE id = ?", rows))
        self._handed_out.difference_update(ids)

    async def retry_later(self, ids: Sequence[int], not_before: float, reason: str) -> None:
        rows = [(not_before, reason, i) for i in ids]
        sql = "UPDATE northbound_queue SET attempts = attempts + 1, not_before = ?, last_error = ? WHERE id = ?"
        await self._run(lambda db: db.executemany(sql, rows))
        self._handed_out.difference_update(ids)

    async def dead_letter(self, ids: Sequence[int], reason: str) -> None:
        now = time.time()
        rows = [(now, reason, i) for i in ids]

        def move(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO northbound_dead (id, entity_id, document, attempts, first_queued_at, dead_at, reason) "
                "SELECT id, entity_id, document, attempts, first_queued_at, ?, ? FROM northbound_queue WHERE id = ?",
                rows,
            )
            db.executemany("DELETE FROM northbound_queue WHERE id = ?", [(i,) for i in ids])

        await self._run(move)
        self._handed_out.difference_update(ids)

    async def stats(self) -> QueueStats:
        def count(db: sqlite3.Connection) -> QueueStats:
            pending, oldest = db.execute("SELECT count(*), min(first_queued_at) FROM northbound_queue").fetchone()
            (dead,) = db.execute("SELECT count(*) FROM northbound_dead").fetchone()
            return QueueStats(int(pending), oldest, int(dead))

        return await self._run(count)

    async def dead_letters(self, limit: int = 100) -> list[tuple[QueuedUpdate, str]]:
        """The most recently dead-lettered updates and their reasons."""

        def select(db: sqlite3.Connection) -> list[tuple[QueuedUpdate, str]]:
            rows = db.execute(
                "SELECT id, document, attempts, first_queued_at, reason FROM northbound_dead ORDER BY dead_at DESC, "
                "id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [(QueuedUpdate(r[0], orjson.loads(r[1]), r[2], r[3]), r[4]) for r in rows]

        return await self._run(select)
