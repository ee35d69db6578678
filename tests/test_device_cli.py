"""``kakehashi device`` against the real API served over HTTPS by ``serve_api`` with a certificate from the fleet CA.

The server runs in the test's event loop; each CLI command runs in a worker thread (it is synchronous), as a user
would run it: ``kakehashi.cli.main`` with options from the environment, output and one-line errors captured.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from bench.harness import free_port
from cloud_agent.api import create_app
from cloud_agent.api.server import serve_api
from cloud_agent.pki.authority import CertificateAuthority
from cloud_agent.runtime import AgentRuntime
from device_registry import ApiRole, Registry
from kakehashi import keys, wire
from kakehashi.cli import main
from tests.cli_support import Result
from tests.test_api_helpers import RecorderActions


@dataclass
class Agent:
    url: str
    port: int
    ca: Path
    registry: Registry
    actions: RecorderActions
    admin: str
    capsys: pytest.CaptureFixture[str]
    stop: asyncio.Event
    task: asyncio.Task[None]

    def _invoke(self, args: tuple[str, ...], env: dict[str, str]) -> Result:
        self.capsys.readouterr()
        with pytest.MonkeyPatch.context() as patch:
            for name in ("KAKEHASHI_AGENT_URL", "KAKEHASHI_API_TOKEN", "KAKEHASHI_CA"):
                patch.delenv(name, raising=False)
            for name, value in env.items():
                patch.setenv(name, value)
            try:
                main(["--log-level", "ERROR", "device", *args])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    async def run(self, *args: str, token: str | None = None, env: dict[str, str] | None = None) -> Result:
        """Run ``kakehashi device ARGS`` with the agent's URL, CA and a token (the admin's unless given)."""
        settings = {
            "KAKEHASHI_AGENT_URL": self.url,
            "KAKEHASHI_CA": str(self.ca),
            "KAKEHASHI_API_TOKEN": token or self.admin,
        }
        settings.update(env or {})
        return await asyncio.to_thread(self._invoke, args, settings)

    async def shut_down(self) -> None:
        self.stop.set()
        async with asyncio.timeout(15):
            await self.task


def server_identity(directory: Path) -> tuple[Path, Path, Path]:
    """A fleet CA and a server certificate for 127.0.0.1/localhost made from a key "on the agent"."""
    ca = CertificateAuthority.init(directory / "pki")
    key = keys.generate_private_key()
    key_path = directory / "api.key"
    keys.write_private_key(key_path, key)
    record = ca.issue_server(keys.make_csr(key, "agent-api"), "agent-api", ["localhost", "127.0.0.1"])
    return ca.trust_bundle_path, Path(record.certificate_path), key_path


def port_is_free(port: int) -> bool:
    """Whether a new server could listen on ``port`` (as servers do, with SO_REUSEADDR: connections the old server
    closed may linger in TIME_WAIT, but no listener may remain)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
    return True


@pytest.fixture(name="agent")
async def agent_fixture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Agent]:
    chain, cert, key = server_identity(tmp_path)
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    admin, _ = await registry.create_api_token("root@city", ApiRole.ADMIN, actor="bootstrap")
    actions = RecorderActions()
    app = create_app(AgentRuntime(registry=registry, actions=actions))
    stop, ready = asyncio.Event(), asyncio.Event()
    port = free_port()
    task = asyncio.create_task(
        serve_api(app, host="127.0.0.1", port=port, certfile=cert, keyfile=key, stop=stop, ready=ready)
    )
    agent = Agent(f"https://127.0.0.1:{port}", port, chain, registry, actions, admin, capsys, stop, task)
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield agent
    finally:
        stop.set()
        try:
            async with asyncio.timeout(15):
                await task
        finally:
            await registry.close()


async def _fleet(agent: Agent) -> None:
    registry = agent.registry
    await registry.create_organisation("kakogawa", "Kakogawa City", actor="admin")
    await registry.create_gateway("gw-0001", "kakogawa", actor="admin", labels={"zone": "north"})
    for index in range(3):
        await registry.create_device(
            f"wl-{index:04d}", "kakogawa", "water_level", actor="admin", gateway_id="gw-0001", profile="wl-gauge"
        )


async def test_tables_json_and_one_error_line_over_real_https(agent: Agent) -> None:
    await _fleet(agent)
    table = await agent.run("list")
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[0].split() == ["ID", "KIND", "STATE", "GATEWAY", "ORGANISATION", "PROFILE", "LABELS"]
    assert lines[1].split() == ["wl-0000", "water_level", "provisioned", "gw-0001", "kakogawa", "wl-gauge", "-"]
    assert len(lines) == 4
    as_json = await agent.run("list", "--json", "--limit", "2")
    page = json.loads(as_json.out)
    assert ([d["id"] for d in page["items"]], page["total"], page["next"]) == (["wl-0000", "wl-0001"], 3, "wl-0001")
    missing = await agent.run("show", "wl-9999")
    assert missing.error_line == "error: there is no device with id 'wl-9999' (404 not_found)"
    assert missing.out == ""
    # TLS only: plain HTTP on the port gets no answer
    async with httpx.AsyncClient() as plain:
        with pytest.raises(httpx.HTTPError):
            await plain.get(f"http://127.0.0.1:{agent.port}/v1/agent/health")
    await agent.shut_down()
    assert agent.task.done()
    assert port_is_free(agent.port)
    gone = await agent.run("list")
    assert gone.error_line.startswith(f"error: cannot reach {agent.url}: ")
    assert gone.error_line.endswith("— is the agent running? check --agent")


async def test_device_commands(agent: Agent) -> None:
    await _fleet(agent)
    created = await agent.run(
        "create", "wl-0100", "--organisation", "kakogawa", "--kind", "water_level", "--label", "zone=south",
        "--latitude", "34.75", "--longitude", "134.83", "--place", "Kako bridge",
    )  # fmt: skip
    assert created.code == 0, created.err
    assert "state             registered" in created.out
    assert "34.75,134.83 Kako bridge" in created.out
    bound = await agent.run("bind", "wl-0100", "gw-0001", "--reason", "installed")
    assert bound.out.strip() == "device wl-0100 bound to gw-0001 (provisioned)"
    shown = json.loads((await agent.run("show", "wl-0100", "--json")).out)
    assert (shown["gateway"], shown["labels"]) == ("gw-0001", {"zone": "south"})
    filtered = await agent.run("list", "--label", "zone=south", "--state", "provisioned")
    assert [line.split()[0] for line in filtered.out.splitlines()[1:]] == ["wl-0100"]
    everything = json.loads((await agent.run("list", "--all", "--limit", "2", "--json")).out)
    assert len(everything["items"]) == 4
    # lifecycle by id alone (devices and gateways); the gateway has not spoken, so the device is not active yet
    refused = await agent.run("suspend", "wl-0100", "--reason", "leak")
    assert refused.error_line == (
        "error: device wl-0100 is provisioned: it cannot become suspended (allowed from provisioned: active, "
        "decommissioned) (409 illegal_transition)"
    )
    await agent.registry.record_certificate("gw-0001", "a1", datetime.now(UTC) + timedelta(days=30), actor="pki")
    reading = wire.Reading("wl-0100", "level", 1.25, "m", 1.8e9, wire.ClockQuality.SYNCED)
    await agent.registry.ingest_readings("gw-0001", [(1, 1.8e9, [reading])])
    suspended = await agent.run("suspend", "wl-0100", "--reason", "leak")
    assert suspended.out.strip() == "device wl-0100: active → suspended"
    resumed = await agent.run("resume", "wl-0100", "--reason", "fixed")
    assert resumed.out.strip() == "device wl-0100: suspended → active"
    latest = await agent.run("readings", "latest", "wl-0100")
    assert latest.out.splitlines()[1].split()[:4] == ["level", "1.25", "m", "2027-01-15T08:00:00Z"]
    history = json.loads((await agent.run("readings", "history", "wl-0100", "--since", "2027-01-01", "--json")).out)
    assert [r["value"] for r in history["items"]] == [1.25]
    desired = await agent.run("desired", "set", "wl-0100", "alarm_m=2.5", "mode=flood", "--doc", '{"poll_s": 30}')
    assert desired.out.strip() == "wl-0100: desired state version 1 queued for gateway gw-0001"
    assert agent.actions.desired == ["gw-0001"]
    twin = json.loads((await agent.run("twin", "show", "wl-0100", "--json")).out)
    assert twin["desired"] == {"alarm_m": 2.5, "mode": "flood", "poll_s": 30}
    gateway_twin = await agent.run("twin", "show", "gw-0001")
    assert "desired_version   1" in gateway_twin.out
    retired = await agent.run("decommission", "gw-0001", "--reason", "torn down")
    assert retired.out.splitlines() == ["gateway gw-0001: active → decommissioned", "revoked certificates: a1"]
    assert agent.actions.revoked == [("gw-0001", "cessation_of_operation")]
    unknown = await agent.run("transition", "nothing-1", "active", "--reason", "x")
    assert unknown.error_line == "error: there is no gateway or device with id 'nothing-1' (404 not_found)"


async def test_gateway_audit_and_token_commands(agent: Agent) -> None:
    await _fleet(agent)
    made = await agent.run("gateways", "create", "gw-0002", "--organisation", "kakogawa", "--serial", "PI-2")
    assert "presence          never heard from" in made.out
    listed = await agent.run("gateways", "list", "--state", "registered")
    assert [line.split()[0] for line in listed.out.splitlines()[1:]] == ["gw-0001", "gw-0002"]
    shown = await agent.run("gateways", "show", "gw-0001")
    assert "labels            zone=north" in shown.out
    complete = await agent.run("gateways", "completeness", "gw-0001")
    assert "complete                yes" in complete.out
    enrollment = await agent.run("enrollment-token", "create", "gw-0002", "--ttl", "2h")
    assert enrollment.code == 0, enrollment.err
    await agent.registry.consume_enrollment_token(enrollment.out.strip(), "gw-0002")
    assert "valid 7200 s" in enrollment.err
    viewer = await agent.run("api-token", "create", "sato@city", "--role", "viewer", "--ttl", "90d")
    secret = viewer.out.strip()
    assert secret.startswith("kh_")
    tokens = await agent.run("api-token", "list")
    assert [line.split()[:2] for line in tokens.out.splitlines()[1:]] == [
        ["root@city", "admin"],
        ["sato@city", "viewer"],
    ]
    as_viewer = await agent.run("api-token", "list", token=secret)
    assert as_viewer.error_line.startswith(
        "error: API token 'sato@city' has role viewer: only admin may GET /v1/api-tokens"
    )
    assert (await agent.run("list", token=secret)).code == 0
    revoked = await agent.run("api-token", "revoke", "sato@city", "--reason", "left")
    assert revoked.out.strip() == "API token sato@city revoked"
    assert "revoked (401 api_token_revoked)" in (await agent.run("list", token=secret)).error_line
    organisations = await agent.run("organisations", "list")
    assert organisations.out.splitlines()[1].split()[:3] == ["kakogawa", "Kakogawa", "City"]
    audit = await agent.run("audit", "--actor", "root@city")
    actions = [line.split()[3] for line in audit.out.splitlines()[1:]]
    assert actions == ["gateway.created", "enrollment.token_created", "api_token.created", "api_token.revoked"]
    limited = await agent.run("audit", "--limit", "1")
    assert "more entries: --after" in limited.err


async def test_connection_and_usage_errors_are_one_line(agent: Agent, tmp_path: Path) -> None:
    untrusted = await agent.run("list", env={"KAKEHASHI_CA": str(Path(__file__))})
    assert "cannot be used" in untrusted.error_line
    other_ca = CertificateAuthority.init(tmp_path / "other-pki")
    wrong = await agent.run("list", env={"KAKEHASHI_CA": str(other_ca.trust_bundle_path)})
    assert "certificate" in wrong.error_line
    assert "check --ca" in wrong.error_line
    assert "error: no API token" in (await agent.run("list", env={"KAKEHASHI_API_TOKEN": ""})).error_line
    plain = await agent.run("list", env={"KAKEHASHI_AGENT_URL": f"http://127.0.0.1:{agent.port}"})
    assert "must start with https://" in plain.error_line
    closed = free_port()
    unreachable = await agent.run("list", env={"KAKEHASHI_AGENT_URL": f"https://127.0.0.1:{closed}"})
    assert unreachable.error_line.startswith(f"error: cannot reach https://127.0.0.1:{closed}: ")
    assert "is the agent running? check --agent" in unreachable.error_line
    usage = await agent.run("desired", "set", "wl-0000", "novalue")
    assert usage.code == 2
    assert "KEY=VALUE" in usage.err


async def test_import_prints_a_report_row_by_row_and_fails_when_a_row_fails(agent: Agent, tmp_path: Path) -> None:
    await _fleet(agent)
    sheet = tmp_path / "rollout.csv"
    sheet.write_text(
        "id,organisation,kind,gateway\n"
        "wl-0200,kakogawa,water_level,gw-0001\n"
        "wl-0201,kakogawa,Water Level,gw-0001\n"
        "wl-0202,kakogawa,water_level,gw-0001\n"
    )
    checked = await agent.run("import", str(sheet), "--dry-run", "--json")
    assert checked.code == 1
    assert [row["status"] for row in json.loads(checked.out)["rows"]] == ["valid", "failed", "valid"]
    imported = await agent.run("import", str(sheet))
    assert imported.code == 1
    assert imported.out.splitlines()[-1] == "2 of 3 rows created, 1 failed"
    assert "wl-0201" in imported.out
    assert (await agent.registry.get_device("wl-0202")).gateway_id == "gw-0001"
    missing = await agent.run("import", str(tmp_path / "nothing.csv"))
    assert missing.error_line.startswith("error: cannot read")
