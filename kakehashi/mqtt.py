"""MQTT 5 clients with mutual TLS, as every part of Kakehashi connects to a broker.

One place decides the TLS settings: the server is verified against the fleet trust bundle (hostname included),
and the client presents its own certificate. TLS is capped at 1.2 on purpose: under TLS 1.3 a client certificate the
broker rejects (revoked, expired, foreign CA) only shows up as a connect time-out, while TLS 1.2 surfaces the real
alert at once, so a technician sees "certificate revoked" instead of "timed out".
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kakehashi.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TlsIdentity:
    """The files a client needs: the fleet trust bundle, its certificate, and its private key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    host: str
    port: int


class _NamedContext(ssl.SSLContext):
    """A client context that verifies ``expected_name`` whatever address the connection goes to (a node's
    ``server_hostname`` setting: the local broker is reached by IP but its certificate names ``<gateway>.local``)."""

    expected_name = ""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_hostname"] = self.expected_name
        return super().wrap_socket(sock, *args, **kwargs)


def client_tls_context(identity: TlsIdentity, server_hostname: str | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies the broker and presents ``identity``'s certificate.

    The broker's certificate must name the host connected to, or ``server_hostname`` when given."""
    context: ssl.SSLContext
    if server_hostname:
        named = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
        named.expected_name = server_hostname
        context = named
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    for label, path in (("trust bundle", identity.ca_file), ("certificate", identity.cert_file)):
        if not path.is_file():
            raise ConfigError(f"{label} {path} does not exist: check the path or re-run provisioning")
    if not identity.key_file.is_file():
        raise ConfigError(f"private key {identity.key_file} does not exist: check the path or re-run provisioning")
    try:
        context.load_verify_locations(cafile=str(identity.ca_file))
        context.load_cert_chain(str(identity.cert_file), str(identity.key_file))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"cannot use certificate {identity.cert_file} with key {identity.key_file} ({exc.reason}): "
            "they must be a matching PEM pair issued by the fleet PKI"
        ) from None
    return context


def session_properties(session_expiry_s: int) -> Properties:
    """CONNECT properties asking the broker to keep the session (and queued QoS 1 messages) for a while."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    return props


def make_client(
    endpoint: BrokerEndpoint,
    identity: TlsIdentity,
    *,
    client_id: str,
    will: aiomqtt.Will | None = None,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    timeout: float = 10.0,
    keepalive: int = 30,
    max_inflight: int = 1000,
) -> aiomqtt.Client:
    """An MQTT 5 client for ``endpoint`` over mutual TLS; enter it with ``async with`` to connect."""
    client = aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=client_tls_context(identity),
        will=will,
        clean_start=clean_start,
        properties=session_properties(session_expiry_s) if session_expiry_s else None,
        timeout=timeout,
        keepalive=keepalive,
        max_inflight_messages=max_inflight,
        max_concurrent_outgoing_calls=max_inflight,
    )
    # Batches of publishes in flight are normal here; aiomqtt would warn above 10.
    client.pending_calls_threshold = max_inflight
    return client
