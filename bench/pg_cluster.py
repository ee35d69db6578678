"""A throw-away PostgreSQL cluster started as an ordinary child process, for tests and benchmarks.

``initdb`` + ``pg_ctl`` in a temporary directory (in /dev/shm when there is room), on a port the OS chose, as user
``postgres`` when running as root (PostgreSQL refuses to run as root). ``durable=False`` turns fsync off (tests: the
data is thrown away); benchmarks keep PostgreSQL's defaults so that a commit means what it means in production.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from kakehashi.errors import KakehashiError

INSTALL_HINT = "PostgreSQL server binaries (initdb, pg_ctl) not found: run `sudo apt-get install -y postgresql`"


class PostgresUnavailable(KakehashiError):
    """PostgreSQL cannot be started here; the message says why and what to install or fix."""

    reason = "postgres_unavailable"


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
    durable: bool = False
    run_as: dict[str, Any] = field(default_factory=dict)
    template_ready: bool = False
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, **self.run_as)

    def _options(self) -> str:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        return options

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        return self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", self._options(),
            "-l", str(self.root / "postgres.log"), "-w", "-t", "30", "start",
        )  # fmt: skip

    @classmethod
    def start(cls, *, durable: bool = False, scratch: str | None = None) -> PostgresCluster:
        """Create and start a cluster; raises :class:`PostgresUnavailable` saying why it could not."""
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable(INSTALL_HINT)
        root = Path(tempfile.mkdtemp(prefix="kakehashi-pg-", dir=scratch or _scratch_dir()))
        run_as: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(root, ignore_errors=True)
                raise PostgresUnavailable(
                    "running as root and there is no user 'postgres' to run PostgreSQL as"
                ) from None
            os.chown(root, account.pw_uid, account.pw_gid)
            run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "cwd": root}
        cluster = cls(bindir=bindir, root=root, durable=durable, run_as=run_as)
        initdb = cluster._run(
            str(bindir / "initdb"), "-D", str(cluster.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        if initdb.returncode != 0:
            cluster.remove()
            raise PostgresUnavailable(f"initdb failed: {initdb.stderr.strip()}")
        started = None
        for _attempt in range(5):  # another program may take the port between the probe and the start
            cluster.port = _free_port()
            started = cluster._pg_ctl_start()
            if started.returncode == 0:
                return cluster
        log = (root / "postgres.log").read_text(errors="replace")[-2000:]
        cluster.remove()
        raise PostgresUnavailable(f"PostgreSQL did not start: {started.stderr.strip() if started else ''}\n{log}")

    def halt(self) -> None:
        """Stop the server the hard way (as a crash would), keeping its data for :meth:`resume`."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def resume(self) -> None:
        """Start the halted server again on the same port."""
        started = self._pg_ctl_start()
        if started.returncode != 0:
            raise PostgresUnavailable(f"PostgreSQL did not restart: {started.stderr.strip()}")

    def stop(self) -> None:
        self.halt()
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    async def admin(self, statement: str) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres", database="postgres")
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def create_database(self, name: str | None = None, *, template: str | None = None) -> str:
        """A new empty database (or a copy of ``template``); returns its name."""
        name = name or f"db_{os.getpid()}_{next(self._names)}"
        copy = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
        await self.admin(f"CREATE DATABASE {name}{copy}")
        return name

    async def drop_database(self, name: str) -> None:
        await self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
