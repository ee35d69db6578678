"""``python bench/vs_thingsboard.py [--json]``: this gateway vs thingsboard-gateway (PyPI) on the same Modbus scenario.

20 meters × 20 holding registers on one pymodbus TCP server, each gateway configured the best way it allows (one
block read per device poll), polling as fast as it keeps up, through the same Mosquitto, ``--seconds`` each (60 by
default), one after the other. Prints each one's delivered readings/s, the lost polls (checked with a per-poll
sequence register), peak RSS and the ``ratio`` (target: ours ≥ 10× theirs). thingsboard-gateway is installed into
its own venv (``.bench/tb-venv``) on first use. ``--only kakehashi`` measures ours alone (the smoke test does).
The work is in :mod:`bench.tb_support.compare`; see docs/benchmarks.md for the setup and the figures.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

QUICK: dict[str, Any] = {"seconds": 5.0, "only": "kakehashi"}


def run(**kwargs: Any) -> dict[str, Any]:
    """The result document (the keywords of :func:`bench.tb_support.compare.run_async`)."""
    from bench.tb_support.compare import run as run_comparison

    return run_comparison(**kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.tb_support.compare import main as compare_main

    return compare_main(argv)


if __name__ == "__main__":
    # Run as a script, this file's folder comes first on sys.path, where bench/gateway.py would shadow the gateway
    # package: put the repository root there instead.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))
    sys.exit(main())
