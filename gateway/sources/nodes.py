"""Edge nodes: MicroPython sensor nodes publish to the gateway's local Mosquitto; the gateway relays bound ones.

The gateway's local broker (``kakehashi broker run --profile local --gateway <id>``) admits only certificates of the
fleet CA and lets each node publish under ``kn/v1/<its id>/up/...`` only. This source subscribes to every node's
uplinks with a persistent session and manual acknowledgement, and for each message:

* drops (counts) nodes not bound to this gateway, malformed messages, and readings for any device but the node;
* commits the readings to the outbox at most once, keyed by the node's own sequence number;
* only then answers the node on ``kn/v1/<node>/down/ack`` and PUBACKs the message.

The same connection carries commands to the nodes (``down/commands``) and their acknowledgements back
(``up/acks``), which go to :attr:`NodesSource.commands` (:mod:`gateway.sources.nodes_commands`), and, when the
source has a state file, the nodes' desired settings (``down/config``) with their ``config-<n>`` acknowledgements,
through :attr:`NodesSource.settings` (:mod:`gateway.sources.nodes_settings`).

So a reading leaves a node's ring buffer only when the gateway holds it durably, and a redelivery after a crash on
either side is recognised and acknowledged again without being stored twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.model import Priority, Reading
from gateway.node_settings_store import NodeSettingsStore
from gateway.sources.base import ReadingSink, SourceHealth
from gateway.sources.nodes_commands import NodeCommandRelay
from gateway.sources.nodes_settings import NodeSettingsRelay
from kakehashi import wire
from kakehashi.backoff import Backoff
from kakehashi.errors import ConfigError
from kakehashi.fields import Identifier
from kakehashi.log import get_logger
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity, client_tls_context
from kakehashi.mqtt_link import LinkError, MqttLink, Received

log = get_logger(__name__)


class BoundNode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Identifier = Field(description="the node's id, as in its certificate (e.g. wl-0007)")


class NodesSourceConfig(BaseModel):
    """``[sources.nodes]``: the local broker and the nodes bound to this gateway."""

    model_config = ConfigDict(extra="forbid")

    name: str = "nodes"
    host: str = "127.0.0.1"
    port: int = Field(default=8884, ge=1, le=65535, description="the local broker's TLS port")
    ca_file: Path | None = Field(default=None, description="defaults to [uplink] ca_file")
    cert_file: Path | None = Field(default=None, description="defaults to [uplink] cert_file")
    key_file: Path | None = Field(default=None, description="defaults to [uplink] key_file")
    server_hostname: str | None = Field(
        default=None,
        description="name to verify on the local broker's certificate (default: the host, or <gateway id>.local "
        "when [local_broker] is configured)",
    )
    nodes: list[BoundNode] = Field(default_factory=list)

    @field_validator("nodes")
    @classmethod
    def _unique(cls, value: list[BoundNode]) -> list[BoundNode]:
        ids = [node.id for node in value]
        if len(set(ids)) != len(ids):
            raise ValueError("a node is bound twice: list each node id once")
        return value


class RelaySink(ReadingSink, Protocol):
    async def submit_once(self, origin: str, origin_seq: int, readings: Sequence[Reading]) -> bool: ...


SETTINGS_FILE = "node-settings.json"
"""The nodes' settings state in the gateway's data directory (:mod:`gateway.node_settings_store`)."""


class NodesSource:
    """Relays bound edge nodes from the local broker into the outbox.

    With ``settings_path`` (the service passes ``<data_dir>/node-settings.json``) it also relays the nodes' desired
    settings (:attr:`settings`); without it, a relay of readings and commands only."""

    def __init__(
        self,
        config: NodesSourceConfig,
        gateway_id: str,
        identity: TlsIdentity,
        settings_path: Path | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.config = config
        self.server_hostname = server_hostname or config.server_hostname
        self.gateway_id = gateway_id
        self.identity = identity
        self.bound = frozenset(node.id for node in config.nodes)
        self.relayed: Counter[str] = Counter()
        self.last_seen: dict[str, float] = {}
        self.commands = NodeCommandRelay()
        self.settings: NodeSettingsRelay | None = None
        if settings_path is not None:
            self.settings = NodeSettingsRelay(NodeSettingsStore(settings_path), self.bound)

    @property
    def name(self) -> str:
        return self.config.name

    async def run(self, sink: ReadingSink, health: SourceHealth) -> None:
        if not hasattr(sink, "submit_once"):
            raise ConfigError("the nodes source needs the gateway's intake (submit_once) as its sink")
        relay: RelaySink = sink  # type: ignore[assignment]
        backoff = Backoff(0.5, 30.0)
        endpoint = BrokerEndpoint(self.config.host, self.config.port)
        health.detail.update(
            bound=sorted(self.bound), relayed=self.relayed, last_seen=self.last_seen, commands=self.commands.counts
        )
        if self.settings is not None:
            health.detail["settings"] = self.settings.counts
        while True:
            try:
                link = MqttLink(
                    endpoint,
                    self.identity,
                    client_id=f"{self.gateway_id}-nodes",
                    clean_start=False,
                    session_expiry_s=7 * 24 * 3600,
                    manual_ack=True,
                    tls_context=client_tls_context(self.identity, self.server_hostname),
                )
                async with link:
                    await link.subscribe(wire.node_relay_subscriptions(), qos=1)
                    health.state = "ok"
                    backoff.reset()
                    self.commands.attach(link)
                    try:
                        if self.settings is not None:
                            await self.settings.attach(link)
                        async for message in link.receive():
                            await self._handle(link, message, relay, health)
                    finally:
                        self.commands.attach(None)
                        if self.settings is not None:
                            await self.settings.attach(None)
            except LinkError as exc:
                health.state = "degraded"
                health.count_error("connection", f"local broker {endpoint.host}:{endpoint.port}: {exc.message}")
                delay = backoff.next()
                log.warning("nodes_link_down", reason=exc.message, retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)

    async def _handle(self, link: MqttLink, message: Received, sink: RelaySink, health: SourceHealth) -> None:
        try:
            node, channel = wire.parse_node_topic(message.topic)
        except wire.WireError as exc:
            health.count_error("malformed", exc.message)
            link.ack(message)
            return
        if node not in self.bound:
            health.count_error("unbound_node", f"node {node} is not bound to {self.gateway_id}: message dropped")
            link.ack(message)
            return
        if self.settings is not None:
            await self.settings.on_uplink(node)  # before down/ack: the node still reads its downlink
        if channel is wire.NodeChannel.ACKS:
            await self._acks(node, message.payload, health)
            link.ack(message)
            return
        if channel not in (wire.NodeChannel.READINGS, wire.NodeChannel.ALARMS):
            health.count_error("unsupported", f"node {node} sent {channel.value}, which this gateway does not relay")
            link.ack(message)
            return
        try:
            decoded = wire.decode_readings(message.payload)
        except wire.WireError as exc:
            health.count_error("malformed", f"node {node}: {exc.message}")
            log.warning("node_message_rejected", node=node, reason=exc.reason, detail=exc.message)
            link.ack(message)
            return
        foreign = {r.device_id for r in decoded.readings} - {node}
        if foreign:
            health.count_error("spoofed", f"node {node} reported for {sorted(foreign)[0]}: message dropped")
            log.warning("node_spoofed_device", node=node, devices=sorted(foreign))
            link.ack(message)
            return
        priority = Priority.ALARM if channel is wire.NodeChannel.ALARMS else Priority.TELEMETRY
        readings = [
            Reading(r.device_id, r.quantity, r.value, r.unit, r.observed_at, r.clock, priority)
            for r in decoded.readings
        ]
        held = True
        if readings:
            held = await sink.submit_once(node, decoded.seq, readings)
        if held:
            await link.publish(
                wire.node_topic_for(node, wire.NodeChannel.RELAY_ACK), wire.encode_relay_ack(decoded.seq)
            )
            health.readings += len(readings)
            self.relayed[node] += len(readings)
            self.last_seen[node] = time.time()
        else:
            health.count_error(
                "outbox_full", f"node {node} seq {decoded.seq} refused by the disk budget; it will retry"
            )
        link.ack(message)

    async def _acks(self, node: str, payload: bytes, health: SourceHealth) -> None:
        try:
            acks: list[wire.CommandAck] = list(wire.decode_acks(payload).acks)
        except wire.WireError as exc:
            health.count_error("malformed", f"node {node} acks: {exc.message}")
            log.warning("node_acks_rejected", node=node, reason=exc.reason, detail=exc.message)
            return
        if self.settings is not None:
            acks = await self.settings.on_acks(node, acks)
        self.commands.on_acks(node, acks)


def build_nodes_source(
    config: NodesSourceConfig,
    gateway_id: str,
    default_identity: TlsIdentity,
    data_dir: Path | None = None,
    server_hostname: str | None = None,
) -> NodesSource:
    """The source with ``config``'s identity (or the uplink's); with ``data_dir``, it relays node settings too;
    ``server_hostname`` is the name it verifies on the local broker's certificate when the config names none."""
    identity = TlsIdentity(
        config.ca_file or default_identity.ca_file,
        config.cert_file or default_identity.cert_file,
        config.key_file or default_identity.key_file,
    )
    settings = data_dir / SETTINGS_FILE if data_dir is not None else None
    return NodesSource(config, gateway_id, identity, settings, server_hostname)
