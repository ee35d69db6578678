"""Self-test of the gateway's MQTT links: the cloud broker and the local broker of its nodes, over mutual TLS.

Each is a real MQTT 5 connect with the gateway's own certificate and a short timeout, then a clean disconnect. It
must not disturb the running service, so it uses its own client id (``<gateway>-selftest``: the service's session
``<gateway>`` is not taken over), a clean start with no session kept, and no last will (the retained status with the
service's will is left alone). On the cloud broker it neither subscribes nor publishes. On the local broker it
proves the relay's access too: it subscribes to ``kn/v1/<gateway>/down/selftest`` (a topic no node can read: node
ids are never gateway ids) and publishes one probe there, which must come back within 2 s.
"""

from __future__ import annotations

import time
from typing import Final

from gateway.config import GatewayConfig
from gateway.selftest_model import Check
from kakehashi.errors import ConfigError
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity, client_tls_context
from kakehashi.mqtt_link import ConnectRefusedError, LinkError, MqttLink, PublishRefusedError
from kakehashi.waiting import next_within
from kakehashi.wire import NODE_TOPIC_ROOT

__all__ = ["CONNECT_TIMEOUT_S", "broker_check", "local_endpoint", "nodes_broker_check", "selftest_client_id"]

CONNECT_TIMEOUT_S: Final = 5.0
ROUND_TRIP_TIMEOUT_S: Final = 2.0


def selftest_client_id(gateway_id: str) -> str:
    return f"{gateway_id}-selftest"


async def _connect(
    name: str,
    endpoint: BrokerEndpoint,
    identity: TlsIdentity,
    gateway_id: str,
    fix: str,
    *,
    server_hostname: str | None = None,
    probe_topic: str | None = None,
) -> Check:
    where = f"{endpoint.host}:{endpoint.port}"
    as_name = f" (certificate name {server_hostname})" if server_hostname else ""
    try:
        link = MqttLink(
            endpoint,
            identity,
            client_id=selftest_client_id(gateway_id),
            connect_timeout_s=CONNECT_TIMEOUT_S,
            tls_context=client_tls_context(identity, server_hostname),
        )
        async with link:
            if probe_topic is not None:
                problem = await _round_trip(link, probe_topic)
                if problem is not None:
                    return Check.failed(
                        name,
                        f"connected to {where}, but {problem}",
                        f"the local broker's ACL must let {gateway_id} read and write kn/v1/#: restart it with "
                        "`kakehashi broker run --config <gateway.toml>` (it writes the ACL from gateway.toml)",
                    )
    except ConfigError as exc:
        return Check.failed(name, exc.message, "fix the identity first (see the identity checks above)")
    except ConnectRefusedError as exc:
        return Check.failed(
            name,
            f"{where} refused the gateway's certificate: {exc.message}",
            "the broker does not know this certificate yet (wait a few seconds after enrolling) or it was revoked: "
            "ask the asset manager",
        )
    except LinkError as exc:
        text = exc.message
        if "certificate" in text.lower() or "TLS" in text:
            return Check.failed(
                name,
                text + as_name,
                f"the broker at {where} and this gateway do not trust each other: check that the trust bundle is "
                "the fleet's chain.pem and the host name matches the broker's certificate",
            )
        return Check.failed(name, text, fix)
    except TimeoutError:
        return Check.failed(name, f"no MQTT answer from {where} within {CONNECT_TIMEOUT_S:g} s", fix)
    trip = f"; a probe on {probe_topic} came back" if probe_topic else ""
    return Check.ok(name, f"connected to {where}{as_name} over mutual TLS as {gateway_id}{trip}")


async def _round_trip(link: MqttLink, topic: str) -> str | None:
    """Subscribe, publish one probe, wait for it: None when it came back, else what went wrong. (A SUBSCRIBE the
    ACL denies is still granted in the SUBACK; only delivery proves access.)"""
    probe = f"selftest {time.time():.3f}".encode()
    try:
        await link.subscribe([topic], qos=1)
        await link.publish(topic, probe, qos=1)
    except PublishRefusedError as exc:
        return f"the probe on {topic} was refused ({exc.message})"
    deadline = time.monotonic() + ROUND_TRIP_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        message = await next_within(link.messages, left)
        if message is None:
            break
        if message.topic == topic and message.payload == probe:
            return None
    return f"the probe on {topic} did not come back within {ROUND_TRIP_TIMEOUT_S:g} s"


async def broker_check(config: GatewayConfig) -> Check:
    """A real connect to the cloud broker with the gateway's certificate."""
    uplink = config.uplink
    return await _connect(
        "cloud broker",
        uplink.endpoint(),
        uplink.identity(),
        config.gateway.id,
        f"check [uplink] host and port ({uplink.host}:{uplink.port}), the network and the firewall (TCP "
        f"{uplink.port} outbound)",
    )


def local_endpoint(config: GatewayConfig) -> BrokerEndpoint | None:
    """Where the gateway reaches its nodes' broker: ``[sources.nodes]`` host and port, else ``[local_broker]``'s
    port on loopback (or its own listen address); None when neither is configured."""
    nodes, local = config.sources.nodes, config.local_broker
    if nodes is not None:
        return BrokerEndpoint(nodes.host, nodes.port)
    if local is not None:
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # listening everywhere: reach it on loopback
        host = wildcard.get(local.host, local.host)
        return BrokerEndpoint(host, local.port)
    return None


async def nodes_broker_check(config: GatewayConfig) -> Check | None:
    """The nodes' local broker, when ``[sources.nodes]`` or ``[local_broker]`` is configured."""
    endpoint = local_endpoint(config)
    if endpoint is None:
        return None
    nodes = config.sources.nodes
    uplink = config.uplink
    identity = TlsIdentity(
        (nodes and nodes.ca_file) or uplink.ca_file,
        (nodes and nodes.cert_file) or uplink.cert_file,
        (nodes and nodes.key_file) or uplink.key_file,
    )
    if config.local_broker is not None:
        start = "start it: `systemctl start kakehashi-local-broker` (or `kakehashi broker run --config <gateway.toml>`)"
    else:
        start = f"start it: `kakehashi broker run --profile local --gateway {config.gateway.id} --port {endpoint.port}`"
    return await _connect(
        "nodes' local broker",
        endpoint,
        identity,
        config.gateway.id,
        f"{start} (or check [sources.nodes] host and port)",
        server_hostname=config.nodes_server_hostname(),
        probe_topic=f"{NODE_TOPIC_ROOT}/{config.gateway.id}/down/selftest" if config.local_broker else None,
    )
