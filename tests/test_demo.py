"""``kakehashi demo --seconds N --json`` runs the whole system headless and reports what flowed."""

from __future__ import annotations

import subprocess

import orjson

from tests.fleet import KAKEHASHI


def test_demo_runs_headless_with_every_source_and_loses_nothing() -> None:
    result = subprocess.run(
        [*KAKEHASHI, "demo", "--seconds", "6", "--json"], capture_output=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    summary = orjson.loads(result.stdout)
    assert summary["ok"] is True
    assert summary["identities"] == {"foreign_refused": True, "revoked_refused": True}
    assert set(summary["by_source"]) == {"modbus:meters", "ble", "lpwa", "nodes"}
    assert all(count > 0 for count in summary["by_source"].values())
    devices = set(summary["devices"])
    assert {"em-0001", "wm-0001", "wl-0101", "wl-0201", "bt-0001", "tag-0001"} <= devices
    assert not any(d.startswith("stranger") for d in devices), "strangers' BLE tags never leave the gateway"
    readings = summary["readings"]
    assert readings["accepted"] > 0
    assert readings["lost"] == 0
    assert readings["received"] + readings["stored_at_exit"] == readings["accepted"]
