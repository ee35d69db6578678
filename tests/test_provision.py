"""``kakehashi gateway provision`` against the agent's enrollment API over real HTTPS, into temp directories; the
provisioned gateway then passes ``kakehashi gateway selftest`` against a real Mosquitto broker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_registry import Registry, State
from gateway.config import load_config
from tests.cli_support import Cli, enrollment_api
from tests.cli_support import cli_fixture as cli_fixture
from tests.conftest import Fleet
from tests.fleet import RunningBroker, free_port, start_local_broker
from tests.test_enrollment_gateway import wait_for_reload

GW = "gw-prov-0001"


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    async with await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}") as opened:
        await opened.create_organisation("kakogawa", "Kakogawa City", actor="admin")
        await opened.create_gateway(GW, "kakogawa", actor="admin")
        yield opened


@pytest.fixture
async def agent_url(fleet: Fleet, registry: Registry, tmp_path: Path) -> AsyncIterator[str]:
    """The enrollment API served over HTTPS with a server certificate from the fleet CA."""
    async with enrollment_api(fleet, registry, tmp_path) as url:
        yield url


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
    args = provision_args(
        agent_url,
        fleet,
        tmp_path / "pi",
        token,
        "--broker",
        f"127.0.0.1:{broker.endpoint.port}",
        "--local-broker-host",
        "127.0.0.1",
        "--local-broker-port",
        str(free_port()),
    )
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

    broker_unit = (tmp_path / "pi" / "systemd" / "kakehashi-local-broker.service").read_text()
    assert f"broker run --config {config_path}" in broker_unit
    assert f"kakehashi broker run --config {config_path}" in result.out or "kakehashi-local-broker" in result.out

    await wait_for_reload(broker, before)
    local = start_local_broker(config_path, tmp_path / "local-broker.out")  # from the enrollment material alone
    try:
        checked = await cli("gateway", "selftest", "--config", config_path, "--json")
    finally:
        local.stop()
    report = json.loads(checked.out)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert checked.code == 0, checked.out
    assert report["ok"] is True
    assert statuses["cloud broker"] == "pass"
    assert statuses["certificate chain"] == "pass"
    assert statuses["key matches certificate"] == "pass"
    assert statuses["nodes' local broker"] == "pass"
    assert statuses["local broker certificate"] == "pass"
    assert statuses["local broker policy"] == "warn", "no CRL yet: the gateway service has not connected"


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
