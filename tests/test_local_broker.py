"""The gateway's local broker run from its enrollment material alone (``kakehashi broker run --config gateway.toml``).

A gateway is provisioned through the agent's real HTTPS enrollment API into temp directories that never hold a CA
key; its local Mosquitto (real, TLS) then admits node certificates of the fleet CA, confines each bound node to its
own topics (checked by delivery, not SUBACKs), refuses a foreign certificate, cuts off a node revoked by a CRL that
arrives on ``down/crl`` through the real gateway service, handles a CRL going stale (open and closed), and extends
its ACL when ``gateway.toml`` binds another node.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cloud_agent.fleet_actions import CrlPublisher, CurrentLink
from cloud_agent.metrics import AgentMetrics
from cloud_agent.pki.authority import CertificateAuthority
from cloud_agent.pki.policy import ValidityPolicy
from device_registry import Registry
from gateway.config import GatewayConfig, load_config
from gateway.fleet_crl import store_crl
from gateway.selftest import run_selftest
from gateway.selftest_model import Check, Status
from gateway.service import run_gateway
from kakehashi import wire
from kakehashi.identity import Role, local_broker_name
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity, client_tls_context
from kakehashi.mqtt_link import LinkError, MqttLink, PublishRefusedError
from tests.cli_support import Cli, enrollment_api
from tests.cli_support import cli_fixture as cli_fixture
from tests.conftest import Fleet
from tests.fleet import RunningBroker, free_port, make_identity, start_local_broker
from tests.test_provision import GW
from tests.test_provision import registry as registry

NAME = local_broker_name(GW)


@pytest.fixture
async def pi(cli: Cli, fleet: Fleet, registry: Registry, tmp_path: Path) -> Path:
    """A gateway provisioned like a Pi: keys made here, certificates from the enrollment API; returns its config."""
    token = await registry.create_enrollment_token(GW, actor="alice")
    root = tmp_path / "pi"
    async with enrollment_api(fleet, registry, tmp_path) as url:
        result = await cli(
            "gateway", "provision", "--token", token, "--agent", url, "--id", GW, "--ca", fleet.ca.trust_bundle_path,
            "--config-dir", root / "etc", "--data-dir", root / "var", "--no-systemd",
            "--broker", f"127.0.0.1:{free_port()}",
            "--local-broker-host", "127.0.0.1", "--local-broker-port", str(free_port()),
        )  # fmt: skip
    assert result.code == 0, result.err
    config = root / "etc" / "gateway.toml"
    bind(config, ["wl-0007"])
    return config


def bind(config: Path, nodes: list[str]) -> None:
    """Write ``[sources.nodes]`` (the technician's edit) with these nodes bound."""
    text = config.read_text().split("\n[sources.nodes]\n")[0].rstrip() + "\n\n"
    port = load_config(config).local_broker.port  # type: ignore[union-attr]
    listed = ", ".join(f'{{ id = "{node}" }}' for node in nodes)
    config.write_text(text + f"[sources.nodes]\nport = {port}\nnodes = [{listed}]\n")


@pytest.fixture
def local(pi: Path, tmp_path: Path) -> Iterator[RunningBroker]:
    running = start_local_broker(pi, tmp_path / "local-broker.out")
    try:
        yield running
    finally:
        running.stop()


def gateway_identity(config: Path) -> TlsIdentity:
    return load_config(config).uplink.identity()


def link(endpoint: BrokerEndpoint, identity: TlsIdentity, client_id: str) -> MqttLink:
    tls = client_tls_context(identity, NAME)  # the name a node verifies, whatever address it dials
    return MqttLink(endpoint, identity, client_id=client_id, connect_timeout_s=5.0, tls_context=tls)


def state(broker: RunningBroker) -> dict[str, object]:
    return dict(orjson.loads((broker.rundir / "broker.json").read_bytes()))


async def wait_state(broker: RunningBroker, key: str, value: object, within: float = 10.0) -> None:
    for _ in range(int(within / 0.1)):
        try:
            if state(broker).get(key) == value:
                await asyncio.sleep(0.3)  # Mosquitto applies SIGHUP on its next loop iteration
                return
        except (FileNotFoundError, orjson.JSONDecodeError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"broker.json {key} never became {value!r}: {broker.log_text()[-2000:]}")


async def nothing_arrives(receiver: MqttLink, within: float = 0.7) -> None:
    await asyncio.sleep(within)
    assert receiver.messages.empty(), f"unexpected delivery on {receiver.messages.get_nowait().topic}"


def selftest_check(checks: list[Check], name: str) -> Check:
    return next(check for check in checks if check.name == name)


async def test_the_pi_holds_no_ca_key_and_its_broker_confines_each_node(
    fleet: Fleet, pi: Path, local: RunningBroker, tmp_path: Path
) -> None:
    keys_on_pi = sorted(p.name for p in (tmp_path / "pi").rglob("*.key"))
    assert keys_on_pi == ["gateway.key", "local-broker.key", "server.key"], "only the gateway's own keys, no CA key"
    pki = tmp_path / "pi" / "etc" / "pki"
    assert (local.rundir / "server.key").read_bytes() == (pki / "local-broker.key").read_bytes(), "Mosquitto's copy"
    assert state(local)["nodes"] == ["wl-0007"]
    assert state(local)["pki"] == ""
    node = fleet.identity(Role.NODE, "wl-0007")  # issued as `kakehashi node flash --pki` issues it
    fleet.identity(Role.NODE, "wl-0099")
    endpoint = local.endpoint
    async with (
        link(endpoint, gateway_identity(pi), f"{GW}-nodes") as relay,
        link(endpoint, node, "wl-0007") as wl7,
    ):
        await relay.subscribe(["kn/v1/+/up/#"])
        await wl7.subscribe(["kn/v1/wl-0007/down/#", "kn/v1/wl-0099/down/#"])  # the second is granted, not served
        await wl7.publish("kn/v1/wl-0007/up/readings", b"own")
        async with asyncio.timeout(5):
            received = await relay.messages.get()
        assert (received.topic, received.payload) == ("kn/v1/wl-0007/up/readings", b"own")

        with pytest.raises(PublishRefusedError):
            await wl7.publish("kn/v1/wl-0099/up/readings", b"spoofed")
        await nothing_arrives(relay)

        await relay.publish("kn/v1/wl-0099/down/config", b"not yours")
        await relay.publish("kn/v1/wl-0007/down/config", b"yours")
        async with asyncio.timeout(5):
            got = await wl7.messages.get()
        assert (got.topic, got.payload) == ("kn/v1/wl-0007/down/config", b"yours"), "the other node's downlink leaked"
        await nothing_arrives(wl7)

    # a fleet certificate of a node not bound here connects, but may do nothing
    async with link(endpoint, fleet.identity(Role.NODE, "wl-0123"), "wl-0123") as stranger:
        with pytest.raises(PublishRefusedError):
            await stranger.publish("kn/v1/wl-0123/up/readings", b"x")

    other_ca = CertificateAuthority.init(tmp_path / "other-pki")
    foreign = make_identity(other_ca, Role.NODE, "wl-0007", tmp_path / "foreign")
    foreign = TlsIdentity(fleet.ca.trust_bundle_path, foreign.cert_file, foreign.key_file)
    with pytest.raises(LinkError):
        async with link(endpoint, foreign, "wl-0007"):
            pass

    checks = await run_selftest(pi, lambda _: None)
    found = {check.name: check for check in checks}
    assert found["nodes' local broker"].status is Status.PASS, found["nodes' local broker"]
    assert "probe" in found["nodes' local broker"].detail
    assert found["local broker certificate"].status is Status.PASS, found["local broker certificate"]
    assert NAME in found["local broker certificate"].detail
    policy = found["local broker policy"]
    assert policy.status is Status.WARN, policy
    assert "no fleet CRL received yet" in policy.detail


async def test_binding_a_node_in_gateway_toml_extends_the_acl(fleet: Fleet, pi: Path, local: RunningBroker) -> None:
    late = fleet.identity(Role.NODE, "wl-0008")  # flashed after the gateway was set up
    async with (
        link(local.endpoint, gateway_identity(pi), f"{GW}-nodes") as relay,
        link(local.endpoint, late, "wl-0008") as wl8,
    ):
        await relay.subscribe(["kn/v1/+/up/#"])
        with pytest.raises(PublishRefusedError):
            await wl8.publish("kn/v1/wl-0008/up/readings", b"before")
        reloads = int(state(local)["reloads"])  # type: ignore[call-overload]
        bind(pi, ["wl-0007", "wl-0008"])
        await wait_state(local, "nodes", ["wl-0007", "wl-0008"])
        assert state(local)["reloads"] == reloads + 1
        assert state(local)["restarts"] == 0, "a reload, not a restart"
        await wl8.publish("kn/v1/wl-0008/up/readings", b"after")  # the same connection, now allowed
        async with asyncio.timeout(5):
            received = await relay.messages.get()
        assert received.payload == b"after"
    bind(pi, ["wl-0007", "wl-0008", "Not An Id"])  # a broken edit keeps the policy in force
    await asyncio.sleep(1.5)
    assert state(local)["nodes"] == ["wl-0007", "wl-0008"]
    assert "local_broker_reload_failed" in local.log_text()


async def test_a_node_revoked_by_the_crl_on_down_crl_is_cut_off(
    fleet: Fleet, broker: RunningBroker, registry: Registry, pi: Path, local: RunningBroker
) -> None:
    """The whole path: agent's CrlPublisher → fleet broker (retained) → gateway service → fleet-crl.der → local
    broker restarted without dropping the others' sessions; the relay keeps working."""
    config = point_uplink_at(pi, broker.endpoint.port)
    wl7 = fleet.identity(Role.NODE, "wl-0007")
    stop = asyncio.Event()
    service = asyncio.create_task(run_gateway(config, stop=stop))
    try:
        await wait_state(local, "crl_state", "missing")
        await publish_crl(fleet, registry)  # nothing revoked yet; Mosquitto restarts to take a CRL at all
        await wait_state(local, "crl_state", "fresh")
        assert state(local)["restarts"] == 1
        async with link(local.endpoint, wl7, "wl-0007") as node:
            await node.subscribe(["kn/v1/wl-0007/down/ack"])
            await node.publish("kn/v1/wl-0007/up/readings", readings(1))
            async with asyncio.timeout(10):
                ack = await node.messages.get()
            assert wire.decode_relay_ack(ack.payload) == 1, "the service's relay stored and acknowledged it"

            fleet.ca.revoke("wl-0007", "key_compromise")
            await publish_crl(fleet, registry)
            await wait_state(local, "restarts", 2)
            async with asyncio.timeout(5):
                await node.lost.wait()
        with pytest.raises(LinkError, match=r"(?i)revoked|certificate"):
            async with link(local.endpoint, wl7, "wl-0007"):
                pass
        assert state(local)["crl_number"] == fleet.ca.crl_number()
        checks = await run_selftest(pi, lambda _: None)
        assert selftest_check(checks, "local broker policy").status is Status.PASS
        assert selftest_check(checks, "nodes' local broker").status is Status.PASS, "the relay's identity still works"
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await service


def point_uplink_at(config: Path, port: int) -> GatewayConfig:
    old = f"port = {load_config(config).uplink.port}\nca_file"
    config.write_text(config.read_text().replace(old, f"port = {port}\nca_file", 1))
    return load_config(config)


def set_stale_crl(config: Path, mode: str) -> None:
    config.write_text(config.read_text().replace("[local_broker]\n", f'[local_broker]\nstale_crl = "{mode}"\n'))


def readings(seq: int) -> bytes:
    reading = wire.Reading("wl-0007", "level", 1.5, "m", 1.8e9, wire.ClockQuality.SYNCED)
    return wire.encode_readings(wire.ReadingsMessage(seq=seq, sent_at=1.8e9, readings=(reading,)))


async def publish_crl(fleet: Fleet, registry: Registry) -> None:
    """The agent's own CRL publisher, over the fleet broker, as ``agent-1``."""
    current = CurrentLink()
    broker_port = int(orjson.loads((fleet.root / "broker" / "broker.json").read_bytes())["port"])
    async with MqttLink(BrokerEndpoint("127.0.0.1", broker_port), fleet.agent, client_id="agent-1") as agent:
        current.link = agent
        assert await CrlPublisher(registry, fleet.ca, current, AgentMetrics()).publish_all() == 1


def short_lived_crl(fleet: Fleet, seconds: float) -> bytes:
    """A CRL of the fleet CA whose nextUpdate is ``seconds`` from now (the CA's own signing, a shorter lifetime)."""
    policy = ValidityPolicy(crl_lifetime=dt.timedelta(seconds=seconds))
    return CertificateAuthority(fleet.ca.path, policy=policy).publish_crl().public_bytes(Encoding.DER)


async def test_a_crl_going_stale_keeps_nodes_reporting_loudly_or_refuses_them_when_closed(
    fleet: Fleet, pi: Path, local: RunningBroker
) -> None:
    config: GatewayConfig = load_config(pi)
    node = fleet.identity(Role.NODE, "wl-0007")
    store_crl(short_lived_crl(fleet, 6), config.crl_path, config.uplink.ca_file)
    await wait_state(local, "crl_state", "fresh")
    await wait_state(local, "crl_state", "stale", within=15)  # nextUpdate passed: restarted without the CRL
    assert "local_broker_crl_stale" in local.log_text()
    async with link(local.endpoint, node, "wl-0007") as wl7:
        await wl7.publish("kn/v1/wl-0007/up/readings", b"still reporting")
    checks = await run_selftest(pi, lambda _: None)
    policy = selftest_check(checks, "local broker policy")
    assert policy.status is Status.FAIL, policy
    assert "revoked nodes are admitted" in policy.detail

    set_stale_crl(pi, "closed")
    await wait_state(local, "crl_state", "stale_refusing")
    with pytest.raises(LinkError):
        async with link(local.endpoint, node, "wl-0007"):
            pass
    policy = selftest_check(await run_selftest(pi, lambda _: None), "local broker policy")
    assert policy.status is Status.FAIL, policy
    assert "every node is refused" in policy.detail

    fresh = fleet.ca.publish_crl().public_bytes(Encoding.DER)
    assert store_crl(fresh, config.crl_path, config.uplink.ca_file) is not None
    await wait_state(local, "crl_state", "fresh")
    async with link(local.endpoint, node, "wl-0007") as wl7:
        await wl7.publish("kn/v1/wl-0007/up/readings", b"back")
    summary = json.dumps(state(local))
    assert '"crl_state": "fresh"' in summary
