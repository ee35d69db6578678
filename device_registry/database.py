"""Opening the registry database: an async SQLAlchemy engine for SQLite (aiosqlite) or PostgreSQL (asyncpg).

SQLite runs in WAL mode (a new file is switched with ``PRAGMA journal_mode=WAL`` and the mode in the result row is
checked: a file system that cannot do WAL is refused), with ``synchronous=FULL``: the agent acknowledges an MQTT
message only after its transaction commits, and the gateway then deletes its copy, so a commit must survive a power
cut, not only a crash of the process (``NORMAL`` in WAL mode may lose the last commits on power loss). With batched
writes the one fsync per commit costs little. Foreign keys are on, and every write transaction starts with
``BEGIN IMMEDIATE`` so that concurrent writers (other connections or processes) queue on the busy timeout instead of
failing on a read-to-write upgrade; read transactions (:func:`reading`) start ``DEFERRED`` and never block writers.

PostgreSQL runs at its default READ COMMITTED isolation; the registry relies on unique keys, conditional updates
and row locks (``SELECT ... FOR UPDATE``) rather than on serializable transactions. Read transactions are
``READ ONLY``. The pool does not ping connections before use (one round trip per transaction): a connection that a
server restart dropped fails one transaction, which the caller retries (its MQTT message stays unacknowledged).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from device_registry.errors import DatabaseSetupError

__all__ = ["READ_ONLY", "SQLITE_BUSY_TIMEOUT_MS", "Synchronous", "insert_for", "open_registry", "reading", "writing"]

Synchronous = Literal["FULL", "NORMAL"]

SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
"""How long a SQLite writer waits for another writer before failing."""
READ_ONLY: Final = "kakehashi_read_only"
"""Execution option marking a read-only transaction (``BEGIN DEFERRED`` on SQLite, ``READ ONLY`` on PostgreSQL)."""

_DRIVERS: Final = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_URL_HELP: Final = "use sqlite+aiosqlite:///path/to/registry.db or postgresql+asyncpg://user:password@host/dbname"


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def _normalise_url(url: str) -> sa.URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseSetupError(f"registry URL {url!r} is not a database URL: {_URL_HELP}") from None
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        raise DatabaseSetupError(f"registry URL {url!r} names {backend}, which the registry cannot use: {_URL_HELP}")
    driver = _DRIVERS[backend]
    if parsed.drivername not in (backend, driver):
        raise DatabaseSetupError(f"registry URL {url!r} uses driver {parsed.drivername!r}: {_URL_HELP}")
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise DatabaseSetupError(f"registry URL {url!r} names no database file: the registry needs a file (WAL)")
    return parsed.set(drivername=driver)


def _journal_mode(cursor: Any, statement: str) -> str:
    cursor.execute(statement)
    row = cursor.fetchone()
    return str(row[0]).lower() if row else "unknown"


def _switch_to_wal(cursor: Any) -> str:
    """Switch a new database to WAL and return the mode the result row reports.

    When several connections open a new file at once, the first one switches it; the others then fail at once with
    "database is locked" (a connection in WAL mode keeps a shared lock that forbids changing the mode, and SQLite does
    not wait on the busy timeout for it). The file is in WAL all the same, as a fresh read of its header shows.
    """
    try:
        return _journal_mode(cursor, "PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError:
        cursor.execute("SELECT count(*) FROM sqlite_master")  # read the file header again, then ask
        cursor.fetchall()
        return _journal_mode(cursor, "PRAGMA journal_mode")


def _sqlite_connect_hook(synchronous: Synchronous) -> Callable[[DBAPIConnection, ConnectionPoolEntry], None]:
    def on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        # Take transaction control away from the driver: the "begin" hook below emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            mode = _journal_mode(cursor, "PRAGMA journal_mode")
            if mode != "wal":  # a new database file: switch it (WAL is then a property of the file)
                mode = _switch_to_wal(cursor)
            if mode != "wal":
                raise DatabaseSetupError(
                    f"SQLite could not switch the registry database to WAL (journal mode is {mode!r}): "
                    "put the database file on a local file system"
                )
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return on_connect


def _sqlite_begin(conn: Connection) -> None:
    mode = "DEFERRED" if conn.get_execution_options().get(READ_ONLY) else "IMMEDIATE"
    conn.exec_driver_sql(f"BEGIN {mode}")


def open_registry(url: str, *, synchronous: Synchronous = "FULL", pool_size: int = 5) -> AsyncEngine:
    """An async engine for the registry at ``url`` (SQLite or PostgreSQL), configured as the module says.

    Plain ``sqlite:///...`` and ``postgresql://...`` URLs get the async drivers. ``synchronous`` applies to SQLite
    only (see the module docstring for why ``FULL`` is the default). The schema is not touched: see
    :func:`device_registry.migrations.migrate`.
    """
    parsed = _normalise_url(url)
    options: dict[str, Any] = {"json_serializer": _json_dumps, "json_deserializer": orjson.loads}
    if parsed.get_backend_name() == "postgresql":
        options["pool_size"] = pool_size
    else:
        # Every transaction here ends in COMMIT or ROLLBACK (writing/reading, engine.begin), so the pool's own
        # reset would be a second ROLLBACK: one more trip to aiosqlite's thread per transaction, for nothing.
        options["pool_reset_on_return"] = None
    engine = create_async_engine(parsed, **options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_connect_hook(synchronous))
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


@asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction: committed when the block ends, rolled back if it raises."""
    async with engine.begin() as conn:
        yield conn


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction (one consistent snapshot on both databases)."""
    async with engine.connect() as conn:
        options: dict[str, Any] = {READ_ONLY: True}
        if engine.dialect.name == "postgresql":
            options["postgresql_readonly"] = True
        await conn.execution_options(**options)
        async with conn.begin():
            yield conn


def insert_for(conn: AsyncConnection | Connection) -> Callable[[sa.Table], postgresql.Insert | sqlite.Insert]:
    """The dialect's ``INSERT`` construct, which has ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
