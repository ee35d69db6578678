"""``kakehashi demo``: the whole system on this machine, with simulated hardware and the embedded defaults.

What runs (everything real except the hardware, which is simulated at its own interface):

* the fleet PKI: the agent's service and HTTPS identities and an edge node (keys made where they are used, only
  CSRs travel);
* the fleet broker (Mosquitto, TLS with client certificates, per-identity ACL) and the gateway's local broker for its
  nodes (``--profile local``);
* hardware simulators: a pymodbus TCP server with an SDM120 energy meter, a water meter and a water-level gauge; an
  IM920 920 MHz module on a socat PTY receiving from watch tags and a gauge; BLE watch tags (with rotating MACs, plus
  strangers' tags that must be dropped) through a simulated bleak backend; the river water-level node's real
  MicroPython firmware on the unix port (``kakehashi.demo_node``), reporting a flood to the gateway's local broker;
* the real gateway service (``gateway.service``) reading all of them into its outbox and forwarding to the broker;
* the cloud agent (``cloud_agent.service``) with its HTTPS API: an asset manager registers the gateway, imports the
  devices from a CSV sheet and makes a one-time enrollment token; the gateway makes its key and enrolls over HTTPS;
  every reading is stored once in the registry (SQLite); a desired setting round-trips through the twin; commands
  open a valve, switch the node to flood mode and (after a second person confirms) close the valve again;
* a City OS: the NGSI-LD broker stand-in (``hw/cityos``) receiving Smart Data Models entities from the agent's
  northbound feed, through an outage of a few seconds, with watch tags only as counts per zone and hour.

It also shows that a foreign certificate and a revoked one are refused. ``--seconds N --json`` runs headless and
prints one JSON summary; the exit status is non-zero if any accepted reading was lost or any check failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson
import sqlalchemy as sa

from bench.harness import enroll, free_port
from cloud_agent.api_client import ApiClient
from cloud_agent.config import parse_config as parse_agent_config
from cloud_agent.northbound.mapping import CONTEXTS
from cloud_agent.pki.authority import CertificateAuthority
from cloud_agent.service import AgentService, run_agent
from device_registry import Registry
from device_registry.schema import readings as readings_table
from gateway.config import parse_config
from gateway.enrollment import enroll_gateway
from gateway.service import Gateway, run_gateway
from hw.ble.population import population as ble_population
from hw.ble.simulator import SimulatedAir, attached
from hw.cityos import NgsiLdBroker, StandInServer
from hw.lpwa.simulator import LpwaModuleSimulator, default_population, gateway_toml
from hw.modbus.simulator import ModbusSimulator
from kakehashi import ui
from kakehashi.broker.runner import AccessProfile, run_broker
from kakehashi.demo_node import NodeStats, run_node
from kakehashi.identity import Role
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity
from kakehashi.mqtt_link import LinkError, MqttLink

AGENT_ID = "agent-demo"
ORG = "kakogawa"
MANAGER = "tanaka@city.kakogawa"
GATEWAY_ID = "gw-demo-0001"
REVOKED_ID = "gw-demo-0002"
NODE_ID = "wl-0201"
VALVE_ID = "wm-0001"
CITY_TENANT = "kakogawa"
CITY_OUTAGE_S = 3.0
ZONE = "kakogawa-north"
GATEWAY_LOCATION = {"latitude": 34.7566, "longitude": 134.8411, "place": "Kakogawa river, pumping station 3"}
BLE_ADAPTER = "hci-demo"
MODBUS_DEVICES = {1: ("em-0001", "sdm120"), 2: ("wm-0001", "water-meter"), 3: ("wl-0101", "water-level")}
DRAIN_SECONDS = 10.0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


async def _refused(endpoint: BrokerEndpoint, identity: TlsIdentity, client_id: str) -> tuple[bool, str]:
    try:
        async with MqttLink(endpoint, identity, client_id=client_id, connect_timeout_s=5.0):
            return False, "connected"
    except LinkError as exc:
        return True, exc.message


@contextlib.asynccontextmanager
async def _broker(ca: CertificateAuthority, rundir: Path, profile: AccessProfile) -> AsyncIterator[BrokerEndpoint]:
    port = free_port()
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        run_broker(ca.path, rundir, "127.0.0.1", port, stop=stop, profile=profile, on_ready=lambda *_: ready.set())
    )
    waiter = asyncio.get_running_loop().create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()
    try:
        yield BrokerEndpoint("127.0.0.1", port)
    finally:
        stop.set()
        await task


def _gateway_config(workdir: Path, fleet: BrokerEndpoint, local: BrokerEndpoint, gateway: TlsIdentity,
                    modbus_port: int, lpwa_link: Path, lpwa_devices: list[Any], ble_tags: list[dict[str, Any]],
                    ) -> dict[str, Any]:  # fmt: skip
    lpwa_section = gateway_toml(str(lpwa_link), "im920", lpwa_devices)
    import tomllib

    lpwa = tomllib.loads(lpwa_section)["sources"]["lpwa"]
    return {
        "gateway": {"id": GATEWAY_ID, "data_dir": str(workdir / "gateway-data")},
        "uplink": {
            "host": fleet.host,
            "port": fleet.port,
            "ca_file": str(gateway.ca_file),
            "cert_file": str(gateway.cert_file),
            "key_file": str(gateway.key_file),
            "heartbeat_s": 5,
        },
        "outbox": {"budget_mb": 64},
        "sources": {
            "modbus": {
                "buses": [
                    {
                        "name": "meters",
                        "host": "127.0.0.1",
                        "port": modbus_port,
                        "devices": [
                            {"id": dev, "unit": unit, "profile": profile, "poll_interval_s": 1.0}
                            for unit, (dev, profile) in MODBUS_DEVICES.items()
                        ],
                    }
                ]
            },
            "ble": {
                "adapter": BLE_ADAPTER,
                "window_s": 2.0,
                "tags": ble_tags,
                "backend": "hw.ble.simulator:SimulatedScannerBackend",
            },
            "lpwa": lpwa,
            "nodes": {"host": local.host, "port": local.port, "nodes": [{"id": NODE_ID}]},
        },
    }


async def _api(client: ApiClient, method: str, path: str, body: Any = None, **params: Any) -> Any:
    """One API call from this process's event loop (the sync client runs on a worker thread)."""
    if method == "GET":
        return await asyncio.to_thread(client.get, path, **params)
    return await asyncio.to_thread(client.request, method, path, body=body)


def _registration_csv(lpwa_devices: list[Any], ble_tags: list[dict[str, Any]]) -> bytes:
    """The field roll-out sheet the asset manager imports: every device behind the demo gateway."""
    rows = ["id,organisation,kind,profile,gateway,consent,retention_days,place"]
    for dev, profile in MODBUS_DEVICES.values():
        kind = {"sdm120": "energy_meter", "water-meter": "water_meter", "water-level": "water_level"}[profile]
        rows.append(f"{dev},{ORG},{kind},{profile},{GATEWAY_ID},,,pump station 3")
    rows.append(f"{NODE_ID},{ORG},water_level,khnode,{GATEWAY_ID},,,Kakogawa river bank")
    for device in lpwa_devices:
        if device.device_id.startswith("tag-"):
            rows.append(f"{device.device_id},{ORG},watch_tag,,,yes,30,")
        else:
            rows.append(f"{device.device_id},{ORG},water_level,,{GATEWAY_ID},,,Kakogawa river bank")
    for tag in ble_tags:
        rows.append(f"{tag['id']},{ORG},watch_tag,,,yes,30,")
    return ("\n".join(rows) + "\n").encode()


async def _wait_until(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.2)
    return bool(await predicate())


async def run_demo(workdir: Path, seconds: float, *, progress: bool = True) -> dict[str, Any]:
    """Run the demo in ``workdir`` for ``seconds``; returns the summary document."""

    def say(text: str) -> None:
        if progress:
            ui.progress(text)

    checks: list[Check] = []
    say(f"fleet PKI in {workdir / 'pki'}: the agent's identities, an edge node, and two identities that must fail")
    ca = CertificateAuthority.init(workdir / "pki")
    devices = workdir / "devices"
    agent_identity = enroll(ca, Role.SERVICE, AGENT_ID, devices / AGENT_ID)
    api_key, api_cert = devices / "api" / "api.key", devices / "api" / "api.crt"
    _issue_api_certificate(ca, api_key, api_cert)
    node_identity = enroll(ca, Role.NODE, NODE_ID, devices / NODE_ID)
    revoked = enroll(ca, Role.GATEWAY, REVOKED_ID, devices / REVOKED_ID)
    ca.revoke(REVOKED_ID, "key_compromise")
    foreign_ca = CertificateAuthority.init(workdir / "foreign-pki")
    foreign = enroll(foreign_ca, Role.GATEWAY, GATEWAY_ID, devices / "impostor")
    impostor = TlsIdentity(ca.trust_bundle_path, foreign.cert_file, foreign.key_file)

    lpwa_devices = default_population("im920", tags=3, gauges=1, sos_probability=0.05)
    tags = ble_population(registered=6, strangers=12, noise=4, malformed=1, seed=7, interval_s=0.5, rotate_s=5.0)
    ble_tags = [
        {"id": f"bt-{i + 1:04d}", "key": tag.key, "consent": True}
        for i, tag in enumerate(t for t in tags if t.label.startswith("tag-"))
    ]
    air = SimulatedAir(tags, seed=7)

    city = NgsiLdBroker(allowed_contexts=set(CONTEXTS.values()))
    say("starting Mosquitto (fleet, and the gateway's local broker for nodes), the hardware simulators and a City OS")
    async with (
        _broker(ca, workdir / "broker", AccessProfile()) as fleet_endpoint,
        _broker(ca, workdir / "local-broker", AccessProfile("local", GATEWAY_ID)) as local_endpoint,
        ModbusSimulator({unit: profile for unit, (_, profile) in MODBUS_DEVICES.items()}) as modbus,
        LpwaModuleSimulator("im920", link_path=workdir / "lpwa0", devices=lpwa_devices, interval_s=0.4) as _lpwa,
        StandInServer(city.app()) as city_server,
    ):
        with attached(BLE_ADAPTER, air):
            refused, detail = await _refused(fleet_endpoint, impostor, GATEWAY_ID)
            checks.append(Check("foreign certificate refused", refused, detail))
            refused, detail = await _refused(fleet_endpoint, revoked, REVOKED_ID)
            checks.append(Check("revoked certificate refused", refused, detail))

            api_port = free_port()
            agent_config = parse_agent_config(
                {
                    "agent": {"id": AGENT_ID},
                    "broker": {
                        "host": fleet_endpoint.host,
                        "port": fleet_endpoint.port,
                        "ca_file": str(agent_identity.ca_file),
                        "cert_file": str(agent_identity.cert_file),
                        "key_file": str(agent_identity.key_file),
                    },
                    "database": {"url": f"sqlite+aiosqlite:///{workdir / 'registry.db'}"},
                    "api": {"host": "127.0.0.1", "port": api_port, "certfile": str(api_cert), "keyfile": str(api_key)},
                    "pki": {"dir": str(ca.path)},
                    "presence": {"heartbeat_timeout_s": 20, "check_interval_s": 1},
                    "northbound": {
                        "kind": "ngsi-ld",
                        "url": city_server.url,
                        "tenant": CITY_TENANT,
                        "crowd_flush_s": 2.0,
                    },
                },
                workdir / "agent.toml",
            )
            stop_agent = asyncio.Event()
            agent_started: asyncio.Future[AgentService] = asyncio.get_running_loop().create_future()
            async with asyncio.TaskGroup() as outer:
                agent_task = outer.create_task(
                    run_agent(agent_config, stop=stop_agent, on_started=agent_started.set_result)
                )
                agent = await agent_started
                async with asyncio.timeout(20):
                    await agent.api_ready.wait()
                url = f"https://127.0.0.1:{api_port}"
                say(f"cloud agent running: registry {workdir / 'registry.db'}, HTTPS API {url}/docs")
                try:
                    summary = await _with_agent(
                        agent, url, ca, workdir, say, checks, seconds, fleet_endpoint, local_endpoint, modbus.port,
                        node_identity, lpwa_devices, ble_tags, CityOs(city, city_server),
                    )  # fmt: skip
                finally:
                    stop_agent.set()
                await agent_task
    return summary


def _issue_api_certificate(ca: CertificateAuthority, key_path: Path, cert_path: Path) -> None:
    """The agent's HTTPS server certificate (what ``kakehashi pki issue-server`` does)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from kakehashi import keys

    key = keys.generate_private_key()
    record = ca.issue_server(keys.make_csr(key, AGENT_ID), AGENT_ID, ["127.0.0.1", "localhost"])
    key_path.parent.mkdir(parents=True, exist_ok=True)
    keys.write_private_key(key_path, key)
    keys.write_public_file(
        cert_path, record.certificate_path.read_bytes() + ca.issuing_certificate.public_bytes(Encoding.PEM)
    )


async def _with_agent(
    agent: AgentService,
    url: str,
    ca: CertificateAuthority,
    workdir: Path,
    say: Any,
    checks: list[Check],
    seconds: float,
    fleet_endpoint: BrokerEndpoint,
    local_endpoint: BrokerEndpoint,
    modbus_port: int,
    node_identity: TlsIdentity,
    lpwa_devices: list[Any],
    ble_tags: list[dict[str, Any]],
    city: CityOs,
) -> dict[str, Any]:
    registry = agent.registry
    admin_secret, _ = await registry.create_api_token("demo-admin", "admin", actor="operator")
    with ApiClient(url, admin_secret, ca=ca.trust_bundle_path) as admin:
        await _api(admin, "POST", "/v1/organisations", {"id": ORG, "name": "Kakogawa City"})
        created = await _api(admin, "POST", "/v1/api-tokens", {"name": MANAGER, "role": "asset-manager"})
        city_os_token = (await _api(admin, "POST", "/v1/api-tokens", {"name": "city-os", "role": "city-os"}))["token"]
    with ApiClient(url, created["token"], ca=ca.trust_bundle_path) as manager:
        say(f"asset manager {MANAGER}: registers the gateway, imports the devices from CSV, makes an enrollment token")
        gateway_doc = {"id": GATEWAY_ID, "organisation": ORG, "location": GATEWAY_LOCATION, "labels": {"zone": ZONE}}
        await _api(manager, "POST", "/v1/gateways", gateway_doc)
        report = await asyncio.to_thread(manager.import_devices, _registration_csv(lpwa_devices, ble_tags))
        imported = report.get("created", 0) if isinstance(report, dict) else 0
        failed = report.get("failed", 0) if isinstance(report, dict) else 0
        checks.append(
            Check("CSV roll-out imported", failed == 0 and imported > 0, f"{imported} created, {failed} failed")
        )
        tag_ids = [d.device_id for d in lpwa_devices if d.device_id.startswith("tag-")] + [t["id"] for t in ble_tags]
        for tag in tag_ids:  # consent forms signed: the tags may be stored from now on
            await _api(
                manager, "POST", f"/v1/devices/{tag}/lifecycle", {"to": "provisioned", "reason": "consent form signed"}
            )
        token = (await _api(manager, "POST", f"/v1/gateways/{GATEWAY_ID}/enrollment-tokens", {"ttl_s": 3600}))["token"]

        say(f"technician: {GATEWAY_ID} makes its key on the Pi and enrolls over HTTPS with the one-time token")
        installed = await enroll_gateway(url, ca.trust_bundle_path, GATEWAY_ID, token, workdir / "gateway-identity")
        gateway_state = (await _api(manager, "GET", f"/v1/gateways/{GATEWAY_ID}"))["state"]
        checks.append(Check("gateway enrolled with a one-time token", gateway_state == "provisioned",
                            f"serial {installed.serial}, state {gateway_state}"))  # fmt: skip
        gateway_identity = TlsIdentity(installed.trust_bundle, installed.certificate, installed.key)
        await asyncio.sleep(1.2)  # the broker picks the new identity into its ACL within a second

        doc = _gateway_config(workdir, fleet_endpoint, local_endpoint, gateway_identity, modbus_port,
                              workdir / "lpwa0", lpwa_devices, ble_tags)  # fmt: skip
        config = parse_config(doc, workdir / "gateway.toml")
        stop_gateway, stop_node = asyncio.Event(), asyncio.Event()
        node_stats = NodeStats()
        started: list[Gateway] = []
        async with asyncio.TaskGroup() as tg:
            say(f"gateway {GATEWAY_ID} running for {seconds:g} s: Modbus, BLE, LPWA and a node → outbox → agent")
            gateway_task = tg.create_task(run_gateway(config, stop=stop_gateway, on_started=started.append))
            node_ready = asyncio.Event()
            node_task = tg.create_task(
                run_node(workdir, NODE_ID, local_endpoint, node_identity, node_stats, stop_node, ready=node_ready)
            )
            await node_ready.wait()
            await asyncio.sleep(min(3.0, seconds / 2))
            say("asset manager: heartbeat_s = 7 through the twin; the gateway applies it and reports back")
            sent = await _api(
                manager, "PATCH", f"/v1/gateways/{GATEWAY_ID}/twin/desired", {"delta": {"heartbeat_s": 7}}
            )

            async def applied() -> bool:
                twin = await _api(manager, "GET", f"/v1/gateways/{GATEWAY_ID}/twin")
                return bool(twin["reported_version"] >= sent["version"])

            round_trip = await _wait_until(applied, 15)
            twin = await _api(manager, "GET", f"/v1/gateways/{GATEWAY_ID}/twin")
            settings = twin["reported"].get("settings", {})
            detail = f"version {twin['reported_version']}, heartbeat_s {settings.get('heartbeat_s')}"
            ok = round_trip and settings.get("heartbeat_s") == 7
            checks.append(Check("twin round trip (desired → gateway → reported)", ok, detail))
            started_commands = time.monotonic()
            say("asset manager: opens valve wm-0001, switches node wl-0201 to flood mode, asks to close the valve")
            commands = await _actuation(manager, url, admin_secret, ca, checks, say)
            say(f"the City OS goes down for {CITY_OUTAGE_S:g} s; the agent keeps every update for it")
            await city.server.down()
            await asyncio.sleep(CITY_OUTAGE_S)
            await city.server.up()
            spent = time.monotonic() - started_commands + min(3.0, seconds / 2)
            await asyncio.sleep(max(0.0, seconds - spent))
            stop_node.set()
            await node_task
            stop_gateway.set()
            gw = await gateway_task
        stats = await _final_outbox_stats(config.outbox_path, config.outbox.budget_bytes)
        expected = stats["accepted"] - stats["stored"] - stats["dropped"]

        async def all_stored() -> bool:
            return await _stored(registry) + sum(agent.metrics.readings_rejected.values()) >= expected

        await _wait_until(all_stored, DRAIN_SECONDS)

        async def city_caught_up() -> bool:
            return (await registry.northbound_depth()).pending == 0

        await _wait_until(city_caught_up, DRAIN_SECONDS)
        await asyncio.sleep(2.5)  # one more crowd-count flush
        listing = await _api(manager, "GET", "/v1/devices", limit=100)
        node_latest = await _api(manager, "GET", f"/v1/devices/{NODE_ID}/latest")
        node_stats.latest = {item["quantity"]: item["value"] for item in node_latest["items"]}
        gateway = await _api(manager, "GET", f"/v1/gateways/{GATEWAY_ID}")
    city_summary = await _city_summary(agent, city.broker, checks, [t["id"] for t in ble_tags])
    with ApiClient(url, city_os_token, ca=ca.trust_bundle_path) as city_os:  # the City OS queries the agent directly
        found = await _api(city_os, "GET", "/ngsi-ld/v1/entities", type="WaterObserved", q="height>0")
    heights = {str(e["id"]): e["height"]["value"] for e in found if isinstance(e, dict) and "height" in e}
    checks.append(Check("context-source API answers the City OS's query", bool(heights),
                        "GET /ngsi-ld/v1/entities?type=WaterObserved&q=height>0: "
                        + ", ".join(f"{i.rsplit(':', 1)[-1]} {v} m" for i, v in sorted(heights.items()))))  # fmt: skip
    city_summary["context_source_query"] = heights
    summary = await _summary(agent, gw, stats, node_stats, checks, seconds, listing["items"], gateway, commands)
    summary["city_os"] = city_summary
    return summary


async def _command(client: ApiClient, device: str, name: str, params: dict[str, Any], key: str) -> dict[str, Any]:
    body = {"name": name, "params": params, "ttl_s": 60, "idempotency_key": key}
    created: dict[str, Any] = await _api(client, "POST", f"/v1/devices/{device}/commands", body)
    return created


async def _final(client: ApiClient, command_id: str, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        doc: dict[str, Any] = await _api(client, "GET", f"/v1/commands/{command_id}")
        if doc["final"] or time.monotonic() > deadline:
            return doc
        await asyncio.sleep(0.1)


async def _actuation(
    manager: ApiClient, url: str, admin_secret: str, ca: CertificateAuthority, checks: list[Check], say: Any
) -> list[dict[str, Any]]:
    """Three commands through the API, each watched to its final state: open a valve (Modbus coil, read back),
    flood mode on the MicroPython node (relayed over the local broker, acknowledged by the node), and closing the
    valve, which its profile says a second person must confirm."""
    opened = await _command(manager, VALVE_ID, "open", {}, "demo-open-valve")
    flood = await _command(manager, NODE_ID, "flood_mode", {"on": True, "minutes": 30}, "demo-flood-mode")
    close = await _command(manager, VALVE_ID, "close", {}, "demo-close-valve")
    waiting = close["state"]
    with ApiClient(url, admin_secret, ca=ca.trust_bundle_path) as second:  # another person confirms
        await _api(second, "POST", f"/v1/commands/{close['id']}/confirm")
    done = [await _final(manager, command["id"], 30) for command in (opened, flood, close)]
    for doc in done:
        steps = " → ".join(step["state"] for step in doc["history"] or [])
        checks.append(Check(f"command {doc['name']} on {doc['device']} succeeded", doc["state"] == "succeeded", steps))
    checks.append(Check("closing the valve waited for a second person", waiting == "awaiting_confirmation",
                        f"created {waiting}, confirmed by demo-admin"))  # fmt: skip
    say("commands: " + "; ".join(f"{d['name']} on {d['device']}: {d['state']}" for d in done))
    return [
        {"id": d["id"], "device": d["device"], "name": d["name"], "state": d["state"], "result": d["result"],
         "history": [step["state"] for step in d["history"] or []]}
        for d in done
    ]  # fmt: skip


@dataclass
class CityOs:
    """The demo's City OS: an NGSI-LD broker stand-in (hw/cityos) and its server."""

    broker: NgsiLdBroker
    server: StandInServer


async def _city_summary(
    agent: AgentService, city: NgsiLdBroker, checks: list[Check], tag_ids: list[str]
) -> dict[str, Any]:
    """What the City OS holds: entities by type, one water observation, and the northbound's outcome."""
    entities = city.entities(CITY_TENANT)
    by_type: dict[str, int] = {}
    for entity in entities.values():
        by_type[str(entity["type"])] = by_type.get(str(entity["type"]), 0) + 1
    depth = await agent.registry.northbound_depth()
    expected = {"Device", "WaterObserved", "FloodMonitoring", "WaterConsumptionObserved", "ACMeasurement",
                "CrowdFlowObserved"}  # fmt: skip
    missing = sorted(expected - set(by_type))
    checks.append(Check("City OS received entities for every device kind", not missing,
                        ", ".join(f"{t} {n}" for t, n in sorted(by_type.items())) if not missing
                        else f"missing: {', '.join(missing)}"))  # fmt: skip
    outcome = f"{len(city.updates)} updates accepted, {depth.pending} waiting, {depth.dead} refused"
    checks.append(Check("nothing lost for the City OS across its outage", depth.pending == depth.dead == 0, outcome))
    leaked = [tag for tag in tag_ids if any(tag in str(entity) for entity in entities.values())]
    checks.append(Check("watch tags reach the City OS only as counts per zone and hour", not leaked,
                        f"{by_type.get('CrowdFlowObserved', 0)} zone-hour counts, no tag id"
                        if not leaked else f"leaked: {leaked}"))  # fmt: skip
    water = entities.get(f"urn:ngsi-ld:WaterObserved:{NODE_ID}")
    return {"entities_by_type": by_type, "updates": len(city.updates), "example": water}


async def _stored(registry: Registry) -> int:
    async with registry.engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(readings_table))).scalar_one())


async def _stored_per_message(registry: Registry) -> tuple[int, int]:
    """(readings rows, distinct (gateway, seq, device, quantity, observed time)): equal when nothing is stored twice."""
    async with registry.engine.connect() as conn:
        rows = await _stored(registry)
        key = sa.select(
            readings_table.c.gateway_id, readings_table.c.seq, readings_table.c.device_id, readings_table.c.quantity,
            readings_table.c.observed_at,
        ).distinct()  # fmt: skip
        distinct = (await conn.execute(sa.select(sa.func.count()).select_from(key.subquery()))).scalar_one()
    return rows, int(distinct)


async def _final_outbox_stats(path: Path, budget: int) -> dict[str, int]:
    from gateway.outbox_store import OutboxStore

    store = await asyncio.to_thread(OutboxStore, path, budget)
    try:
        stats = store.stats()
    finally:
        store.close()
    return {"accepted": stats.accepted_readings, "stored": stats.depth_readings, "dropped": stats.dropped_readings}


async def _summary(
    agent: AgentService,
    gw: Gateway,
    stats: dict[str, int],
    node: NodeStats,
    checks: list[Check],
    seconds: float,
    devices: list[dict[str, Any]],
    gateway: dict[str, Any],
    commands: list[dict[str, Any]],
) -> dict[str, Any]:
    by_source = {name: health.readings for name, health in gw.health.items()}
    rows, distinct = await _stored_per_message(agent.registry)
    rejected = sum(agent.metrics.readings_rejected.values())
    expected = stats["accepted"] - stats["stored"] - stats["dropped"]
    lost = expected - rows - rejected
    for name, count in sorted(by_source.items()):
        checks.append(Check(f"source {name} produced readings", count > 0, f"{count} readings"))
    firmware = node.firmware + (f" ({node.fallback_reason})" if node.fallback_reason else "")
    checks.append(Check("edge node runs the MicroPython firmware", node.fallback_reason is None, firmware))
    checks.append(Check("node readings acknowledged end to end", len(node.acked) > 0 and node.unacked_at_end == 0,
                        f"{len(node.acked)} of {node.sent} messages acknowledged by the gateway's relay"))  # fmt: skip
    inactive = [d["id"] for d in devices if d["state"] != "active"]
    checks.append(Check("every device active after its first reading", not inactive,
                        "all active" if not inactive else f"not active: {', '.join(inactive)}"))  # fmt: skip
    checks.append(Check("every accepted reading stored exactly once", lost == 0 and rows == distinct and rejected == 0,
                        f"{rows} stored, {lost} lost, {rows - distinct} stored twice, {rejected} rejected, "
                        f"{agent.metrics.duplicates} redeliveries recognised"))  # fmt: skip
    presence = gateway.get("presence") or {}
    return {
        "seconds": seconds,
        "identities": {
            "foreign_refused": checks[0].passed,
            "revoked_refused": checks[1].passed,
        },
        "readings": {
            "accepted": stats["accepted"],
            "forwarded": gw.uplink.stats.published_readings,
            "stored_by_agent": rows,
            "stored_at_exit": stats["stored"],
            "dropped_by_budget": stats["dropped"],
            "rejected_by_agent": rejected,
            "redeliveries_recognised": agent.metrics.duplicates,
            "lost": lost,
        },
        "by_source": by_source,
        "devices": {d["id"]: {"kind": d["kind"], "state": d["state"]} for d in devices},
        "gateway": {"id": GATEWAY_ID, "state": gateway["state"], "online": presence.get("online")},
        "node": {
            "id": NODE_ID,
            "firmware": node.firmware,
            "wakes": node.wakes,
            "acknowledged": len(node.acked),
            "latest": node.latest,
        },
        "agent": agent.metrics.snapshot(),
        "commands": commands,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in checks],
        "ok": all(c.passed for c in checks),
    }


def _print_human(summary: dict[str, Any]) -> None:
    rows = [{"check": c["name"], "result": "PASS" if c["passed"] else "FAIL", "detail": c["detail"][:70]}
            for c in summary["checks"]]  # fmt: skip
    ui.print_table(rows, ["check", "result", "detail"])
    click.echo("")
    ui.print_table([{"device": d, **v} for d, v in summary["devices"].items()], ["device", "kind", "state"])
    click.echo("")
    city = summary["city_os"]
    click.echo("City OS (NGSI-LD): " + ", ".join(f"{t} {n}" for t, n in sorted(city["entities_by_type"].items())))
    if city["example"]:
        click.echo(orjson.dumps(city["example"], option=orjson.OPT_INDENT_2).decode())
    click.echo("")
    node = summary["node"]
    latest = ", ".join(f"{quantity} {value}" for quantity, value in sorted(node["latest"].items()))
    click.echo(f"node {node['id']} ({node['firmware']}, {node['wakes']} wakes), latest in the registry: {latest}")
    click.echo("")
    ui.print_kv(summary["readings"].items())
    click.echo("")
    click.echo("demo OK" if summary["ok"] else "demo FAILED: see the checks above")


@click.command()
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(min=3.0, max=86400.0),
              help="How long the gateway runs.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Run headless and print one JSON summary.")
@click.option("--dir", "workdir", type=click.Path(path_type=Path), default=None,
              help="Keep the demo's PKI, brokers and gateway files here (default: a temporary directory).")  # fmt: skip
def demo(seconds: float, as_json: bool, workdir: Path | None) -> None:
    """Run the whole system on this machine with simulated hardware and embedded defaults."""
    keep = workdir is not None
    root = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="kakehashi-demo-"))
    if not keep:
        root.chmod(0o711)  # let Mosquitto, started as root, drop to its own user and still reach its run directory
    if keep and root.exists() and any(root.iterdir()):
        ui.fail(f"{root} is not empty: pass an empty or new --dir (the demo creates a fresh PKI there)")
    try:
        summary = asyncio.run(run_demo(root.resolve(), seconds, progress=not as_json))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    if as_json:
        ui.print_json(summary)
    else:
        _print_human(summary)
    if not summary["ok"]:
        raise SystemExit(1)
