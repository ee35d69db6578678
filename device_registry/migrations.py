"""Schema migrations: numbered steps, applied in order, in one transaction, the same on SQLite and PostgreSQL.

``schema_version`` holds one row per applied step; the schema's version is the highest. :func:`migrate` is
idempotent (a second run applies nothing), serialises concurrent runs (``BEGIN IMMEDIATE`` on SQLite, an advisory
lock on PostgreSQL), and refuses a database whose schema is newer than this software.

Rules for adding a step: append it with the next number and never edit a released one. Step 1 builds the tables
from :mod:`device_registry.schema`; once a later step alters a table, step 1 must keep creating the table's
version-1 shape, so copy that definition into this module before changing ``schema.py``. A test checks that a freshly
migrated database has exactly the tables and columns of ``schema.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from device_registry.database import reading, writing
from device_registry.errors import SchemaMismatch
from device_registry.schema import (
    VERSION_1_TABLES,
    api_tokens,
    command_steps,
    commands,
    northbound_outbox,
    presence,
    schema_version,
)

__all__ = ["HEAD", "MIGRATIONS", "Migration", "MigrationReport", "check_schema", "current_version", "migrate"]

_ADVISORY_LOCK_KEY: Final = 0x6B616B65  # "kake": one lock for every Kakehashi registry migration


@dataclass(frozen=True, slots=True)
class Migration:
    """One step: ``upgrade`` runs inside the migration transaction on a sync connection."""

    version: int
    name: str
    upgrade: Callable[[Connection], None]


def _create_tables(conn: Connection) -> None:
    for table in VERSION_1_TABLES:
        table.create(conn)


def _create_presence_and_api_tokens(conn: Connection) -> None:
    presence.create(conn)
    api_tokens.create(conn)


def _create_northbound_outbox(conn: Connection) -> None:
    northbound_outbox.create(conn)
    # the northbound reads a stored message back by (gateway, seq); step 1 already creates this index on a database
    # made after it was added to schema.py, hence IF NOT EXISTS (the same statement on SQLite and PostgreSQL)
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_readings_gateway_id_seq ON readings (gateway_id, seq)")


def _index_northbound_outbox_by_state_and_id(conn: Connection) -> None:
    # step 5 indexed (state, not_before, id): SQLite then read every pending row and sorted them to find the next few
    # after an id (40 ms a call with 200,000 pending); (state, id) is a range scan. schema.py has the new index, so a
    # database made after it already has it, hence IF EXISTS / IF NOT EXISTS (the same on SQLite and PostgreSQL)
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_northbound_outbox_state_not_before_id")
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_northbound_outbox_state_id ON northbound_outbox (state, id)")


def _create_commands(conn: Connection) -> None:
    commands.create(conn)
    command_steps.create(conn)


_SQLITE_AUDIT_GUARD: Final = (
    "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END",
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END",
)
_POSTGRESQL_AUDIT_GUARD: Final = (
    "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP "
    "USING ERRCODE = 'insufficient_privilege'; END $$",
    "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()",
)


def _guard_audit_log(conn: Connection) -> None:
    statements = _POSTGRESQL_AUDIT_GUARD if conn.dialect.name == "postgresql" else _SQLITE_AUDIT_GUARD
    for statement in statements:
        conn.exec_driver_sql(statement)


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "registry tables", _create_tables),
    Migration(2, "append-only audit log", _guard_audit_log),
    Migration(3, "gateway presence and API tokens", _create_presence_and_api_tokens),
    Migration(4, "commands", _create_commands),
    Migration(5, "northbound outbox", _create_northbound_outbox),
    Migration(6, "northbound outbox indexed by state and id", _index_northbound_outbox_by_state_and_id),
)
HEAD: Final = MIGRATIONS[-1].version
"""The schema version this software needs."""

if [step.version for step in MIGRATIONS] != list(range(1, len(MIGRATIONS) + 1)):
    raise RuntimeError("device_registry.migrations: steps must be numbered 1, 2, 3, ... in order")


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What :func:`migrate` did: the version before and after, and the steps it applied."""

    before: int
    after: int
    applied: tuple[str, ...]


async def _version(conn: AsyncConnection) -> int:
    has_table = await conn.run_sync(lambda sync: sa.inspect(sync).has_table(schema_version.name))
    if not has_table:
        return 0
    found = (await conn.execute(sa.select(sa.func.max(schema_version.c.version)))).scalar_one_or_none()
    return int(found or 0)


def _too_new(version: int) -> SchemaMismatch:
    return SchemaMismatch(
        f"the registry database has schema version {version}, newer than this software knows (up to {HEAD}): "
        "upgrade Kakehashi, or point it at the right database",
        reason="schema_too_new",
    )


async def current_version(engine: AsyncEngine) -> int:
    """The schema version of the database (0 for an empty database)."""
    async with reading(engine) as conn:
        return await _version(conn)


async def migrate(engine: AsyncEngine, *, target: int = HEAD, now: datetime | None = None) -> MigrationReport:
    """Bring the schema to ``target`` (default: the newest), applying the missing steps in one transaction.

    Raises :class:`SchemaMismatch` if the database is already newer than this software.
    """
    if not 0 <= target <= HEAD:
        raise ValueError(f"target schema version must be 0 to {HEAD}, not {target}")
    applied_at = now or datetime.now(UTC)
    async with writing(engine) as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
        await conn.run_sync(lambda sync: schema_version.create(sync, checkfirst=True))
        before = await _version(conn)
        if before > HEAD:
            raise _too_new(before)
        steps: Sequence[Migration] = [step for step in MIGRATIONS if before < step.version <= target]
        for step in steps:
            await conn.run_sync(step.upgrade)
            await conn.execute(
                schema_version.insert().values(version=step.version, name=step.name, applied_at=applied_at)
            )
    return MigrationReport(
        before=before, after=max(before, target), applied=tuple(f"{s.version}: {s.name}" for s in steps)
    )


async def check_schema(engine: AsyncEngine) -> None:
    """Raise :class:`SchemaMismatch` unless the database is exactly at :data:`HEAD`."""
    version = await current_version(engine)
    if version > HEAD:
        raise _too_new(version)
    if version < HEAD:
        raise SchemaMismatch(
            f"the registry database has schema version {version}, older than this software needs ({HEAD}): "
            "run the migrations (Registry.open(url, migrate=True) or device_registry.migrations.migrate)",
            reason="schema_too_old",
        )
