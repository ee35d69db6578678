"""``bench/vs_thingsboard.py``: the sequence accounting, the generated configurations, and a short run of our side.

The full comparison (thingsboard-gateway installed into its own venv, calibration trials, 60 s per gateway) is a
benchmark, not a unit test: run ``python bench/vs_thingsboard.py --json`` (see docs/benchmarks.md). Here the script
runs for a few seconds with ``--only kakehashi``: our gateway as a real process against the simulator process and
the two-listener Mosquitto, and must deliver with no lost poll.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bench.tb_support import ours, thingsboard
from bench.tb_support.broker import two_listener_config
from bench.tb_support.tally import SEQ_MODULUS, DeviceSeries, SequenceTally
from gateway.config import parse_config
from kakehashi.broker.config import BrokerLayout, ListenerSettings, render_config
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "vs_thingsboard.py"


def test_tally_counts_holes_between_first_and_last() -> None:
    tally = SequenceTally()
    for seq in (5, 6, 8, 9, 12):
        tally.poll("dev-a", seq, 20)
    tally.poll("dev-b", 100, 20)
    assert tally.readings == 120
    assert tally.polls == 6
    assert tally.lost_polls == 3  # 7, 10, 11
    assert tally.lost_by_device() == {"dev-a": 3}
    assert tally.first_holes() == {"dev-a": [2, 5, 6]}


def test_tally_unwraps_the_16_bit_counter_and_counts_duplicates() -> None:
    series = DeviceSeries()
    for raw in (SEQ_MODULUS - 2, SEQ_MODULUS - 1, 0, 1, 1, 3):
        series.add(raw)
    assert series.polls == 5
    assert series.duplicates == 1
    assert series.lost == 1  # 2 (after the wrap)
    reordered = DeviceSeries()
    for raw in (10, 12, 11):
        reordered.add(raw)
    assert reordered.lost == 0


def test_two_listener_config_keeps_the_fleet_listener_and_adds_a_plain_one(tmp_path: Path) -> None:
    layout = BrokerLayout(tmp_path)
    fleet = render_config(layout, ListenerSettings("127.0.0.1", 18883, "mosquitto"))
    text = two_listener_config(fleet, layout, 11883, tmp_path / "acl-tb.conf")
    lines = text.splitlines()
    assert "per_listener_settings true" in lines
    tls_at = lines.index("listener 18883 127.0.0.1")
    plain_at = lines.index("listener 11883 127.0.0.1")
    assert tls_at < plain_at
    tls_block, plain_block = lines[tls_at:plain_at], lines[plain_at:]
    for line in ("require_certificate true", "use_identity_as_username true", "allow_anonymous false"):
        assert line in tls_block
    assert f"acl_file {layout.acl}" in tls_block
    assert "allow_anonymous true" in plain_block
    assert f"acl_file {tmp_path / 'acl-tb.conf'}" in plain_block
    assert not any(line.startswith(("allow_anonymous", "acl_file")) for line in lines[:tls_at])
    with pytest.raises(ValueError, match="changed shape"):
        two_listener_config("listener 1 127.0.0.1\n", layout, 11883, tmp_path / "acl-tb.conf")


def test_thingsboard_config_reads_each_device_in_one_request() -> None:
    doc = thingsboard.modbus_config("127.0.0.1", 5020, units=20, registers=20, poll_period_ms=150)
    slaves = doc["master"]["slaves"]
    assert [s["unitId"] for s in slaves] == list(range(1, 21))
    assert {(s["host"], s["port"]) for s in slaves} == {("127.0.0.1", 5020)}  # one shared connection
    for slave in slaves:
        assert slave["pollPeriod"] == 150
        (key,) = slave["timeseries"]
        assert key["address"] == "0-19"
        assert key["maxRegistersPerRequest"] == 20  # thingsboard-gateway's default of 16 would split the read
        assert key["functionCode"] == 3
        assert "${address}" in key["tag"]
    general = thingsboard.gateway_config(1883)
    assert general["storage"]["type"] == "memory"
    assert general["thingsboard"]["host"] == "127.0.0.1"


def test_thingsboard_runs_offline(tmp_path: Path) -> None:
    env = thingsboard.tb_environment(tmp_path)
    assert env["TB_GW_CONFIG_DIR"] == str(tmp_path)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[key].startswith("http://127.0.0.1:")
    assert "NO_PROXY" not in env
    assert "no_proxy" not in env


def test_stand_in_tallies_thingsboard_telemetry() -> None:
    server = thingsboard.ServerStandIn(BrokerEndpoint("127.0.0.1", 1))
    values = {f"r{i}": i for i in range(20)}
    server._telemetry(
        {"tb-bench-01": [{"ts": 1, "values": {**values, "r0": 7}}, {"ts": 2, "values": {**values, "r0": 9}}]}
    )
    assert server.tally.readings == 40
    assert server.tally.lost_polls == 1


def test_our_gateway_config_is_valid(tmp_path: Path) -> None:
    ident = TlsIdentity(tmp_path / "ca.pem", tmp_path / "gw.crt", tmp_path / "gw.key")
    text = ours.gateway_config(tmp_path / "data", BrokerEndpoint("127.0.0.1", 8883), ident, "127.0.0.1", 5020, 20)
    config = parse_config(tomllib.loads(text), tmp_path / "gateway.toml")
    assert config.sources.modbus is not None
    (bus,) = config.sources.modbus.buses
    assert [d.unit for d in bus.devices] == list(range(1, 21))
    assert {d.profile for d in bus.devices} == {"bench-seq"}


def test_the_script_takes_the_options_documented() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for option in ("--json", "--seconds", "--only", "--tb-poll-ms", "--tb-trial-seconds", "--no-pin", "--keep-dir"):
        assert option in proc.stdout


@pytest.mark.slow
def test_short_run_of_our_side_delivers_without_loss() -> None:
    """``kakehashi bench vs-thingsboard --quick``: our side alone for 5 s (the peer's install is not for tests)."""
    proc = subprocess.run(
        [sys.executable, "-m", "kakehashi", "bench", "vs-thingsboard", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert "thingsboard" not in result
    doc = result["kakehashi"]
    assert "error" not in doc, doc
    assert doc["delivered"] > 0
    assert doc["readings_per_s"] > 0
    assert doc["lost_polls"] == 0
    assert doc["devices_delivering"] == 20
    assert doc["zero_loss"] is True
    assert result["ratio"] is None
    assert result["met"] is False  # no peer measured: no verdict
