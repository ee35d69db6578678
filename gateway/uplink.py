"""The uplink: forwards the outbox to the cloud broker over MQTT 5 with mutual TLS, and receives downlinks.

One connection at a time, re-established with exponential backoff and jitter. While connected, messages are read
from the outbox in sequence order and published with QoS 1, a window of them in flight; a message is deleted from the
outbox only after its PUBACK. After a reconnect the uplink starts again from the oldest message still stored, so
everything not acknowledged is replayed in order (duplicates are possible and resolved upstream by sequence number).
The gateway's retained status says online on connect and carries a health document on every heartbeat; the broker
publishes the last will (offline) if the gateway vanishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.outbox import Outbox
from gateway.outbox_store import StoredMessage
from kakehashi import wire
from kakehashi.backoff import Backoff
from kakehashi.log import get_logger
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity, make_client

log = get_logger(__name__)

DownlinkHandler = Callable[[wire.Channel, bytes], Awaitable[None]]
HealthProvider = Callable[[], Awaitable[dict[str, Any]]]

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps queued downlinks for a gateway that is away up to a week


@dataclass
class UplinkSettings:
    window: int = 64  # publishes in flight awaiting PUBACK
    fetch: int = 256  # messages read from the outbox at a time
    heartbeat_s: float = 30.0
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    drain_on_stop_s: float = 2.0


@dataclass
class UplinkStats:
    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    last_error: str | None = None
    published_messages: int = 0
    published_readings: int = 0
    acked_messages: int = 0
    downlinks: int = 0
    downlink_errors: int = 0
    connected_since: float | None = None
    errors: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "last_error": self.last_error,
            "published_messages": self.published_messages,
            "published_readings": self.published_readings,
            "acked_messages": self.acked_messages,
            "downlinks": self.downlinks,
            "downlink_errors": self.downlink_errors,
        }


def _publish_properties(channel: wire.Channel) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = wire.CONTENT_TYPES[channel]
    return props


class Uplink:
    """Owns the gateway's connection to the cloud broker."""

    def __init__(
        self,
        gateway_id: str,
        endpoint: BrokerEndpoint,
        identity: TlsIdentity,
        outbox: Outbox,
        *,
        health: HealthProvider,
        on_downlink: DownlinkHandler,
        settings: UplinkSettings | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self.endpoint = endpoint
        self.identity = identity
        self.outbox = outbox
        self.settings = settings or UplinkSettings()
        self._health = health
        self._on_downlink = on_downlink
        self._status_topic = wire.topic_for(gateway_id, wire.Channel.STATUS)
        self._properties = {channel: _publish_properties(channel) for channel in wire.Channel if channel.is_uplink}
        self._status_properties = _publish_properties(wire.Channel.STATUS)
        self.stats = UplinkStats()
        self.connected = asyncio.Event()

    def _status(self, state: wire.StatusState, reason: wire.StatusReason, health: dict[str, Any] | None) -> bytes:
        return wire.encode_status(wire.StatusMessage(state=state, reason=reason, sent_at=time.time(), health=health))

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(
            self._status_topic,
            self._status(wire.StatusState.OFFLINE, wire.StatusReason.WILL, None),
            qos=1,
            retain=True,
            properties=self._status_properties,
        )
        return make_client(
            self.endpoint,
            self.identity,
            client_id=self.gateway_id,
            will=will,
            clean_start=False,
            session_expiry_s=SESSION_EXPIRY_S,
            timeout=self.settings.connect_timeout_s,
            keepalive=self.settings.keepalive_s,
            max_inflight=max(self.settings.window, 16),
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected and forward the outbox until ``stop`` is set."""
        backoff = Backoff(self.settings.backoff_base_s, self.settings.backoff_cap_s)
        while not stop.is_set():
            error: str | None = None
            try:
                async with self._client() as client:
                    backoff.reset()
                    await self._session(client, stop)
            except* aiomqtt.MqttError as group:
                error = str(group.exceptions[0])
            except* OSError as group:  # TLS or socket failure outside aiomqtt's wrapping
                first = group.exceptions[0]
                error = f"{type(first).__name__}: {first}"
            self._disconnected(error)
            if error is None:
                continue
            delay = backoff.next()
            log.warning("uplink_retry", in_s=round(delay, 2), reason=error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    def _disconnected(self, error: str | None) -> None:
        was_connected = self.stats.connected
        self.stats.connected = False
        self.connected.clear()
        if error is not None:
            self.stats.last_error = error
            if not was_connected:
                self.stats.connect_failures += 1
            log.warning("uplink_disconnected" if was_connected else "uplink_connect_failed", reason=error)

    async def _session(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        self.stats.connects += 1
        self.stats.connected = True
        self.stats.connected_since = time.time()
        log.info("uplink_connected", broker=f"{self.endpoint.host}:{self.endpoint.port}")
        for topic in wire.gateway_subscriptions(self.gateway_id):
            await client.subscribe(topic, qos=1)
        await client.publish(
            self._status_topic,
            self._status(wire.StatusState.ONLINE, wire.StatusReason.CONNECTED, await self._health()),
            qos=1,
            retain=True,
            properties=self._status_properties,
        )
        self.connected.set()
        session_over = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(self._send(client, session_over))
            heartbeat = tg.create_task(self._heartbeat(client))
            receiver = tg.create_task(self._receive(client))
            stopper = tg.create_task(stop.wait())
            await asyncio.wait({sender, receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
            session_over.set()
            heartbeat.cancel()
            stopper.cancel()
            if stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(sender), self.settings.drain_on_stop_s)
                sender.cancel()
                receiver.cancel()
                await client.publish(
                    self._status_topic,
                    self._status(wire.StatusState.OFFLINE, wire.StatusReason.SHUTDOWN, await self._health()),
                    qos=1,
                    retain=True,
                    properties=self._status_properties,
                )
            else:
                sender.cancel()
                receiver.cancel()
        # A sender or receiver that failed has raised out of the task group; getting here means a clean end.

    async def _send(self, client: aiomqtt.Client, session_over: asyncio.Event) -> None:
        """Publish stored messages in order, a window in flight; delete each after its PUBACK."""
        window = asyncio.Semaphore(self.settings.window)
        acked: list[int] = []
        in_flight: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []
        cursor = 0

        async def publish(message: StoredMessage) -> None:
            try:
                topic = wire.topic_for(self.gateway_id, message.channel)
                await client.publish(topic, message.payload, qos=wire.QOS, properties=self._properties[message.channel])
                acked.append(message.seq)
                self.stats.acked_messages += 1
            except aiomqtt.MqttError as exc:
                failure.append(exc)
            finally:
                window.release()

        async def flush_acks() -> None:
            if acked:
                done = acked[:]
                acked.clear()
                await self.outbox.delete(done)

        try:
            while not session_over.is_set():
                if failure:
                    raise failure[0]
                self.outbox.changed.clear()
                batch = await self.outbox.fetch_after(cursor, self.settings.fetch)
                if not batch:
                    await flush_acks()
                    if session_over.is_set():
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.outbox.changed.wait(), 0.5)
                    continue
                for message in batch:
                    await window.acquire()
                    if failure:
                        raise failure[0]
                    task = asyncio.get_running_loop().create_task(publish(message))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    cursor = message.seq
                    self.stats.published_messages += 1
                    self.stats.published_readings += message.readings
                await flush_acks()
            # Stopping: let in-flight publishes finish so their rows can be deleted.
            if in_flight:
                await asyncio.wait(in_flight)
            await flush_acks()
            if failure:
                raise failure[0]
        finally:
            for task in in_flight:
                task.cancel()
            with contextlib.suppress(BaseException):
                await flush_acks()

    async def _heartbeat(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            await client.publish(
                self._status_topic,
                self._status(wire.StatusState.ONLINE, wire.StatusReason.HEARTBEAT, await self._health()),
                qos=1,
                retain=True,
                properties=self._status_properties,
            )

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.stats.downlinks += 1
            try:
                gateway, channel = wire.parse_topic(str(message.topic))
                if gateway != self.gateway_id or not channel.is_downlink:
                    raise wire.WireError(f"unexpected downlink topic {message.topic}", reason="bad_topic")
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    raise wire.WireError("downlink payload is not bytes", reason="malformed_json")
                await self._on_downlink(channel, bytes(payload))
            except wire.WireError as exc:
                self.stats.downlink_errors += 1
                log.warning("downlink_rejected", topic=str(message.topic), reason=exc.reason, detail=exc.message)
            except Exception as exc:  # a handler bug must not take the connection down
                self.stats.downlink_errors += 1
                log.exception("downlink_handler_failed", topic=str(message.topic), error=repr(exc))
