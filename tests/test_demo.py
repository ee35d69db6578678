"""``kakehashi demo --seconds N --json`` runs the whole system headless and reports what flowed."""

from __future__ import annotations

import subprocess

import orjson

from tests.fleet import KAKEHASHI


def test_demo_runs_headless_enrolls_stores_every_reading_once_and_round_trips_the_twin() -> None:
    result = subprocess.run(
        [*KAKEHASHI, "demo", "--seconds", "6", "--json"], capture_output=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    summary = orjson.loads(result.stdout)
    assert summary["ok"] is True
    assert summary["identities"] == {"foreign_refused": True, "revoked_refused": True}
    assert set(summary["by_source"]) == {"modbus:meters", "ble", "lpwa", "nodes"}
    assert all(count > 0 for count in summary["by_source"].values())
    devices = summary["devices"]
    assert {"em-0001", "wm-0001", "wl-0101", "wl-0201", "bt-0001", "tag-0001"} <= set(devices)
    assert all(device["state"] == "active" for device in devices.values()), devices
    assert summary["gateway"]["state"] == "active"
    passed = {check["name"] for check in summary["checks"] if check["passed"]}
    assert {
        "CSV roll-out imported",
        "gateway enrolled with a one-time token",
        "twin round trip (desired → gateway → reported)",
        "every accepted reading stored exactly once",
        "edge node runs the MicroPython firmware",
        "command open on wm-0001 succeeded",
        "command flood_mode on wl-0201 succeeded",
        "command close on wm-0001 succeeded",
        "closing the valve waited for a second person",
        "City OS received entities for every device kind",
        "nothing lost for the City OS across its outage",
        "watch tags reach the City OS only as counts per zone and hour",
        "context-source API answers the City OS's query",
    } <= passed
    assert summary["city_os"]["example"]["type"] == "WaterObserved"
    assert [c["history"][-1] for c in summary["commands"]] == ["succeeded"] * 3
    node = summary["node"]
    assert node["firmware"] == "MicroPython unix port"
    assert node["acknowledged"] == node["wakes"] > 0
    assert "level" in node["latest"], "the node's water level reached the registry through the gateway"
    readings = summary["readings"]
    assert readings["accepted"] > 0
    assert readings["lost"] == 0
    assert readings["rejected_by_agent"] == 0, "strangers' BLE tags never leave the gateway; every device is registered"
    assert (
        readings["stored_by_agent"] + readings["stored_at_exit"] + readings["dropped_by_budget"] == readings["accepted"]
    )
