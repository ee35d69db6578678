"""The fleet broker with real Mosquitto and real TLS: who may publish and subscribe where, and who is refused."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import subprocess
import sys
from pathlib import Path

import aiomqtt
import pytest

from cloud_agent.pki.authority import CertificateAuthority
from kakehashi.identity import Role
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity, make_client
from kakehashi.waiting import next_within
from tests.conftest import Fleet
from tests.fleet import KAKEHASHI, RunningBroker, make_identity, start_broker

UP = "kh/v1/{gw}/up/readings"
DOWN = "kh/v1/{gw}/down/commands"
SETTLE = 0.3  # time for a subscription to be in place / a stray delivery to arrive


def error_lines(stderr: str) -> list[str]:
    """The CLI's own messages on stderr, without the structured (JSON) log lines."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("{")]


def client(broker: RunningBroker, identity: TlsIdentity, name: str, **kwargs: object) -> aiomqtt.Client:
    return make_client(broker.endpoint, identity, client_id=name, timeout=5.0, **kwargs)  # type: ignore[arg-type]


async def drain(messages: asyncio.Queue[aiomqtt.Message], seconds: float) -> list[aiomqtt.Message]:
    """Everything that arrives within ``seconds``."""
    got: list[aiomqtt.Message] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        message = await next_within(messages, left)
        if message is None:
            break
        got.append(message)
    return got


async def subscribe_into(mqtt: aiomqtt.Client, topics: list[str]) -> asyncio.Queue[aiomqtt.Message]:
    queue: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
    for topic in topics:
        await mqtt.subscribe(topic, qos=1)

    async def pump() -> None:
        # Ends quietly when the client disconnects: an exception left unretrieved would be logged (with traceback
        # formatting, which calls ast.parse) from whichever thread collects the task, and CPython 3.11's AST state
        # is not safe against that racing hypothesis's ast.parse in the main thread.
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in mqtt.messages:
                queue.put_nowait(message)

    task = asyncio.get_running_loop().create_task(pump())
    queue.task = task  # type: ignore[attr-defined]  # keep a reference for the test's lifetime
    return queue


async def refused(broker: RunningBroker, identity: TlsIdentity, name: str) -> str:
    """Connect and expect the broker to refuse; return the error text."""
    with pytest.raises(aiomqtt.MqttError) as info:
        async with client(broker, identity, name):
            pass
    return str(info.value)


async def test_gateway_publishes_its_own_topics_and_the_agent_receives(fleet: Fleet, broker: RunningBroker) -> None:
    async with (
        client(broker, fleet.agent, "agent-1-a") as agent,
        client(broker, fleet.gw1, "gw-test-0001") as gw,
    ):
        inbox = await subscribe_into(agent, ["$share/agents/kh/v1/+/up/#", "kh/v1/+/status"])
        await asyncio.sleep(SETTLE)
        await gw.publish(UP.format(gw="gw-test-0001"), b"reading-1", qos=1)
        await gw.publish("kh/v1/gw-test-0001/status", b"online", qos=1, retain=True)
        got = await drain(inbox, 1.0)
    assert sorted((str(m.topic), m.payload) for m in got) == [
        ("kh/v1/gw-test-0001/status", b"online"),
        ("kh/v1/gw-test-0001/up/readings", b"reading-1"),
    ]


async def test_gateway_cannot_publish_into_another_gateways_topics(fleet: Fleet, broker: RunningBroker) -> None:
    async with (
        client(broker, fleet.agent, "agent-1-a") as agent,
        client(broker, fleet.gw1, "gw-test-0001") as gw,
    ):
        inbox = await subscribe_into(agent, ["kh/v1/#"])
        await asyncio.sleep(SETTLE)
        await gw.publish(UP.format(gw="gw-test-0002"), b"spoofed", qos=1)
        await gw.publish("kh/v1/gw-test-0002/status", b"spoofed", qos=1)
        await gw.publish("kh/v1/gw-test-0001/down/commands", b"self-command", qos=1)
        await gw.publish(UP.format(gw="gw-test-0001"), b"own", qos=1)
        got = await drain(inbox, 1.0)
    assert [m.payload for m in got] == [b"own"]


async def test_gateway_receives_only_its_own_downlink(fleet: Fleet, broker: RunningBroker) -> None:
    async with (
        client(broker, fleet.agent, "agent-1-a") as agent,
        client(broker, fleet.gw1, "gw-test-0001") as gw1,
    ):
        inbox = await subscribe_into(gw1, ["kh/v1/gw-test-0001/down/#", "kh/v1/gw-test-0002/down/#", "kh/v1/+/up/#"])
        await asyncio.sleep(SETTLE)
        await agent.publish(DOWN.format(gw="gw-test-0002"), b"for-gw2", qos=1)
        await agent.publish(DOWN.format(gw="gw-test-0001"), b"for-gw1", qos=1)
        got = await drain(inbox, 1.0)
    assert [(str(m.topic), m.payload) for m in got] == [("kh/v1/gw-test-0001/down/commands", b"for-gw1")]


async def test_agents_share_uplinks_through_a_shared_subscription(fleet: Fleet, broker: RunningBroker) -> None:
    agent2 = fleet.identity(Role.SERVICE, "agent-2")
    broker.reload()
    async with (
        client(broker, fleet.agent, "agent-1-a") as a1,
        client(broker, agent2, "agent-2-a") as a2,
        client(broker, fleet.gw1, "gw-test-0001") as gw,
    ):
        q1 = await subscribe_into(a1, ["$share/agents/kh/v1/+/up/#"])
        q2 = await subscribe_into(a2, ["$share/agents/kh/v1/+/up/#"])
        await asyncio.sleep(SETTLE)
        for i in range(40):
            await gw.publish(UP.format(gw="gw-test-0001"), str(i).encode(), qos=1)
        got1, got2 = await asyncio.gather(drain(q1, 1.0), drain(q2, 1.0))
    payloads = sorted(int(m.payload) for m in got1 + got2)  # type: ignore[arg-type]
    assert payloads == list(range(40)), "every message delivered exactly once across the group"
    assert got1, "the load is split between both agents"
    assert got2, "the load is split between both agents"


async def test_last_will_marks_a_vanished_gateway_offline(fleet: Fleet, broker: RunningBroker) -> None:
    # A gateway in another process, so it can die without sending DISCONNECT.
    ident = fleet.gw1
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.will_client", broker.endpoint.host, str(broker.endpoint.port),
        str(ident.ca_file), str(ident.cert_file), str(ident.key_file), "gw-test-0001",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert gateway.stdout is not None
        async with asyncio.timeout(10):
            assert (await gateway.stdout.readline()).strip() == b"up"
        async with client(broker, fleet.agent, "agent-1-a") as agent:
            inbox = await subscribe_into(agent, ["kh/v1/+/status"])
            first = await drain(inbox, 0.5)
            gateway.send_signal(signal.SIGKILL)
            later = await drain(inbox, 3.0)
    finally:
        if gateway.returncode is None:
            gateway.kill()
        await gateway.wait()
    assert [m.payload for m in first] == [b"online"]
    assert [m.payload for m in later] == [b"offline"]


async def test_foreign_ca_certificate_is_refused(fleet: Fleet, broker: RunningBroker, tmp_path: Path) -> None:
    foreign_ca = CertificateAuthority.init(tmp_path / "foreign-pki")
    foreign = make_identity(foreign_ca, Role.GATEWAY, "gw-test-0001", tmp_path / "foreign")
    # The impostor trusts our broker (it knows the public trust bundle) but its own certificate is foreign.
    impostor = TlsIdentity(fleet.gw1.ca_file, foreign.cert_file, foreign.key_file)
    await refused(broker, impostor, "gw-test-0001")


async def test_expired_certificate_is_refused(fleet: Fleet, broker: RunningBroker) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = fleet.identity(
        Role.GATEWAY,
        "gw-expired",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    broker.reload()
    await refused(broker, expired, "gw-expired")


async def test_node_identity_has_no_rights_on_the_fleet_broker(fleet: Fleet, broker: RunningBroker) -> None:
    node = fleet.identity(Role.NODE, "wl-0007")
    broker.reload()
    async with client(broker, fleet.agent, "agent-1-a") as agent, client(broker, node, "wl-0007") as mqtt:
        inbox = await subscribe_into(agent, ["kh/v1/#"])
        await asyncio.sleep(SETTLE)
        await mqtt.publish("kh/v1/wl-0007/up/readings", b"node", qos=1)
        assert await drain(inbox, 0.8) == []


async def test_revoked_certificate_is_refused_after_reload(fleet: Fleet, broker: RunningBroker) -> None:
    async with client(broker, fleet.agent, "agent-1-a") as agent:
        inbox = await subscribe_into(agent, ["kh/v1/+/up/#"])
        async with client(broker, fleet.gw2, "gw-test-0002") as gw2:
            await asyncio.sleep(SETTLE)
            await gw2.publish(UP.format(gw="gw-test-0002"), b"before", qos=1)
            assert [m.payload for m in await drain(inbox, 0.8)] == [b"before"]

            fleet.ca.revoke("gw-test-0002", "key_compromise")
            result = broker.reload()
            assert result.returncode == 0, result.stderr
            assert "1 revoked" in result.stdout

            # The connection that was already open may stay up, but the ACL no longer lets it publish.
            await gw2.publish(UP.format(gw="gw-test-0002"), b"after-revocation", qos=1)
            assert await drain(inbox, 0.8) == []
    text = await refused(broker, fleet.gw2, "gw-test-0002")
    assert "revoked" in text.lower() or text


async def test_broker_picks_up_revocations_by_itself(fleet: Fleet, broker: RunningBroker) -> None:
    before = broker.reloads()
    fleet.ca.revoke("gw-test-0002")
    for _ in range(50):
        if broker.reloads() > before:
            break
        await asyncio.sleep(0.1)
    assert broker.reloads() > before, "the broker's PKI watcher reloaded within 5 s"
    await asyncio.sleep(SETTLE)
    await refused(broker, fleet.gw2, "gw-test-0002")


async def test_client_without_certificate_is_refused(fleet: Fleet, broker: RunningBroker) -> None:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(fleet.gw1.ca_file))
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", broker.endpoint.port, identifier="anon", tls_context=context, timeout=5):
            pass


async def test_plain_tcp_is_refused(broker: RunningBroker) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", broker.endpoint.port, identifier="plain", timeout=3):
            pass


def test_stale_crl_is_refreshed_at_start(fleet: Fleet, tmp_path: Path) -> None:
    """A CRL past its nextUpdate would lock out every client; the broker refreshes it before starting."""
    fleet.ca.publish_crl(now=dt.datetime.now(dt.UTC) - dt.timedelta(days=30))
    running = start_broker(fleet.ca.path, tmp_path / "stale")
    try:
        crl = fleet.ca.current_crl()
        assert crl.next_update_utc is not None
        assert crl.next_update_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=4)

        async def connect() -> None:
            async with client(running, fleet.gw1, "gw-test-0001") as gw:
                await gw.publish(UP.format(gw="gw-test-0001"), b"ok", qos=1)

        asyncio.run(connect())
    finally:
        assert running.stop() == 0


def test_sigterm_stops_cleanly(fleet: Fleet, broker: RunningBroker) -> None:
    assert broker.stop(signal.SIGTERM) == 0
    assert "broker stopped" in broker.log_text()
    assert not (broker.rundir / "broker.json").exists()


def test_port_in_use_gives_one_clear_line(fleet: Fleet, broker: RunningBroker, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *KAKEHASHI,
            "broker",
            "run",
            "--pki",
            str(fleet.ca.path),
            "--dir",
            str(tmp_path / "second"),
            "--port",
            str(broker.endpoint.port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        f"error: port {broker.endpoint.port} on 127.0.0.1 is already in use: choose another --port"
    ]


def test_reload_without_a_running_broker_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [*KAKEHASHI, "broker", "reload", "--dir", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1
    assert lines[0].startswith("error: no broker state in")


def test_missing_pki_gives_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *KAKEHASHI,
            "broker",
            "run",
            "--pki",
            str(tmp_path / "nopki"),
            "--dir",
            str(tmp_path / "run"),
            "--port",
            "18883",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert len(error_lines(result.stderr)) == 1
    assert "kakehashi pki init" in result.stderr


def test_endpoint_is_loopback(broker: RunningBroker) -> None:
    assert broker.endpoint == BrokerEndpoint("127.0.0.1", broker.endpoint.port)
