"""Database fixtures for the registry tests: a throw-away PostgreSQL cluster, and fresh registries on both databases.

The cluster is started once per test session (``initdb`` + ``pg_ctl``) in a temporary directory (in /dev/shm when
there is room), on a port the OS chose, as an ordinary child process (as user ``postgres`` when the tests run as
root, since PostgreSQL refuses to run as root), and stopped and deleted when the session ends. It runs with
``fsync=off``: it is thrown away. A template database is migrated once; each test gets its own copy
(``CREATE DATABASE ... TEMPLATE``) and drops it afterwards.

Without the PostgreSQL server binaries the fixtures fail (never skip) with the command that installs them.

Test modules use the fixtures by importing them under their function names, as explicit re-exports:
``from tests.postgres import registry_fixture as registry_fixture`` gives the test functions a ``registry``.
The builders at the end (an organisation, a provisioned gateway, a bound device, a watch tag, a reading) are shared
by the registry test modules.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.pg_cluster import PostgresCluster as _Cluster
from bench.pg_cluster import PostgresUnavailable
from device_registry import WATCH_TAG, NotFound, Registry, State
from device_registry.database import open_registry
from device_registry.migrations import migrate
from kakehashi import wire

TEMPLATE = "registry_template"
BACKENDS = ("sqlite", "postgresql")


class PostgresCluster(_Cluster):
    """The session's cluster: a migrated template database, copied for each test."""

    async def create_registry_database(self, *, migrated: bool) -> str:
        """A new database, empty or a copy of the migrated template."""
        if migrated and not self.template_ready:
            await self.create_database(TEMPLATE)
            engine = open_registry(self.url(TEMPLATE))
            try:
                await migrate(engine)
            finally:
                await engine.dispose()
            self.template_ready = True
        return await self.create_database(
            f"test_{os.getpid()}_{next(self._names)}", template=TEMPLATE if migrated else None
        )


_CLUSTER: PostgresCluster | None = None


def postgres_cluster(config: pytest.Config) -> PostgresCluster:
    """The session's cluster, started on first use and stopped when the session ends (one per process)."""
    global _CLUSTER
    if _CLUSTER is None:
        try:
            _CLUSTER = PostgresCluster.start()
        except PostgresUnavailable as exc:
            pytest.fail(exc.message, pytrace=False)
        config.add_cleanup(_stop_cluster)
    return _CLUSTER


def _stop_cluster() -> None:
    global _CLUSTER
    if _CLUSTER is not None:
        _CLUSTER.stop()
        _CLUSTER = None


class FakeClock:
    """A clock the test moves by hand; starts at a fixed aware UTC time."""

    def __init__(self, start: datetime = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


@pytest.fixture(name="clock")
def clock_fixture() -> FakeClock:
    return FakeClock()


async def _fresh_url(request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
        return
    cluster = postgres_cluster(request.config)
    name = await cluster.create_registry_database(migrated=migrated)
    try:
        yield cluster.url(name)
    finally:
        await cluster.drop_database(name)


@pytest.fixture(name="database_url", params=BACKENDS)
async def database_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a fresh, empty database on each backend."""
    async for url in _fresh_url(request, tmp_path, migrated=False):
        yield url


@pytest.fixture(name="registry", params=BACKENDS)
async def registry_fixture(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Registry]:
    """A registry on a fresh, migrated database on each backend, with the test's :class:`FakeClock`."""
    async for url in _fresh_url(request, tmp_path, migrated=True):
        opened = await Registry.open(url, clock=clock)
        try:
            yield opened
        finally:
            await opened.close()


# ----------------------------------------------------------------------------------------------------------------
# Builders shared by the registry tests

ORG = "kakogawa"
_serials = itertools.count(0x1000)


def reading(
    device_id: str, value: float | str | bool | bytes = 1.0, *, quantity: str = "level", at: float = 1.8e9
) -> wire.Reading:
    """A reading of ``device_id`` observed at ``at`` (epoch seconds)."""
    return wire.Reading(device_id, quantity, value, "m", at, wire.ClockQuality.SYNCED)


async def organisation(registry: Registry, organisation_id: str = ORG) -> str:
    try:
        await registry.get_organisation(organisation_id)
    except NotFound:
        await registry.create_organisation(organisation_id, f"{organisation_id} city", actor="admin")
    return organisation_id


async def provisioned_gateway(registry: Registry, clock: FakeClock, gateway_id: str = "gw-0001", org: str = ORG) -> str:
    """A gateway with an active certificate (so provisioned); its first message makes it active."""
    await organisation(registry, org)
    await registry.create_gateway(gateway_id, org, actor="admin")
    serial = format(next(_serials), "x")
    await registry.record_certificate(gateway_id, serial, clock.now + timedelta(days=365), actor="pki")
    return gateway_id


async def bound_device(
    registry: Registry, device_id: str, gateway_id: str, *, kind: str = "water_level", org: str = ORG
) -> str:
    """A device bound to ``gateway_id`` (so provisioned)."""
    await organisation(registry, org)
    await registry.create_device(device_id, org, kind, actor="admin", gateway_id=gateway_id)
    return device_id


async def watch_tag(
    registry: Registry, tag_id: str, *, consent: bool, org: str = ORG, retention: timedelta = timedelta(days=30)
) -> str:
    """A watch tag with the given consent; provisioned when consent is given."""
    await organisation(registry, org)
    await registry.create_device(tag_id, org, WATCH_TAG, actor="admin", consent=consent, retention=retention)
    if consent:
        await registry.transition(tag_id, State.PROVISIONED, "admin", "consent form signed")
    return tag_id
