"""Desired settings through the twin: applied or rejected per key, stale versions refused, outcome reported."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.outbox import Outbox
from gateway.sources.ble import build_ble_source
from gateway.sources.ble_config import BleSourceConfig
from gateway.sources.synthetic import SyntheticSource, SyntheticSourceConfig
from gateway.twin import Twin
from kakehashi import wire


def desired(version: int, delta: dict[str, object]) -> bytes:
    return wire.encode_desired(wire.DesiredMessage(version=version, sent_at=time.time(), delta=delta))


async def reported(outbox: Outbox) -> list[wire.ReportedMessage]:
    return [wire.decode_reported(m.payload) for m in await outbox.fetch_after(0, 100)]


@pytest.fixture
async def twin(tmp_path: Path) -> Twin:
    outbox = await Outbox.open(tmp_path / "outbox.db", 1024 * 1024)
    heartbeat = {"value": 30.0}

    def set_heartbeat(value: object) -> str:
        if not isinstance(value, int | float) or isinstance(value, bool) or not 1 <= value <= 3600:
            return "rejected: heartbeat_s must be a number of seconds between 1 and 3600"
        heartbeat["value"] = float(value)
        return "applied"

    sources = {
        "synthetic": SyntheticSource(SyntheticSourceConfig(devices=["sim-0001"])),
        "ble": build_ble_source(BleSourceConfig(tags=[])),
    }
    return Twin(tmp_path / "twin.json", outbox, sources=sources, gateway_settings={"heartbeat_s": set_heartbeat},
                effective=lambda: dict(heartbeat))  # fmt: skip


async def test_delta_applied_per_key_and_reported(twin: Twin) -> None:
    await twin.handle(desired(1, {"heartbeat_s": 60, "sources.synthetic.rate_per_s": 50, "sources.ble.window_s": 20,
                                  "sources.ble.window_s_typo": 1, "sources.nope.x": 1, "colour": "red",
                                  "sources.synthetic.rate_per_s_": 1}))  # fmt: skip
    [report] = await reported(twin._outbox)
    results = report.state["results"]
    assert isinstance(results, dict)
    assert results["heartbeat_s"] == "applied"
    assert results["sources.synthetic.rate_per_s"] == "applied"
    assert results["sources.ble.window_s"] == "applied"
    assert str(results["sources.ble.window_s_typo"]).startswith("rejected: not a live setting")
    assert str(results["sources.nope.x"]).startswith("rejected: no source")
    assert str(results["colour"]).startswith("rejected: unknown setting")
    assert report.version == 1
    assert report.state["settings"] == {"value": 60.0}


async def test_out_of_range_value_is_rejected_with_the_allowed_range(twin: Twin) -> None:
    await twin.handle(desired(1, {"sources.ble.window_s": -5}))
    [report] = await reported(twin._outbox)
    assert report.state["results"] == {
        "sources.ble.window_s": "rejected: window_s must be a number between 0.1 and 3600"
    }


async def test_stale_version_is_refused_and_the_version_survives_restart(twin: Twin, tmp_path: Path) -> None:
    await twin.handle(desired(3, {"heartbeat_s": 10}))
    await twin.handle(desired(2, {"heartbeat_s": 99}))
    reports = await reported(twin._outbox)
    assert reports[-1].state["stale_desired_version"] == 2
    assert reports[-1].state["settings"] == {"value": 10.0}
    again = Twin(tmp_path / "twin.json", twin._outbox, sources={}, gateway_settings={}, effective=dict)
    assert again.version == 3


async def test_malformed_desired_raises_wire_error_only(twin: Twin) -> None:
    with pytest.raises(wire.WireError):
        await twin.handle(b'{"v": 1, "version": "x"}')
