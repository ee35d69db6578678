"""``kakehashi bench actuation``: command round trip, API call → agent → gateway → Modbus write → succeeded.

Everything real on loopback, each part its own process: Mosquitto with the fleet's TLS and ACL; ``kakehashi agent
run`` with its HTTPS API and a SQLite registry; ``kakehashi gateway run`` polling a pymodbus water-level gauge (the
simulator runs in this process); an asset manager's HTTPS client here. Each command switches the gauge's sampling
mode (``set_mode`` normal ↔ flood: a holding-register write verified by reading it back), one after the other: the
round trip is from sending the API request to the moment the agent recorded the command ``succeeded`` (the time
in the command's history, read back through the API). JSON keys: ``p50_ms``, ``p99_ms``, ``succeeded``, ``failed``,
and ``stages_p50_ms`` (queued → sent → delivered → succeeded).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.harness import BenchFleet, agent_toml, enroll, free_port, spawn_kakehashi, terminate, until
from cloud_agent.pki.authority import CertificateAuthority
from device_registry import Registry
from hw.modbus.simulator import ModbusSimulator
from kakehashi import keys
from kakehashi.identity import Role

ORG = "bench-city"
GATEWAY = "gw-act-0001"
GAUGE = "wl-0101"
GAUGE_UNIT = 3
QUICK = {"commands": 40}
TARGET_P99_MS = 50.0
POLL_S = 0.02
"""How often the client looks; the round trip itself is measured to the final state's time in the command's history
(the agent's clock, this machine's), so polling neither adds to it nor loads the agent much."""
STAGES = {
    "queued_to_sent": ("queued", "sent"),
    "sent_to_delivered": ("sent", "delivered"),
    "delivered_to_succeeded": ("delivered", "succeeded"),
}
"""Where the time goes, from the command's own history (the agent's clock)."""

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def _server_identity(ca: CertificateAuthority, directory: Path) -> tuple[Path, Path]:
    key = keys.generate_private_key()
    record = ca.issue_server(keys.make_csr(key, "agent-bench"), "agent-bench", ["127.0.0.1"])
    directory.mkdir(parents=True, exist_ok=True)
    keys.write_private_key(directory / "api.key", key)
    keys.write_public_file(directory / "api.crt", record.certificate_path.read_bytes())
    return directory / "api.crt", directory / "api.key"


async def run_async(commands: int, progress: Progress) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kakehashi-bench-act-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o711)  # the broker may run as another user below this directory
        fleet = BenchFleet(root, CertificateAuthority.init(root / "pki"))
        agent_id = enroll(fleet.ca, Role.SERVICE, "agent-bench", root / "agent")
        gateway_id = enroll(fleet.ca, Role.GATEWAY, GATEWAY, root / "gateway")
        certfile, keyfile = _server_identity(fleet.ca, root / "api")
        url = f"sqlite+aiosqlite:///{root / 'registry.db'}"
        registry = await Registry.open(url)
        try:
            await registry.create_organisation(ORG, "Benchmark City", actor="bench")
            await registry.create_gateway(GATEWAY, ORG, actor="bench")
            for record in fleet.ca.records_for(GATEWAY):
                await registry.record_certificate(GATEWAY, record.serial_hex, record.not_after, actor="bench")
            await registry.create_device(GAUGE, ORG, "water_level", actor="bench", gateway_id=GATEWAY,
                                         profile="water-level")  # fmt: skip
            token, _ = await registry.create_api_token("bench@city", "asset-manager", actor="bench")
        finally:
            await registry.close()
        broker = await fleet.start_broker(free_port())
        api_port = free_port()
        api = f'[api]\nhost = "127.0.0.1"\nport = {api_port}\ncertfile = "{certfile}"\nkeyfile = "{keyfile}"\n'
        (root / "agent.toml").write_text(agent_toml("agent-bench", agent_id, broker.endpoint, url, api))
        try:
            async with ModbusSimulator({GAUGE_UNIT: "water-level"}) as modbus:
                (root / "gateway.toml").write_text(
                    f"""
[gateway]
id = "{GATEWAY}"
data_dir = "{root / "gateway-data"}"
[uplink]
host = "127.0.0.1"
port = {broker.endpoint.port}
ca_file = "{gateway_id.ca_file}"
cert_file = "{gateway_id.cert_file}"
key_file = "{gateway_id.key_file}"
heartbeat_s = 5
[[sources.modbus.buses]]
name = "meters"
host = "127.0.0.1"
port = {modbus.port}
[[sources.modbus.buses.devices]]
id = "{GAUGE}"
unit = {GAUGE_UNIT}
profile = "water-level"
poll_interval_s = 1.0
"""
                )
                progress("starting the agent and the gateway as their own processes")
                agent = spawn_kakehashi(["agent", "run", "--config", str(root / "agent.toml")], root / "agent.log")
                gateway = spawn_kakehashi(
                    ["gateway", "run", "--config", str(root / "gateway.toml")], root / "gateway.log"
                )
                try:
                    return await _measure(root, api_port, token, fleet.ca.trust_bundle_path, commands, progress)
                finally:
                    terminate(gateway)
                    terminate(agent)
        finally:
            await BenchFleet.stop_broker(broker)


async def _measure(
    root: Path, api_port: int, token: str, ca: Path, commands: int, progress: Progress
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{api_port}", headers=headers, verify=str(ca), timeout=10
    ) as api:

        async def gateway_online() -> bool:
            with contextlib.suppress(httpx.TransportError):
                doc = (await api.get(f"/v1/gateways/{GATEWAY}")).json()
                return bool((doc.get("presence") or {}).get("online"))
            return False

        await until(gateway_online, 60, f"gateway {GATEWAY} online (logs in {root})")
        progress(f"{commands} commands, one after the other: set_mode flood/normal on {GAUGE}")
        latencies: list[float] = []
        stages: dict[str, list[float]] = {}
        outcomes: dict[str, int] = {}
        reasons: dict[str, int] = {}
        for index in range(commands + 3):  # the first three warm the path up and are not counted
            body = {
                "name": "set_mode",
                "params": {"value": "flood" if index % 2 == 0 else "normal"},
                "ttl_s": 30,
                "idempotency_key": f"bench-{index}",
            }
            started = time.perf_counter()
            sent_at = datetime.now(UTC)
            created = await api.post(f"/v1/devices/{GAUGE}/commands", json=body)
            if created.status_code != 201:
                raise RuntimeError(f"benchmark: the API refused the command: {created.status_code} {created.text}")
            command_id = created.json()["id"]
            while True:
                doc = (await api.get(f"/v1/commands/{command_id}")).json()
                if doc["final"]:
                    break
                if time.perf_counter() - started > 30:
                    raise RuntimeError(f"benchmark: command {command_id} still {doc['state']} after 30 s")
                await asyncio.sleep(POLL_S)
            if index < 3:
                continue
            steps = {step["state"]: datetime.fromisoformat(step["at"]) for step in doc.get("history") or []}
            final_at = steps.get(doc["state"])
            if final_at is None:
                raise RuntimeError(f"benchmark: command {command_id} has no {doc['state']} step in its history")
            latencies.append((final_at - sent_at).total_seconds() * 1000)
            for name, (a, b) in STAGES.items():
                if a in steps and b in steps:
                    stages.setdefault(name, []).append((steps[b] - steps[a]).total_seconds() * 1000)
            outcomes[doc["state"]] = outcomes.get(doc["state"], 0) + 1
            if doc["state"] != "succeeded":
                reasons[str(doc.get("reason"))] = reasons.get(str(doc.get("reason")), 0) + 1
    ordered = sorted(latencies)
    return {
        "commands": commands,
        "p50_ms": round(_percentile(ordered, 0.50), 1),
        "p99_ms": round(_percentile(ordered, 0.99), 1),
        "max_ms": round(ordered[-1], 1) if ordered else 0.0,
        "stages_p50_ms": {name: round(_percentile(sorted(v), 0.5), 1) for name, v in stages.items()},
        "succeeded": outcomes.get("succeeded", 0),
        "failed": commands - outcomes.get("succeeded", 0),
        "failures": reasons,
        "targets": {"p99_ms": TARGET_P99_MS},
        "comparison": {"thingsboard_gateway_modbus_rpc_median_ms": 301},
    }


def run(*, commands: int = 300, progress: Progress | None = None) -> dict[str, Any]:
    return asyncio.run(run_async(commands, progress or _quiet))
