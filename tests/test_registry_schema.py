"""Schema: migrations (idempotent, stepwise, concurrent, refusing a newer schema), the append-only audit log enforced
by the database, and the SQLite connection settings."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from device_registry import HEAD, DatabaseSetupError, Registry, SchemaMismatch, migrate, open_registry
from device_registry.migrations import MIGRATIONS, check_schema, current_version
from device_registry.schema import metadata, schema_version
from tests.postgres import FakeClock
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import database_url_fixture as database_url_fixture
from tests.postgres import registry_fixture as registry_fixture


async def test_migrate_is_idempotent(database_url: str) -> None:
    engine = open_registry(database_url)
    try:
        assert await current_version(engine) == 0
        first = await migrate(engine)
        assert (first.before, first.after) == (0, HEAD)
        assert first.applied == tuple(f"{m.version}: {m.name}" for m in MIGRATIONS)
        again = await migrate(engine)
        assert (again.before, again.after, again.applied) == (HEAD, HEAD, ())
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(schema_version.c.version).order_by(schema_version.c.version))).all()
        assert [row.version for row in rows] == list(range(1, HEAD + 1))
        await check_schema(engine)
    finally:
        await engine.dispose()


async def test_migrate_applies_only_the_missing_steps(database_url: str) -> None:
    engine = open_registry(database_url)
    try:
        assert (await migrate(engine, target=1)).applied == ("1: registry tables",)
        with pytest.raises(SchemaMismatch) as old:
            await check_schema(engine)
        assert old.value.reason == "schema_too_old"
        assert (await migrate(engine)).applied == tuple(f"{m.version}: {m.name}" for m in MIGRATIONS[1:])
    finally:
        await engine.dispose()


async def test_concurrent_migrations_apply_each_step_once(database_url: str) -> None:
    engines = [open_registry(database_url) for _ in range(3)]
    try:
        reports = await asyncio.gather(*(migrate(engine) for engine in engines))
        assert sorted(len(report.applied) for report in reports) == [0, 0, HEAD]
        assert await current_version(engines[0]) == HEAD
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_newer_schema_is_refused(database_url: str, clock: FakeClock) -> None:
    engine = open_registry(database_url)
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.execute(schema_version.insert().values(version=HEAD + 1, name="future", applied_at=clock.now))
        with pytest.raises(SchemaMismatch) as refused:
            await migrate(engine)
        assert refused.value.reason == "schema_too_new"
        assert refused.value.message == (
            f"the registry database has schema version {HEAD + 1}, newer than this software knows (up to {HEAD}): "
            "upgrade Kakehashi, or point it at the right database"
        )
        with pytest.raises(SchemaMismatch, match="newer than this software"):
            await Registry.open(database_url, migrate=False)
    finally:
        await engine.dispose()


def _shape(conn: Connection) -> dict[str, Any]:
    inspector = sa.inspect(conn)
    return {
        name: (
            {column["name"]: column["nullable"] for column in inspector.get_columns(name)},
            sorted(index["name"] for index in inspector.get_indexes(name)),
        )
        for name in inspector.get_table_names()
    }


async def test_migrated_database_matches_the_schema_module(registry: Registry) -> None:
    async with registry.engine.connect() as conn:
        shape = await conn.run_sync(_shape)
    expected = {
        table.name: (
            {column.name: column.nullable for column in table.columns},
            sorted(str(index.name) for index in table.indexes),
        )
        for table in metadata.sorted_tables
    }
    assert shape == expected


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_log SET reason = 'nothing happened'", "DELETE FROM audit_log", "DELETE FROM audit_log WHERE id = 1"],
)
async def test_the_database_refuses_to_change_audit_entries(registry: Registry, statement: str) -> None:
    await registry.create_organisation("kakogawa", "Kakogawa City", actor="admin")
    with pytest.raises(sa.exc.DBAPIError, match="audit_log is append-only"):
        async with registry.engine.begin() as conn:
            await conn.exec_driver_sql(statement)
    (entry,) = await registry.audit()
    assert (entry.actor, entry.action, entry.reason) == (
        "admin",
        "organisation.created",
        "organisation kakogawa created",
    )


async def test_postgresql_also_refuses_truncate(registry: Registry) -> None:
    if registry.engine.dialect.name != "postgresql":
        return  # SQLite has no TRUNCATE (its DELETE without WHERE is refused above)
    with pytest.raises(sa.exc.DBAPIError, match="audit_log is append-only: TRUNCATE refused"):
        async with registry.engine.begin() as conn:
            await conn.exec_driver_sql("TRUNCATE audit_log")


async def test_sqlite_runs_in_wal_with_full_sync_and_foreign_keys(registry: Registry) -> None:
    if registry.engine.dialect.name != "sqlite":
        return
    async with registry.engine.connect() as conn:
        settings = [
            (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar_one()
            for name in ("journal_mode", "synchronous", "foreign_keys")
        ]
    assert settings == ["wal", 2, 1]  # synchronous 2 = FULL


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql+aiomysql://db/registry", "names mysql, which the registry cannot use"),
        ("sqlite+pysqlite:///registry.db", "uses driver 'sqlite+pysqlite'"),
        ("sqlite+aiosqlite://", "names no database file"),
        ("sqlite+aiosqlite:///:memory:", "names no database file"),
        ("registry.db", "is not a database URL"),
    ],
)
def test_unusable_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(DatabaseSetupError, match=re.escape(message)):
        open_registry(url)


async def test_step_6_replaces_the_northbound_outbox_index(database_url: str) -> None:
    engine = open_registry(database_url)
    try:
        await migrate(engine, target=5)
        async with engine.begin() as conn:  # the index step 5 made before schema.py changed
            await conn.exec_driver_sql("DROP INDEX ix_northbound_outbox_state_id")
            await conn.exec_driver_sql(
                "CREATE INDEX ix_northbound_outbox_state_not_before_id ON northbound_outbox (state, not_before, id)"
            )
        assert (await migrate(engine)).applied == ("6: northbound outbox indexed by state and id",)
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: {i["name"] for i in sa.inspect(c).get_indexes("northbound_outbox")})
        assert names == {"ix_northbound_outbox_state_id"}
    finally:
        await engine.dispose()
