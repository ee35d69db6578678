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
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from device_registry import WATCH_TAG, NotFound, Registry, State
from device_registry.database import open_registry
from device_registry.migrations import migrate
from kakehashi import wire

INSTALL_HINT = "PostgreSQL server binaries (initdb, pg_ctl) not found: run `sudo apt-get install -y postgresql`"
TEMPLATE = "registry_template"
BACKENDS = ("sqlite", "postgresql")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $KAKEHASHI_PG_BINDIR, the PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    candidates: list[Path] = []
    if configured := os.environ.get("KAKEHASHI_PG_BINDIR"):
        candidates.append(Path(configured))
    if on_path := shutil.which("pg_ctl"):
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


def _scratch_dir() -> str | None:
    """Memory-backed /dev/shm when there is room (creating a database copies ~300 files: 0.3 s on this VM's disk, 0.01 s
    in memory), else the default temporary directory."""
    shm = Path("/dev/shm")
    try:
        roomy = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2**30
    except OSError:
        roomy = False
    return str(shm) if roomy else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresCluster:
    """A running throw-away cluster; ``url(name)`` is the registry URL of one of its databases."""

    bindir: Path
    root: Path
    port: int = 0
    run_as: dict[str, Any] = field(default_factory=dict)
    template_ready: bool = False
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, **self.run_as)

    @classmethod
    def start(cls) -> PostgresCluster:
        bindir = find_bindir()
        if bindir is None:
            pytest.fail(INSTALL_HINT, pytrace=False)
        root = Path(tempfile.mkdtemp(prefix="kakehashi-pg-", dir=_scratch_dir()))
        run_as: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root and there is no user 'postgres' to run PostgreSQL as", pytrace=False)
            os.chown(root, account.pw_uid, account.pw_gid)
            run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "cwd": root}
        cluster = cls(bindir=bindir, root=root, run_as=run_as)
        initdb = cluster._run(
            str(bindir / "initdb"), "-D", str(cluster.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        if initdb.returncode != 0:
            cluster.remove()
            pytest.fail(f"initdb failed: {initdb.stderr.strip()}", pytrace=False)
        for _attempt in range(5):  # another program may take the port between the probe and the start
            cluster.port = _free_port()
            options = (
                f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            started = cluster._run(
                str(bindir / "pg_ctl"), "-D", str(cluster.data), "-o", options, "-l", str(root / "postgres.log"),
                "-w", "-t", "30", "start",
            )  # fmt: skip
            if started.returncode == 0:
                return cluster
        log = (root / "postgres.log").read_text(errors="replace")[-2000:]
        cluster.remove()
        pytest.fail(f"PostgreSQL did not start: {started.stderr.strip()}\n{log}", pytrace=False)

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.remove()

    def halt(self) -> None:
        """Stop the server the hard way (as a crash would), keeping its data for :meth:`resume`."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        """Start the halted server again on the same port."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        started = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "postgres.log"),
            "-w", "-t", "30", "start",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def _admin(self, statement: str) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres", database="postgres")
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def create_database(self, *, migrated: bool) -> str:
        """A new database, empty or a copy of the migrated template."""
        if migrated and not self.template_ready:
            await self._admin(f"CREATE DATABASE {TEMPLATE}")
            engine = open_registry(self.url(TEMPLATE))
            try:
                await migrate(engine)
            finally:
                await engine.dispose()
            self.template_ready = True
        name = f"test_{os.getpid()}_{next(self._names)}"
        template = f" TEMPLATE {TEMPLATE} STRATEGY FILE_COPY" if migrated else ""
        await self._admin(f"CREATE DATABASE {name}{template}")
        return name

    async def drop_database(self, name: str) -> None:
        await self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_CLUSTER: PostgresCluster | None = None


def postgres_cluster(config: pytest.Config) -> PostgresCluster:
    """The session's cluster, started on first use and stopped when the session ends (one per process)."""
    global _CLUSTER
    if _CLUSTER is None:
        _CLUSTER = PostgresCluster.start()
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
    name = await cluster.create_database(migrated=migrated)
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
