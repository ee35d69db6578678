"""``kakehashi gateway provision`` against the agent's enrollment API over real HTTPS, into temp directories; the
provisioned gateway then passes ``kakehashi gateway selftest`` against a real Mosquitto broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_agent.api.server import serve_api
from cloud_agent.runtime import AgentRuntime
from device_registry import Registry, State
from gateway.config import load_config
from kakehashi import keys
from kakehashi import log as khlog
from kakehashi.cli import main
from tests.conftest import Fleet
from tests.fleet import RunningBroker, free_port
from tests.test_enrollment import NoActions, make_app
from tests.test_enrollment_gateway import wait_for_reload

GW = "gw-prov-0001"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        assert self.code == 2, (self.code, self.out, self.err)
        lines = [line for line in self.err.strip().splitlines() if not line.startswith(("... ", "{"))]
        assert len(lines) == 1, self.err
        assert lines[0].startswith("error: ")
        return lines[0]


Cli = Callable[..., Awaitable[Result]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``kakehashi <args>`` in a worker thread (it runs its own event loop) and capture its output."""

    def invoke(args: list[str]) -> Result:
        for handler in logging.getLogger().handlers:  # JSON logs go to this test's captured stderr
            if isinstance(handler, logging.StreamHandler) and isinstance(handler.formatter, khlog.JsonFormatter):
                handler.stream = sys.stderr
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    async def run(*args: str | Path) -> Result:
        capsys.readouterr()
        return await asyncio.to_thread(invoke, [str(a) for a in args])

    return run


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    async with await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}") as opened:
        await opened.create_organisation("kakogawa", "Kakogawa City", actor="admin")
        await opened.create_gateway(GW, "kakogawa", actor="admin")
        yield opened


@pytest.fixture
async def agent_url(fleet: Fleet, registry: Registry, tmp_path: Path) -> AsyncIterator[str]:
    """The enrollment API served over HTTPS with a server certificate from the fleet CA."""
    key = keys.generate_private_key()
    keys.write_private_key(tmp_path / "api.key", key)
    record = fleet.ca.issue_server(keys.make_csr(key, "agent-api"), "agent-api", ["127.0.0.1"])
    stop, ready = asyncio.Event(), asyncio.Event()
    port = free_port()
    app = make_app(AgentRuntime(registry, NoActions(), fleet.ca))
    task = asyncio.create_task(
        serve_api(
            app,
            host="127.0.0.1",
            port=port,
            certfile=record.certificate_path,
            keyfile=tmp_path / "api.key",
            stop=stop,
            ready=ready,
        )
    )
    try:
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiting}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        if task.done():
            task.result()
        assert ready.is_set(), "the API did not start within 10 s"
        yield f"https://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def provision_args(agent_url: str, fleet: Fleet, root: Path, token: str, *extra: str) -> list[str | Path]:
    return [
        "gateway",
        "provision",
        "--token",
        token,
        "--agent",
        agent_url,
        "--id",
        GW,
        "--ca",
        fleet.ca.trust_bundle_path,
        "--config-dir",
        root / "etc",
        "--data-dir",
        root / "var",
        "--systemd-dir",
        root / "systemd",
        *extra,
    ]


async def test_provision_writes_a_working_gateway_that_passes_the_selftest(
    cli: Cli,
    fleet: Fleet,
    broker: RunningBroker,
    registry: Registry,
    agent_url: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "pi" / "systemd").mkdir(parents=True)
    token = await registry.create_enrollment_token(GW, actor="alice")
    before = broker.reloads()
    args = provision_args(agent_url, fleet, tmp_path / "pi", token, "--broker", f"127.0.0.1:{broker.endpoint.port}")
    result = await cli(*args)
    assert result.code == 0, result.err
    config_path = tmp_path / "pi" / "etc" / "gateway.toml"
    assert f"Gateway {GW} is provisioned" in result.out
    assert f"kakehashi gateway selftest --config {config_path}" in result.out
    assert "... making a key here and enrolling" in result.err
    config = load_config(config_path)
    assert config.gateway.id == GW
    assert config.uplink.port == broker.endpoint.port
    assert config.uplink.key_file.stat().st_mode & 0o777 == 0o600
    assert config.gateway.data_dir == tmp_path / "pi" / "var" / "gateway"
    assert (await registry.get_gateway(GW)).state is State.PROVISIONED
    unit = (tmp_path / "pi" / "systemd" / "kakehashi-gateway.service").read_text()
    assert f"gateway run --config {config_path}" in unit
    assert f"ReadWritePaths={tmp_path / 'pi' / 'var'}" in unit
    assert "systemctl daemon-reload" in result.out, "a directory systemd does not read: the commands are printed"

    await wait_for_reload(broker, before)
    checked = await cli("gateway", "selftest", "--config", config_path, "--json")
    report = json.loads(checked.out)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert checked.code == 0, checked.out
    assert report["ok"] is True
    assert statuses["cloud broker"] == "pass"
    assert statuses["certificate chain"] == "pass"
    assert statuses["key matches certificate"] == "pass"


async def test_existing_files_are_kept_unless_forced_and_a_refused_token_changes_nothing(
    cli: Cli, fleet: Fleet, registry: Registry, agent_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "pi"
    token = await registry.create_enrollment_token(GW, actor="alice")
    first = await cli(*provision_args(agent_url, fleet, root, token, "--no-systemd", "--json"))
    assert first.code == 0, first.err
    summary = json.loads(first.out)
    assert summary["gateway"] == GW
    assert summary["unit"] is None
    key_before = (root / "etc" / "pki" / "gateway.key").read_bytes()

    second_token = await registry.create_enrollment_token(GW, actor="alice")
    refused = await cli(*provision_args(agent_url, fleet, root, second_token, "--no-systemd"))
    assert "already exists" in refused.error_line
    assert "--force" in refused.error_line

    wrong = await cli(*provision_args(agent_url, fleet, root, "not-a-token", "--no-systemd", "--force"))
    assert "token_unknown" in wrong.error_line
    assert (root / "etc" / "pki" / "gateway.key").read_bytes() == key_before, "the old identity is put back"
    assert not list((root / "etc" / "pki").glob("replaced-*"))

    # the token was not used by the refused attempt: it still provisions, moving the old files aside
    forced = await cli(*provision_args(agent_url, fleet, root, second_token, "--no-systemd", "--force", "--json"))
    assert forced.code == 0, forced.err
    moved = json.loads(forced.out)["moved_aside"]
    assert len(moved) == 2
    backup = root / "etc" / "pki" / next(Path(p).name for p in moved if Path(p).parent.name == "pki")
    assert (backup / "gateway.key").read_bytes() == key_before
    assert (root / "etc" / "pki" / "gateway.key").read_bytes() != key_before
    load_config(root / "etc" / "gateway.toml")


async def test_input_mistakes_fail_before_the_token_is_used(
    cli: Cli, fleet: Fleet, registry: Registry, agent_url: str, tmp_path: Path
) -> None:
    token = await registry.create_enrollment_token(GW, actor="alice")
    root = tmp_path / "pi"
    bad_broker = await cli(*provision_args(agent_url, fleet, root, token, "--broker", "host:99999"))
    assert "is not HOST[:PORT]" in bad_broker.error_line
    plain = await cli(*provision_args(agent_url.replace("https", "http"), fleet, root, token))
    assert "must start with https://" in plain.error_line
    assert not (root / "etc" / "pki" / "gateway.key").exists()
    ok = await cli(*provision_args(agent_url, fleet, root, token, "--no-systemd"))
    assert ok.code == 0, ok.err
