"""Child processes of the comparison: the Modbus simulator, a gateway under test, and what they cost.

Every child is started with a hard time bound where it has one (``--duration``) and a parent-death signal (it gets
SIGTERM if the benchmark dies), stopped by its own pid (a polite signal, then SIGKILL), and measured from ``/proc``:
peak resident memory over its process tree and CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SIM_PROFILE = "bench-seq"
_LISTENING = re.compile(r"listening on tcp (\S+):(\d+)")
_PR_SET_PDEATHSIG = 1


def child_setup(cpu: int | None) -> Callable[[], None]:
    """A ``preexec_fn`` for benchmark children: pin to ``cpu`` (when given) and get SIGTERM if this process dies, so
    that no child outlives an interrupted benchmark."""
    libc_name = ctypes.util.find_library("c")

    def setup() -> None:
        if cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {cpu})
        if libc_name:
            ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return setup


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    found = [pid]
    index = 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            found.extend(int(child) for child in children if int(child) not in found)
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of ``pid`` and its descendants, summed, in MB; None when it is gone."""
    total = sum(_status_kb(p, "VmHWM:") for p in process_tree(pid))
    return round(total / 1024, 1) if total else None


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User + system CPU time used so far by ``pid`` and (with ``tree``) its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all CPUs: user, nice, system, irq, softirq, steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def stop_process(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM, grace_s: float = 15.0) -> int:
    """Stop one child by its pid: ``sig``, then SIGKILL after ``grace_s``; returns its exit status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            return process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    return process.wait()


@dataclass
class SimulatorProcess:
    """``python -m hw.modbus.simulator`` serving ``devices`` bench-seq units over Modbus TCP on loopback."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM, 10.0)


def _spawn_simulator(devices: int, workdir: Path, max_duration_s: float, cpu: int | None) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "hw.modbus.simulator", "--tcp", "127.0.0.1:0", "--duration", f"{max_duration_s:.0f}"]
    for unit in range(1, devices + 1):
        args += ["--device", f"{unit}:{SIM_PROFILE}"]
    with (workdir / "simulator.out").open("wb") as stdout, (workdir / "simulator.log").open("wb") as stderr:
        return subprocess.Popen(
            args, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, preexec_fn=child_setup(cpu)
        )


def _listening_line(out: Path) -> tuple[str, int] | None:
    match = _LISTENING.search(out.read_text(errors="replace")) if out.exists() else None
    return (match.group(1), int(match.group(2))) if match else None


async def start_simulator(devices: int, workdir: Path, max_duration_s: float, cpu: int | None) -> SimulatorProcess:
    """Start a fresh simulator with units 1..``devices`` (OS-chosen port, read from its first line); it stops by
    itself after ``max_duration_s`` in any case."""
    process = _spawn_simulator(devices, workdir, max_duration_s, cpu)
    log = workdir / "simulator.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _listening_line(workdir / "simulator.out")
        if found:
            return SimulatorProcess(process, found[0], found[1], log)
        if process.poll() is not None:
            break
        await asyncio.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"the Modbus simulator did not start (its log: {log_tail(log)})")


def log_tail(path: Path, chars: int = 500) -> str:
    """The last lines of a child's log, on one line, for an error message."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "no log"
    return " | ".join(text[-chars:].splitlines()[-6:]) or "empty log"
