"""``kakehashi demo --seconds N --json`` runs headless end to end and reports what flowed."""

from __future__ import annotations

import subprocess

import orjson

from tests.fleet import KAKEHASHI


def test_demo_runs_headless_and_loses_nothing() -> None:
    result = subprocess.run(
        [*KAKEHASHI, "demo", "--seconds", "3", "--json"], capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    summary = orjson.loads(result.stdout)
    assert summary["ok"] is True
    assert summary["identities"] == {
        "enrolled_connected": True,
        "foreign_refused": True,
        "revoked_refused": True,
    }
    readings = summary["readings"]
    assert readings["forwarded"] > 0
    assert readings["received"] == readings["forwarded"]
    assert readings["lost"] == 0
    assert readings["duplicates"] == 0
    assert summary["messages"]["lost"] == 0
