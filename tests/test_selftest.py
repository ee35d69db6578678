"""``kakehashi gateway selftest`` against real hardware stand-ins: Mosquitto (cloud and local profile) over mutual
TLS, pymodbus simulators, an LPWA module on a socat PTY and the simulated BLE adapter; then the same checks failing
for real (broker down, wrong port, unplugged PTY, a Modbus unit that does not answer, expired and foreign
certificates, a broken config), each with its next step."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_agent.pki.authority import CertificateAuthority
from gateway.cli import gateway as gateway_group
from gateway.intake import Intake
from gateway.model import Reading
from gateway.outbox import Outbox
from gateway.selftest import exit_code, run_selftest
from gateway.selftest_model import Check, Status
from gateway.selftest_sources import port_holders
from gateway.sources.lpwa import open_serial
from hw.ble.simulator import SimulatedAir, attach_air, detach_air
from hw.lpwa.simulator import LpwaModuleSimulator
from hw.modbus.simulator import Fault, ModbusSimulator
from kakehashi.identity import Role
from kakehashi.mqtt import TlsIdentity
from tests.conftest import Fleet
from tests.fleet import RunningBroker, free_port, make_identity, start_broker
from tests.test_enrollment_gateway import wait_for_reload

GW = "gw-test-0001"
ADAPTER = "hci-selftest"


@pytest.fixture
def local_broker(fleet: Fleet, tmp_path: Path) -> Iterator[RunningBroker]:
    running = start_broker(fleet.ca.path, tmp_path / "local", extra=("--profile", "local", "--gateway", GW))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def air() -> Iterator[SimulatedAir]:
    air = attach_air(ADAPTER, SimulatedAir())
    try:
        yield air
    finally:
        detach_air(ADAPTER)


def write_config(path: Path, identity: TlsIdentity, broker_port: int, gateway_id: str = GW, **sources: Any) -> Path:
    lines = [
        "[gateway]",
        f'id = "{gateway_id}"',
        f'data_dir = "{path.parent / "data"}"',
        "[uplink]",
        'host = "127.0.0.1"',
        f"port = {broker_port}",
        f'ca_file = "{identity.ca_file}"',
        f'cert_file = "{identity.cert_file}"',
        f'key_file = "{identity.key_file}"',
        "[outbox]",
        "budget_mb = 1",
    ]
    if "nodes_port" in sources:
        lines += ["[sources.nodes]", f"port = {sources['nodes_port']}", 'nodes = [{ id = "wl-0007" }]']
    if "modbus_port" in sources:
        lines += [
            "[[sources.modbus.buses]]",
            'host = "127.0.0.1"',
            f"port = {sources['modbus_port']}",
            'devices = [{ id = "em-0001", unit = 1, profile = "sdm120" }, '
            '{ id = "wl-0002", unit = 2, profile = "water-level" }]',
        ]
    if "lpwa_port" in sources:
        lines += ["[[sources.lpwa]]", f'port = "{sources["lpwa_port"]}"', 'module = "im920"']
    if sources.get("ble"):
        lines += [
            "[sources.ble]",
            f'adapter = "{ADAPTER}"',
            'backend = "hw.ble.simulator:SimulatedScannerBackend"',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


async def test_everything_attached_passes(
    fleet: Fleet,
    broker: RunningBroker,
    local_broker: RunningBroker,
    air: SimulatedAir,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with (
        ModbusSimulator({1: "sdm120", 2: "water-level"}) as modbus,
        LpwaModuleSimulator("im920", link_path=tmp_path / "lpwa0") as lpwa,
    ):
        config = write_config(
            tmp_path / "gateway.toml",
            fleet.gw1,
            broker.endpoint.port,
            nodes_port=local_broker.endpoint.port,
            modbus_port=modbus.port,
            lpwa_port=lpwa.link_path,
            ble=True,
        )
        outbox = await Outbox.open(tmp_path / "data" / "outbox.db", 1024 * 1024)
        try:
            readings = [Reading("wl-0007", "level", float(i), "m", time.time()) for i in range(3)]
            await Intake(outbox).submit_once("wl-0007", 1, readings)
        finally:
            await outbox.close()
        before = (tmp_path / "data" / "outbox.db").stat()
        steps: list[str] = []
        checks = await run_selftest(config, steps.append)
        _, held = await open_serial(str(lpwa.link_path), 19200)  # the running gateway holds its LPWA port locked
        try:
            locked = by_name(await run_selftest(config, lambda step: None))["lpwa lpwa (im920)"]
        finally:
            held.close()
            await held.wait_closed()
    found = by_name(checks)
    failed = {c.name: c.detail for c in checks if c.status is not Status.PASS and c.name != "clock synchronised"}
    assert failed == {}
    assert exit_code(checks) == 0
    assert "nodes' local broker" in found
    assert "modbus em-0001 (unit 1 on 127.0.0.1:" in " ".join(found)
    assert found["lpwa lpwa (im920)"].detail.endswith("opens at 19200 baud")
    assert found[f"bluetooth adapter {ADAPTER}"].detail == f"{ADAPTER} scans (passive)"
    assert steps[0].startswith("config")
    assert "sources" in steps
    assert air.stops == air.starts == 2, "each run started and stopped the adapter once"
    assert found["outbox health"].detail.startswith("1 messages (3 readings) waiting, oldest ")
    after = (tmp_path / "data" / "outbox.db").stat()
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size), "the self-test only reads"
    assert locked.status is Status.PASS
    assert "locked by another process" in locked.detail


async def test_failures_say_what_to_do_next(fleet: Fleet, broker: RunningBroker, tmp_path: Path) -> None:
    async with (
        ModbusSimulator({1: "sdm120", 2: "water-level"}) as modbus,
        LpwaModuleSimulator("im920", link_path=tmp_path / "lpwa0") as lpwa,
    ):
        modbus.inject(2, Fault.no_answer())
        await lpwa.unplug()
        config = write_config(
            tmp_path / "gateway.toml",
            fleet.gw1,
            broker.endpoint.port,
            nodes_port=free_port(),  # nothing listens there
            modbus_port=modbus.port,
            lpwa_port=lpwa.link_path,
        )
        broker.stop()  # the cloud broker is down
        checks = await run_selftest(config, lambda step: None)
    found = by_name(checks)
    assert exit_code(checks) == 1
    assert found["cloud broker"].status is Status.FAIL
    assert "[uplink] host and port" in found["cloud broker"].fix
    assert found["nodes' local broker"].status is Status.FAIL
    assert "kakehashi broker run --profile local" in found["nodes' local broker"].fix
    device_1 = next(c for n, c in found.items() if n.startswith("modbus em-0001"))
    device_2 = next(c for n, c in found.items() if n.startswith("modbus wl-0002"))
    assert device_1.status is Status.PASS
    assert device_2.status is Status.FAIL
    assert "timeout" in device_2.detail
    assert "unit id" in device_2.fix
    assert found["lpwa lpwa (im920)"].status is Status.FAIL
    assert "does not exist" in found["lpwa lpwa (im920)"].detail
    assert all(check.fix for check in checks if check.status is Status.FAIL)


async def test_modbus_bus_down_and_no_bluetooth_adapter(fleet: Fleet, broker: RunningBroker, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    write_config(config, fleet.gw1, broker.endpoint.port, modbus_port=free_port())
    text = config.read_text() + '[sources.ble]\nadapter = "hci7"\n'  # the platform's BlueZ backend: none here
    config.write_text(text)
    found = by_name(await run_selftest(config, lambda step: None))
    assert found["modbus bus 127.0.0.1:" + text.split("port = ")[2].split("\n")[0]].status is Status.FAIL
    ble = found["bluetooth adapter hci7"]
    assert ble.status is Status.FAIL
    assert ble.detail.startswith("no Bluetooth adapter: ")
    assert "bluetoothctl list" in ble.fix


async def test_expired_and_foreign_certificates(fleet: Fleet, broker: RunningBroker, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = make_identity(
        fleet.ca,
        Role.GATEWAY,
        "gw-test-0009",
        tmp_path / "expired",
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    found = by_name(
        await run_selftest(
            write_config(tmp_path / "a.toml", expired, broker.endpoint.port, "gw-test-0009"), lambda step: None
        )
    )
    assert found["certificate dates"].status is Status.FAIL
    assert "expired on" in found["certificate dates"].detail
    assert "kakehashi gateway provision --force" in found["certificate dates"].fix
    assert found["cloud broker"].status is Status.FAIL

    before = broker.reloads()
    soon = make_identity(
        fleet.ca, Role.GATEWAY, "gw-test-0010", tmp_path / "soon", not_after=now + dt.timedelta(days=10)
    )
    await wait_for_reload(broker, before)
    config = write_config(tmp_path / "b.toml", soon, broker.endpoint.port, "gw-test-0010")
    found = by_name(await run_selftest(config, lambda step: None))
    assert found["certificate dates"].status is Status.WARN
    assert found["cloud broker"].status is Status.PASS

    other = CertificateAuthority.init(tmp_path / "other-pki")
    foreign = make_identity(other, Role.GATEWAY, GW, tmp_path / "foreign")
    mixed = TlsIdentity(fleet.ca.trust_bundle_path, foreign.cert_file, foreign.key_file)
    found = by_name(
        await run_selftest(write_config(tmp_path / "c.toml", mixed, broker.endpoint.port), lambda step: None)
    )
    assert found["key matches certificate"].status is Status.PASS
    assert found["certificate chain"].status is Status.FAIL
    assert "not from this fleet's CA" in found["certificate chain"].fix
    assert found["cloud broker"].status is Status.FAIL

    wrong_key = TlsIdentity(fleet.ca.trust_bundle_path, fleet.gw1.cert_file, foreign.key_file)
    found = by_name(
        await run_selftest(write_config(tmp_path / "d.toml", wrong_key, broker.endpoint.port), lambda step: None)
    )
    assert found["key matches certificate"].status is Status.FAIL
    found = by_name(
        await run_selftest(write_config(tmp_path / "e.toml", fleet.gw2, broker.endpoint.port), lambda step: None)
    )
    assert found["certificate identity"].status is Status.FAIL
    assert "gw-test-0002" in found["certificate identity"].detail


def test_cli_prints_a_checklist_and_json_and_exits_1_on_failure(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "gateway.toml", fleet.gw1, free_port())
    with pytest.raises(SystemExit) as exited:
        gateway_group.main(["selftest", "--config", str(config)], standalone_mode=False)
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["CHECK", "RESULT", "DETAIL"]
    assert "cloud broker             FAIL" in out
    assert "checks failed. Next steps:" in out
    assert "  - cloud broker: check [uplink] host and port" in out

    with pytest.raises(SystemExit):
        gateway_group.main(["selftest", "--config", str(config), "--json"], standalone_mode=False)
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert {c["name"]: c["status"] for c in report["checks"]}["identity files"] == "pass"

    broken = tmp_path / "broken.toml"
    broken.write_text('[gateway]\nid = "GW"\n')
    with pytest.raises(SystemExit):
        gateway_group.main(["selftest", "--config", str(broken), "--json"], standalone_mode=False)
    report = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in report["checks"]] == ["config valid"]
    assert report["checks"][0]["status"] == "fail"


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """An RS-485 line: two linked PTYs from socat, the simulator on one end, the gateway's port the other."""
    sim_end, gw_end = tmp_path / "sim-tty", tmp_path / "gw-tty"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={sim_end}", f"pty,raw,echo=0,link={gw_end}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            if sim_end.exists() and gw_end.exists():
                break
            time.sleep(0.01)
        yield sim_end, gw_end
    finally:
        proc.terminate()
        proc.wait(timeout=5)


async def test_rtu_devices_are_polled_unless_another_process_holds_the_line(
    fleet: Fleet, broker: RunningBroker, pty_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    sim_end, gw_end = pty_pair
    config = tmp_path / "gateway.toml"
    write_config(config, fleet.gw1, broker.endpoint.port)
    config.write_text(
        config.read_text()
        + f'[[sources.modbus.buses]]\nname = "rs485"\nport = "{gw_end}"\nbaudrate = 115200\n'
        + 'devices = [{ id = "em-0001", unit = 1, profile = "sdm120" },\n'
        + '           { id = "wm-0003", unit = 3, profile = "sdm120" }]\n'
    )
    async with ModbusSimulator({1: "sdm120"}, serial=str(sim_end), baudrate=115200):
        found = by_name(await run_selftest(config, lambda step: None))
        assert found["modbus em-0001 (unit 1 on rs485)"].status is Status.PASS
        assert found["modbus wm-0003 (unit 3 on rs485)"].status is Status.FAIL, "no device answers as unit 3"
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"import time; f = open({str(gw_end)!r}, 'rb', buffering=0); time.sleep(60)"
        )
        try:
            for _ in range(200):
                if port_holders(str(gw_end)):
                    break
                await asyncio.sleep(0.02)
            busy = by_name(await run_selftest(config, lambda step: None))["modbus bus rs485"]
        finally:
            holder.kill()
            await holder.wait()
    assert busy.status is Status.UNKNOWN
    assert f"({holder.pid}): devices not polled" in busy.detail
    assert "systemctl stop kakehashi-gateway" in busy.fix
