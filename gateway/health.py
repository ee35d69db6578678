"""The gateway's health document, sent in every heartbeat: outbox, sources, uplink, uptime, version, CPU temperature."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kakehashi import __version__

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def cpu_temperature_c(zone: Path = THERMAL_ZONE) -> float | None:
    """The SoC temperature on a Raspberry Pi (and most Linux boards), or None where the kernel does not expose it."""
    try:
        return round(int(zone.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def disk_free_bytes(path: Path) -> int | None:
    import shutil

    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def base_health(started_at: float, data_dir: Path) -> dict[str, Any]:
    return {
        "version": __version__,
        "uptime_s": round(time.time() - started_at, 1),
        "cpu_temperature_c": cpu_temperature_c(),
        "disk_free_bytes": disk_free_bytes(data_dir),
    }
