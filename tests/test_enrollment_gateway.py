"""The Pi's side of enrollment against the agent's API served over real HTTPS: the enrolled certificate connects to a
real Mosquitto broker and publishes on its own topic, renewal swaps the files, and every failure is one clear line."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import httpx
import pytest

from cloud_agent.pki.authority import CertificateAuthority
from cloud_agent.runtime import AgentRuntime
from device_registry import Registry, State
from gateway.enrollment import (
    GatewayEnrollmentError,
    enroll_gateway,
    finish_interrupted_renewal,
    identity_paths,
    renew_gateway,
)
from kakehashi.mqtt import TlsIdentity, make_client
from tests.cli_support import enrollment_api
from tests.conftest import Fleet
from tests.fleet import RunningBroker, free_port
from tests.test_enrollment import NoActions, make_app

GW = "gw-enroll-0001"


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    async with await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}") as opened:
        await opened.create_organisation("kakogawa", "Kakogawa City", actor="admin")
        await opened.create_gateway(GW, "kakogawa", actor="admin")
        yield opened


@pytest.fixture
async def agent_url(fleet: Fleet, registry: Registry, tmp_path: Path) -> AsyncIterator[str]:
    """The enrollment routes served over HTTPS with a server certificate from the fleet CA."""
    async with enrollment_api(fleet, registry, tmp_path) as url:
        yield url


async def wait_for_reload(broker: RunningBroker, before: int) -> None:
    for _ in range(100):
        if broker.reloads() > before:
            await asyncio.sleep(0.3)  # Mosquitto applies SIGHUP on its next loop iteration
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the broker did not reload its ACL within 5 s of the new certificate")


async def publish_and_receive(broker: RunningBroker, fleet: Fleet, identity: TlsIdentity, payload: bytes) -> bytes:
    """Publish ``payload`` as the gateway on its own uplink topic; return what the agent received."""
    async with make_client(broker.endpoint, fleet.agent, client_id="agent-1", timeout=5.0) as agent:
        await agent.subscribe(f"kh/v1/{GW}/up/#", qos=1)
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def pump() -> None:
            with contextlib.suppress(aiomqtt.MqttError):
                async for message in agent.messages:
                    if not received.done():
                        received.set_result(bytes(message.payload))

        task = asyncio.create_task(pump())
        try:
            await asyncio.sleep(0.2)
            async with make_client(broker.endpoint, identity, client_id=GW, timeout=5.0) as gateway:
                await gateway.publish(f"kh/v1/{GW}/up/readings", payload, qos=1)
            async with asyncio.timeout(5):
                return await received
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_an_enrolled_gateway_publishes_through_the_real_broker_and_renews(
    fleet: Fleet, broker: RunningBroker, registry: Registry, agent_url: str, tmp_path: Path
) -> None:
    token = await registry.create_enrollment_token(GW, actor="alice")
    identity_dir = tmp_path / "pi" / "pki"
    before = broker.reloads()
    installed = await enroll_gateway(agent_url, fleet.ca.trust_bundle_path, GW, token, identity_dir)
    assert installed.key.stat().st_mode & 0o777 == 0o600
    assert installed.certificate.stat().st_mode & 0o777 == 0o644
    assert (await registry.get_gateway(GW)).state is State.PROVISIONED
    await wait_for_reload(broker, before)
    tls = TlsIdentity(installed.trust_bundle, installed.certificate, installed.key)
    assert await publish_and_receive(broker, fleet, tls, b"first") == b"first"

    old_key = installed.key.read_bytes()
    before = broker.reloads()
    renewed = await renew_gateway(agent_url, fleet.ca.trust_bundle_path, GW, identity_dir, force=True)
    assert renewed.serial != installed.serial
    assert renewed.key.read_bytes() != old_key
    assert renewed.key.stat().st_mode & 0o777 == 0o600
    assert sorted(path.name for path in identity_dir.iterdir()) == sorted(p.name for p in identity_paths(identity_dir))
    await wait_for_reload(broker, before)
    assert await publish_and_receive(broker, fleet, tls, b"renewed") == b"renewed"


async def test_gateway_side_failures_are_one_line(
    fleet: Fleet, registry: Registry, agent_url: str, tmp_path: Path
) -> None:
    async def failure(call: object) -> GatewayEnrollmentError:
        with pytest.raises(GatewayEnrollmentError) as caught:
            await call  # type: ignore[misc]
        assert "\n" not in caught.value.message
        return caught.value

    out = tmp_path / "pi"
    other_root = CertificateAuthority.init(tmp_path / "other").trust_bundle_path
    assert (await failure(enroll_gateway(agent_url, other_root, GW, "t", out))).reason == "tls"
    closed = f"https://127.0.0.1:{free_port()}"
    assert (await failure(enroll_gateway(closed, fleet.ca.trust_bundle_path, GW, "t", out))).reason == "connection"
    insecure = agent_url.replace("https://", "http://")
    assert (await failure(enroll_gateway(insecure, fleet.ca.trust_bundle_path, GW, "t", out))).reason == "bad_url"
    refused = await failure(enroll_gateway(agent_url, fleet.ca.trust_bundle_path, GW, "wrong", out))
    assert refused.reason == "token_unknown"
    assert refused.message.startswith("the agent refused (401 token_unknown): ")
    assert not (out / "gateway.key").exists()  # nothing is installed when the agent refuses

    token = await registry.create_enrollment_token(GW, actor="alice")
    await enroll_gateway(agent_url, fleet.ca.trust_bundle_path, GW, token, out)
    again = await registry.create_enrollment_token(GW, actor="alice")
    exists = await failure(enroll_gateway(agent_url, fleet.ca.trust_bundle_path, GW, again, out))
    assert exists.reason == "identity_exists"
    early = await failure(renew_gateway(agent_url, fleet.ca.trust_bundle_path, GW, out))
    assert early.reason == "renewal_too_early"


def test_an_interrupted_renewal_is_completed_or_discarded(tmp_path: Path) -> None:
    key, cert, _, _ = identity_paths(tmp_path)
    key.write_bytes(b"old key")
    cert.write_bytes(b"old cert")
    key.with_name("gateway.key.new").write_bytes(b"new key")
    assert finish_interrupted_renewal(tmp_path) is False  # the certificate never arrived: keep the old pair
    assert (key.read_bytes(), cert.read_bytes()) == (b"old key", b"old cert")
    assert not key.with_name("gateway.key.new").exists()

    key.with_name("gateway.key.new").write_bytes(b"new key")
    cert.with_name("gateway.crt.new").write_bytes(b"new cert")
    assert finish_interrupted_renewal(tmp_path) is True
    assert (key.read_bytes(), cert.read_bytes()) == (b"new key", b"new cert")
    cert.with_name("gateway.crt.new").write_bytes(b"newer cert")  # the crash came between the two renames
    assert finish_interrupted_renewal(tmp_path) is True
    assert cert.read_bytes() == b"newer cert"


async def test_enrollment_through_an_in_process_transport(fleet: Fleet, registry: Registry, tmp_path: Path) -> None:
    app = make_app(AgentRuntime(registry, NoActions(), fleet.ca))
    token = await registry.create_enrollment_token(GW, actor="alice")
    transport = httpx.ASGITransport(app=app)
    installed = await enroll_gateway("https://agent.test", None, GW, token, tmp_path / "pi", transport=transport)
    assert installed.chain.read_bytes() in installed.trust_bundle.read_bytes()
