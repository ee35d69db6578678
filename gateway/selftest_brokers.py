"""Self-test of the gateway's MQTT links: the cloud broker and the local broker of its nodes, over mutual TLS.

Each is a real MQTT 5 connect with the gateway's own certificate and a short timeout, then a clean disconnect. It
must not disturb the running service, so it uses its own client id (``<gateway>-selftest``: the service's session
``<gateway>`` is not taken over), a clean start with no session kept, no last will (the retained status with the
service's will is left alone), and it neither subscribes nor publishes.
"""

from __future__ import annotations

from typing import Final

from gateway.config import GatewayConfig
from gateway.selftest_model import Check
from kakehashi.errors import ConfigError
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity
from kakehashi.mqtt_link import ConnectRefusedError, LinkError, MqttLink

__all__ = ["CONNECT_TIMEOUT_S", "broker_check", "nodes_broker_check", "selftest_client_id"]

CONNECT_TIMEOUT_S: Final = 5.0


def selftest_client_id(gateway_id: str) -> str:
    return f"{gateway_id}-selftest"


async def _connect(name: str, endpoint: BrokerEndpoint, identity: TlsIdentity, gateway_id: str, fix: str) -> Check:
    where = f"{endpoint.host}:{endpoint.port}"
    try:
        link = MqttLink(
            endpoint, identity, client_id=selftest_client_id(gateway_id), connect_timeout_s=CONNECT_TIMEOUT_S
        )
        async with link:
            pass
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
                text,
                f"the broker at {where} and this gateway do not trust each other: check that the trust bundle is "
                "the fleet's chain.pem and the host name matches the broker's certificate",
            )
        return Check.failed(name, text, fix)
    except TimeoutError:
        return Check.failed(name, f"no MQTT answer from {where} within {CONNECT_TIMEOUT_S:g} s", fix)
    return Check.ok(name, f"connected to {where} over mutual TLS as {gateway_id}")


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


async def nodes_broker_check(config: GatewayConfig) -> Check | None:
    """The nodes' local broker, when ``[sources.nodes]`` is configured."""
    nodes = config.sources.nodes
    if nodes is None:
        return None
    uplink = config.uplink
    identity = TlsIdentity(
        nodes.ca_file or uplink.ca_file, nodes.cert_file or uplink.cert_file, nodes.key_file or uplink.key_file
    )
    return await _connect(
        "nodes' local broker",
        BrokerEndpoint(nodes.host, nodes.port),
        identity,
        config.gateway.id,
        f"start it: `kakehashi broker run --profile local --gateway {config.gateway.id} --port {nodes.port}` "
        "(or check [sources.nodes] host and port)",
    )
