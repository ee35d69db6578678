"""The command journal: which commands this gateway has taken on, and how each one ended, durably.

A command is *claimed* (a row in state ``executing``) before anything is done for it, and *finished* (state ``done``
with its final acknowledgement: status, reason, result, time) when it ends. Because a claim is committed before the
command runs, the same command delivered again — a broker redelivery, an agent's resend, a restart mid-command — is
recognised and never runs twice:

* a duplicate of a finished command is answered with its recorded final acknowledgement;
* a duplicate of a command still executing is ignored (its final acknowledgement will follow);
* a command found ``executing`` when the journal is opened was cut off (power cut, kill -9) somewhere between its
  claim and its end: it is finished as ``failed`` with reason ``interrupted`` and never re-run, because nobody can
  tell whether the device acted.

Commands are matched by id and, failing that, by idempotency key (a resend under a new id). The journal is its own
SQLite file (``commands.db`` in the gateway's data directory), in WAL mode with ``synchronous=FULL`` so that a
claim survives a power cut the moment it is committed. It is separate from the outbox on purpose: the outbox store
has its own thread, budget and eviction, and deletes what was delivered, while the journal keeps every entry until
it is pruned by age (see :meth:`JournalStore.prune`); the two never need one transaction, because a final
acknowledgement that did not reach the outbox is found on the next start (``acked = 0``) and sent then.

:class:`JournalStore` is the synchronous store (one connection, one thread); :class:`CommandJournal` runs it on a
dedicated worker thread for the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import orjson

from kakehashi import wire

__all__ = ["Claim", "CommandJournal", "JournalEntry", "JournalStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL,
    device TEXT NOT NULL,
    name TEXT NOT NULL,
    deadline REAL NOT NULL,
    received_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('executing', 'done')),
    status TEXT,
    reason TEXT,
    result TEXT,
    finished_at REAL,
    acked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS commands_key ON commands (idempotency_key);
CREATE INDEX IF NOT EXISTS commands_state ON commands (state, acked);
CREATE INDEX IF NOT EXISTS commands_deadline ON commands (deadline);
"""

INTERRUPTED = "interrupted"
"""The reason code of a command found executing when the journal was opened."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One journalled command; ``ack`` is its final acknowledgement once it is done, else ``None``."""

    command_id: str
    idempotency_key: str
    device_id: str
    name: str
    deadline: float
    received_at: float
    ack: wire.CommandAck | None

    @property
    def executing(self) -> bool:
        return self.ack is None


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of :meth:`JournalStore.claim`: ``earlier`` is ``None`` if the command is new and now claimed,
    else the entry it duplicates (same id, or same idempotency key under another id)."""

    earlier: JournalEntry | None

    @property
    def is_new(self) -> bool:
        return self.earlier is None


_COLUMNS = "id, idempotency_key, device, name, deadline, received_at, status, reason, result, finished_at"


def _entry(row: tuple[object, ...]) -> JournalEntry:
    cid, key, device, name, deadline, received, status, reason, result, finished = row
    ack = None
    if status is not None:
        ack = wire.CommandAck(
            command_id=str(cid),
            status=wire.AckStatus(str(status)),
            at=float(finished),  # type: ignore[arg-type]
            reason=None if reason is None else str(reason),
            result=None if result is None else orjson.loads(str(result)),
        )
    return JournalEntry(str(cid), str(key), str(device), str(name), float(deadline), float(received), ack)  # type: ignore[arg-type]


class JournalStore:
    """The journal's SQLite file; use from one thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def claim(self, command: wire.CommandMessage, now: float) -> Claim:
        """Claim ``command`` for execution unless it (or its idempotency key) is journalled already."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(f"SELECT {_COLUMNS} FROM commands WHERE id = ?", (command.command_id,)).fetchone()
            if row is None:
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM commands WHERE idempotency_key = ? ORDER BY received_at LIMIT 1",
                    (command.idempotency_key,),
                ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO commands (id, idempotency_key, device, name, deadline, received_at, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'executing')",
                    (
                        command.command_id,
                        command.idempotency_key,
                        command.device_id,
                        command.name,
                        command.deadline,
                        now,
                    ),
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return Claim(None if row is None else _entry(row))

    def finish(self, ack: wire.CommandAck) -> None:
        """Record the final acknowledgement of a claimed command."""
        result = None if ack.result is None else orjson.dumps(ack.result).decode()
        self._db.execute(
            "UPDATE commands SET state = 'done', status = ?, reason = ?, result = ?, finished_at = ?, acked = 0 "
            "WHERE id = ?",
            (ack.status.value, ack.reason, result, ack.at, ack.command_id),
        )

    def mark_acked(self, command_id: str) -> None:
        """The final acknowledgement of ``command_id`` is committed to the outbox."""
        self._db.execute("UPDATE commands SET acked = 1 WHERE id = ?", (command_id,))

    def interrupt(self, now: float) -> int:
        """Finish every command still ``executing`` (cut off by a crash) as failed ``interrupted``; returns how
        many. Called once when the journal is opened, before any new command is claimed."""
        cursor = self._db.execute(
            "UPDATE commands SET state = 'done', status = ?, reason = ?, finished_at = ?, acked = 0 "
            "WHERE state = 'executing'",
            (
                wire.AckStatus.FAILED.value,
                f"{INTERRUPTED}: the gateway stopped while this command was executing; it was not run again "
                "because the device may or may not have acted (check its state)",
                now,
            ),
        )
        return cursor.rowcount

    def unacked(self) -> list[JournalEntry]:
        """Finished commands whose final acknowledgement has not been committed to the outbox yet."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM commands WHERE state = 'done' AND acked = 0 ORDER BY finished_at"
        ).fetchall()
        return [_entry(row) for row in rows]

    def get(self, command_id: str) -> JournalEntry | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM commands WHERE id = ?", (command_id,)).fetchone()
        return None if row is None else _entry(row)

    def prune(self, before: float) -> int:
        """Delete finished, acknowledged entries whose deadline is older than ``before``; returns how many.

        Pruning by deadline keeps at-most-once intact: a redelivery of a pruned command arrives after its deadline
        and is answered ``expired`` without running."""
        cursor = self._db.execute("DELETE FROM commands WHERE state = 'done' AND acked = 1 AND deadline < ?", (before,))
        return cursor.rowcount

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM commands").fetchone()[0])

    def close(self) -> None:
        self._db.close()


class CommandJournal:
    """Asynchronous facade over :class:`JournalStore`, on one dedicated worker thread."""

    def __init__(self, store: JournalStore, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor

    @classmethod
    async def open(cls, path: Path) -> CommandJournal:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commands")
        try:
            store = await asyncio.get_running_loop().run_in_executor(executor, JournalStore, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def claim(self, command: wire.CommandMessage, now: float) -> Claim:
        return await self._call(lambda: self._store.claim(command, now))

    async def finish(self, ack: wire.CommandAck) -> None:
        await self._call(lambda: self._store.finish(ack))

    async def mark_acked(self, command_id: str) -> None:
        await self._call(lambda: self._store.mark_acked(command_id))

    async def interrupt(self, now: float) -> int:
        return await self._call(lambda: self._store.interrupt(now))

    async def unacked(self) -> list[JournalEntry]:
        return await self._call(self._store.unacked)

    async def get(self, command_id: str) -> JournalEntry | None:
        return await self._call(lambda: self._store.get(command_id))

    async def prune(self, before: float) -> int:
        return await self._call(lambda: self._store.prune(before))

    async def close(self) -> None:
        try:
            await self._call(self._store.close)
        finally:
            self._executor.shutdown(wait=True)
