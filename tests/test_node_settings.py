"""Node settings at the gateway: the same checks as the firmware's, per-key results in the twin, a durable state.

The firmware's own ``edge/khnode/config.py`` runs here on CPython to show that the gateway refuses exactly what the
node would refuse. The relay has no broker here (its link is down): changes are kept and wait for it;
``tests/test_node_settings_node.py`` runs the real firmware through the real local broker.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.node_settings import LEVEL_NAMES, LEVEL_RANGE, RULES, check_settings
from gateway.node_settings_store import VERSION_EPOCH, NodeSettingsStore
from gateway.outbox import Outbox
from gateway.service import open_gateway
from gateway.sources.nodes import NodesSource
from gateway.sources.nodes_settings import STALE_REASON, NodeSettingsRelay
from gateway.twin import Twin
from kakehashi import wire
from tests.conftest import Fleet
from tests.fleet import free_port

EDGE = Path(__file__).resolve().parents[1] / "edge"
sys.path.insert(0, str(EDGE))

from khnode import config as firmware  # noqa: E402 - the firmware is not a package of this project

NODE = "wl-0007"


def test_the_rules_are_the_firmwares() -> None:
    assert RULES == firmware.REMOTE
    assert LEVEL_RANGE == firmware.LEVEL_RANGE
    assert tuple(firmware.DEFAULTS["levels"]) == LEVEL_NAMES
    assert f'"{STALE_REASON}"' in (EDGE / "khnode" / "downlink.py").read_text()


DELTAS: list[dict[str, Any]] = [
    {"active_s": 120},
    {"active_s": 5},
    {"active_s": 601},
    {"active_s": 120.0},
    {"active_s": True},
    {"sample_s": "ten"},
    {"flood": 1},
    {"flood": True, "flood_s": 30},
    {"hysteresis_m": 0},
    {"hysteresis_m": 2.5},
    {"levels.caution": 2.7},
    {"levels.caution": 3.2},
    {"levels": {"standby": 1.4, "caution": 1.9}},
    {"levels": {"observe": 2.2}},
    {"levels.flood": 1.0},
    {"levels": [1, 2]},
    {"node": "wl-0008"},
    {"samples": 7, "stuck_n": 0, "spike_m": 0.2, "poll_s": 3600, "heartbeat_s": 600},
]


@pytest.mark.parametrize("delta", DELTAS, ids=[json.dumps(d) for d in DELTAS])
def test_the_gateway_refuses_what_the_node_refuses(delta: dict[str, Any]) -> None:
    cfg = dict(firmware.DEFAULTS)
    problems: list[str] = []
    firmware.apply(cfg, delta, firmware.REMOTE, problems)
    # the node's other thresholds are its node.json's; here the defaults, which the gateway is told it has set
    current = {f"levels.{name}": value for name, value in firmware.DEFAULTS["levels"].items()}
    check = check_settings(delta, current)
    assert bool(check.rejected) == bool(problems), (check.rejected, problems)
    for key, reason in check.rejected.items():
        if key in firmware.REMOTE:
            assert reason in problems


def test_levels_are_flattened_and_checked_against_those_set_before() -> None:
    check = check_settings({"levels": {"standby": 1.4}, "active_s": 300}, {"levels.observe": 1.5})
    assert check.accepted == {"active_s": 300}
    assert check.rejected == {"levels.standby": "levels must ascend: standby (1.4) is not above observe (1.5)"}
    assert check_settings({"levels": {"standby": 1.4}}, {}).accepted == {"levels.standby": 1.4}
    assert check_settings({"flood": None}, {}).rejected == {"flood": "flood cannot be removed from a node: set a value"
                                                                     " instead"}  # fmt: skip


def desired(version: int, delta: dict[str, Any]) -> bytes:
    return wire.encode_desired(wire.DesiredMessage(version=version, sent_at=time.time(), delta=delta))


async def last_report(outbox: Outbox) -> wire.ReportedMessage:
    return [wire.decode_reported(m.payload) for m in await outbox.fetch_after(0, 100)][-1]


async def test_the_twin_hands_node_settings_to_the_relay_and_rejects_the_rest(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "outbox.db", 1024 * 1024)
    try:
        relay = NodeSettingsRelay(NodeSettingsStore(tmp_path / "node-settings.json"), frozenset({NODE}))
        twin = Twin(tmp_path / "twin.json", outbox, sources={}, gateway_settings={}, effective=dict, devices=relay)
        delta = {
            "devices": {
                NODE: {"active_s": 120, "levels": {"caution": 2.7}, "flood_s": 5, "colour": "red"},
                "valve-0003": {"active_s": 60},
                "wl-0100": "fast",
            }
        }
        await twin.handle(desired(4, delta))
        report = await last_report(outbox)
        results = report.state["results"]
        assert isinstance(results, dict)
        version = int(time.time()) - VERSION_EPOCH
        relayed = str(results[f"devices.{NODE}.active_s"])
        assert relayed.startswith("relayed: node settings version ")
        sent_version = int(relayed.split()[4].rstrip(","))
        assert version <= sent_version <= version + 5
        assert results[f"devices.{NODE}.levels.caution"] == relayed
        assert results[f"devices.{NODE}.flood_s"] == "rejected: flood_s must be from 10 to 600"
        assert str(results[f"devices.{NODE}.colour"]).startswith("rejected: colour is not a node setting")
        assert str(results["devices.valve-0003"]).startswith("rejected: valve-0003 is not a node bound")
        assert str(results["devices.wl-0100"]).startswith("rejected: wl-0100 is not a node bound")
        assert report.state["devices"] == {
            NODE: {"settings_version": 0, "settings": {}, "pending": True, "pending_version": sent_version,
                   "rejected": None}
        }  # fmt: skip
        # the same again: nothing new to send
        await twin.handle(desired(5, {"devices": {NODE: {"active_s": 120}}}))
        assert (await last_report(outbox)).state["results"] == {f"devices.{NODE}.active_s": relayed}

        # a restart keeps the change the node has not acknowledged, and the version sequence
        again = NodeSettingsRelay(NodeSettingsStore(tmp_path / "node-settings.json"), frozenset({NODE}))
        assert again.reported()[NODE]["pending_version"] == sent_version
        ack = wire.CommandAck(f"config-{sent_version}", wire.AckStatus.SUCCEEDED, time.time())
        other = wire.CommandAck("c-1", wire.AckStatus.SUCCEEDED, time.time())
        assert await again.on_acks(NODE, [ack, other]) == [other]
        assert again.reported()[NODE] == {"settings_version": sent_version, "settings": {"active_s": 120,
                                          "levels.caution": 2.7}, "pending": False, "pending_version": None,
                                          "rejected": None}  # fmt: skip
    finally:
        await outbox.close()


async def test_without_a_node_relay_device_settings_are_rejected(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "outbox.db", 1024 * 1024)
    try:
        twin = Twin(tmp_path / "twin.json", outbox, sources={}, gateway_settings={}, effective=dict)
        await twin.handle(desired(1, {"devices": {NODE: {"active_s": 120}}}))
        await twin.handle(desired(2, {"devices": [NODE]}))
        reports = [wire.decode_reported(m.payload) for m in await outbox.fetch_after(0, 100)]
        assert str(reports[0].state["results"]).count("rejected: no device behind this gateway takes settings") == 1
        assert reports[1].state["results"] == {
            "devices": "rejected: devices must be an object of device id to settings"
        }
        assert "devices" not in reports[1].state
    finally:
        await outbox.close()


async def test_a_node_refusal_and_a_stale_answer_are_recorded(tmp_path: Path) -> None:
    relay = NodeSettingsRelay(NodeSettingsStore(tmp_path / "node-settings.json"), frozenset({NODE}))
    await relay.apply_desired({NODE: {"levels.observe": 2.4}})
    first = relay.reported()[NODE]["pending_version"]
    reason = "levels.observe: levels must ascend: standby is not above the level before it"
    await relay.on_acks(NODE, [wire.CommandAck(f"config-{first}", wire.AckStatus.REJECTED, time.time(), reason)])
    assert relay.reported()[NODE]["rejected"] == {"version": first, "reason": reason}
    assert relay.reported()[NODE]["pending"] is False
    result = await relay.apply_desired({NODE: {"levels.observe": 2.4}})
    refused = f"rejected: the node refused settings version {first}: {reason}"
    assert result == {f"devices.{NODE}.levels.observe": refused}
    await relay.apply_desired({NODE: {"levels.observe": 1.2}})
    second = relay.reported()[NODE]["pending_version"]
    assert second > first
    # the node already holds that version (its "succeeded" was lost): sent again under a new one
    await relay.on_acks(NODE, [wire.CommandAck(f"config-{second}", wire.AckStatus.REJECTED, time.time(), STALE_REASON)])
    third = relay.reported()[NODE]["pending_version"]
    assert third > second
    # an answer to an older version changes nothing
    await relay.on_acks(NODE, [wire.CommandAck(f"config-{first}", wire.AckStatus.SUCCEEDED, time.time())])
    assert relay.reported()[NODE]["pending_version"] == third
    assert relay.counts["acks_ignored"] == 1
    assert json.loads((tmp_path / "node-settings.json").read_text())["nodes"][NODE]["version"] == third


async def test_the_gateway_service_wires_the_node_relay_to_its_twin(fleet: Fleet, tmp_path: Path) -> None:
    doc = {
        "gateway": {"id": "gw-test-0001", "data_dir": str(tmp_path / "data")},
        "uplink": {"host": "127.0.0.1", "port": free_port(), "ca_file": str(fleet.gw1.ca_file),
                   "cert_file": str(fleet.gw1.cert_file), "key_file": str(fleet.gw1.key_file)},
        "sources": {"nodes": {"port": free_port(), "nodes": [{"id": NODE}]}},
    }  # fmt: skip
    gateway = await open_gateway(parse_config(doc, tmp_path / "gateway.toml"))
    try:
        await gateway.twin.handle(desired(1, {"devices": {NODE: {"active_s": 120}}}))
        report = await last_report(gateway.outbox)
        devices = report.state["devices"]
        assert isinstance(devices, dict)
        assert devices[NODE]["pending"] is True  # type: ignore[index,call-overload]
        saved = json.loads((tmp_path / "data" / "node-settings.json").read_text())
        assert saved["nodes"][NODE]["desired"] == {"active_s": 120}
        # the node's acknowledgement makes the gateway report again
        [source] = gateway.sources
        assert isinstance(source, NodesSource)
        assert source.settings is not None
        ack = wire.CommandAck(f"config-{saved['nodes'][NODE]['version']}", wire.AckStatus.SUCCEEDED, time.time())
        await source.settings.on_acks(NODE, [ack])
        devices = (await last_report(gateway.outbox)).state["devices"]
        assert devices[NODE]["settings"] == {"active_s": 120}  # type: ignore[index,call-overload]
    finally:
        await gateway.commands.close()
        await gateway.outbox.close()
