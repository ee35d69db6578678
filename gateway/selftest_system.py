"""Self-test of the machine the gateway runs on: clock synchronised, disk for the outbox budget, outbox health.

* **Clock.** ``timedatectl show -p NTPSynchronized --value`` where systemd answers; elsewhere the kernel's own
  flag through ``adjtimex(2)`` (``TIME_ERROR`` means no NTP daemon has disciplined the clock, reported as a warning
  because in a container it is the host's clock); ``unknown`` when neither can be asked.
* **Disk.** Free space on the data directory's file system against what the outbox may still grow to.
* **Outbox.** Opened read-only (the running gateway keeps writing): depth, oldest message age, drops and gaps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Final

from gateway.config import GatewayConfig
from gateway.selftest_model import Check, Status

__all__ = ["clock_check", "disk_check", "outbox_check"]

TIME_ERROR: Final = 5  # adjtimex(2): the clock is not synchronised
STALE_OUTBOX_S: Final = 3600.0
MB: Final = 1024 * 1024


def _timedatectl() -> bool | None:
    if shutil.which("timedatectl") is None:
        return None
    try:
        result = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    answer = result.stdout.strip()
    if result.returncode != 0 or answer not in ("yes", "no"):
        return None
    return answer == "yes"


def _adjtimex() -> int | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        buffer = ctypes.create_string_buffer(512)  # struct timex is 208 bytes on 64-bit Linux; modes = 0: read only
        state = int(libc.adjtimex(buffer))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state


def clock_check() -> Check:
    name = "clock synchronised"
    synced = _timedatectl()
    if synced is True:
        return Check.ok(name, "NTPSynchronized=yes (timedatectl)")
    if synced is False:
        return Check.failed(
            name,
            "NTPSynchronized=no (timedatectl): readings are flagged unsynced",
            "check the network and NTP: `timedatectl timesync-status`, `systemctl restart systemd-timesyncd`",
        )
    state = _adjtimex()
    if state is None:
        return Check(name, Status.UNKNOWN, "neither timedatectl nor adjtimex answered", "check with `chronyc tracking`")
    if state == TIME_ERROR:
        return Check.warning(
            name,
            "the kernel reports its clock unsynchronised (adjtimex) and timedatectl is not available",
            "run an NTP client (systemd-timesyncd or chrony) and check with `chronyc tracking` or `timedatectl`",
        )
    return Check.ok(name, f"the kernel reports its clock synchronised (adjtimex state {state})")


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _outbox_bytes(config: GatewayConfig) -> int:
    path = config.outbox_path
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def disk_check(config: GatewayConfig) -> Check:
    name = "disk budget"
    where = _existing(config.gateway.data_dir)
    free = shutil.disk_usage(where).free
    budget = config.outbox.budget_bytes
    need = max(budget - _outbox_bytes(config), 0)
    detail = f"{free / MB:.0f} MB free on {where}; the outbox may grow by {need / MB:.0f} MB more (budget_mb)"
    if free < need:
        return Check.failed(
            name, detail, f"free disk space on {where}, or lower [outbox] budget_mb to below {free / MB:.0f}"
        )
    return Check.ok(name, detail)


def outbox_check(config: GatewayConfig) -> Check:
    name = "outbox health"
    path = config.outbox_path
    if not path.exists():
        return Check.ok(name, f"no outbox yet at {path} (the gateway has not run with this config)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            depth, readings, oldest, used = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(readings), 0), MIN(created), COALESCE(SUM(LENGTH(payload)), 0) "
                "FROM outbox"
            ).fetchone()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            gaps = db.execute("SELECT COUNT(*) FROM drops").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as exc:
        return Check.failed(
            name, f"cannot read {path}: {exc}", "check the file's owner and permissions (the gateway user owns it)"
        )
    age = None if oldest is None else time.time() - float(oldest)
    dropped = int(meta.get("dropped_readings", 0)) + int(meta.get("intake_dropped_readings", 0))
    detail = (
        f"{depth} messages ({readings} readings) waiting, oldest "
        f"{'-' if age is None else f'{age:.0f} s'} old, {used / MB:.1f} of {config.outbox.budget_mb:g} MB, "
        f"{dropped} readings dropped in {gaps} gaps"
    )
    if age is not None and age > STALE_OUTBOX_S:
        return Check.warning(
            name, detail, "messages are not leaving: check the broker check above and `kakehashi gateway outbox`"
        )
    if dropped:
        return Check.warning(
            name,
            detail,
            "readings were evicted for the disk budget: raise [outbox] budget_mb or keep the uplink up "
            "(gaps: `kakehashi gateway outbox`)",
        )
    return Check.ok(name, detail)
