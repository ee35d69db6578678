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

from gateway.outbox import Outbox
from gateway.outbox_store import StoredMessage
from kakehashi import wire
from kakehashi.backoff import Backoff
from kakehashi.errors import ConfigError
from kakehashi.log import get_logger
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity
from kakehashi.mqtt_link import LinkError, MqttLink, PublishRefusedError, Will
from kakehashi.waiting import until_set

log = get_logger(__name__)

DownlinkHandler = Callable[[wire.Channel, bytes], Awaitable[None]]
HealthProvider = Callable[[], Awaitable[dict[str, Any]]]

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps queued downlinks for a gateway that is away up to a week


@dataclass
class UplinkSettings:
    window: int = 64  # publishes in flight awaiting PUBACK
    fetch: int = 16  # messages read from the outbox at a time (bounds memory during replay, with the window)
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
        self._status_type = wire.CONTENT_TYPES[wire.Channel.STATUS]
        self.stats = UplinkStats()
        self.connected = asyncio.Event()

    def _status(self, state: wire.StatusState, reason: wire.StatusReason, health: dict[str, Any] | None) -> bytes:
        return wire.encode_status(wire.StatusMessage(state=state, reason=reason, sent_at=time.time(), health=health))

    def _link(self) -> MqttLink:
        will = Will(
            self._status_topic,
            self._status(wire.StatusState.OFFLINE, wire.StatusReason.WILL, None),
            qos=1,
            retain=True,
            content_type=self._status_type,
        )
        return MqttLink(
            self.endpoint,
            self.identity,
            client_id=self.gateway_id,
            will=will,
            clean_start=False,
            session_expiry_s=SESSION_EXPIRY_S,
            keepalive_s=self.settings.keepalive_s,
            connect_timeout_s=self.settings.connect_timeout_s,
            max_inflight=max(self.settings.window, 16),
            manual_ack=True,
        )

    async def _publish_status(self, link: MqttLink, reason: wire.StatusReason) -> None:
        state = wire.StatusState.OFFLINE if reason is wire.StatusReason.SHUTDOWN else wire.StatusState.ONLINE
        payload = self._status(state, reason, await self._health())
        await link.publish(self._status_topic, payload, qos=1, retain=True, content_type=self._status_type)

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected and forward the outbox until ``stop`` is set."""
        backoff = Backoff(self.settings.backoff_base_s, self.settings.backoff_cap_s)
        while not stop.is_set():
            error: str | None = None
            try:
                async with self._link() as link:
                    backoff.reset()
                    await self._session(link, stop)
            except* ConfigError as group:  # certificate files replaced or removed while running
                error = group.exceptions[0].args[0]
            except* LinkError as group:
                error = group.exceptions[0].args[0]
                refused = sum(isinstance(exc, PublishRefusedError) for exc in group.exceptions)
                if refused:
                    self.stats.errors["publish_refused"] = self.stats.errors.get("publish_refused", 0) + refused
            self._disconnected(error)
            if error is None:
                continue
            delay = backoff.next()
            log.warning("uplink_retry", in_s=round(delay, 2), reason=error)
            await until_set(stop, within=delay)

    def _disconnected(self, error: str | None) -> None:
        was_connected = self.stats.connected
        self.stats.connected = False
        self.connected.clear()
        if error is not None:
            self.stats.last_error = error
            if not was_connected:
                self.stats.connect_failures += 1
            log.warning("uplink_disconnected" if was_connected else "uplink_connect_failed", reason=error)

    async def _session(self, link: MqttLink, stop: asyncio.Event) -> None:
        self.stats.connects += 1
        self.stats.connected = True
        self.stats.connected_since = time.time()
        log.info("uplink_connected", broker=f"{self.endpoint.host}:{self.endpoint.port}")
        await link.subscribe(wire.gateway_subscriptions(self.gateway_id), qos=1)
        await self._publish_status(link, wire.StatusReason.CONNECTED)
        self.connected.set()
        session_over = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(self._send(link, session_over))
            heartbeat = tg.create_task(self._heartbeat(link))
            receiver = tg.create_task(self._receive(link))
            stopper = tg.create_task(stop.wait())
            await asyncio.wait({sender, receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
            session_over.set()
            heartbeat.cancel()
            stopper.cancel()
            if stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.drain_on_stop_s):
                        await asyncio.shield(sender)
                sender.cancel()
                receiver.cancel()
                await self._publish_status(link, wire.StatusReason.SHUTDOWN)
            else:
                sender.cancel()
                receiver.cancel()
        # A sender or receiver that failed has raised out of the task group; getting here means a clean end.

    async def _send(self, link: MqttLink, session_over: asyncio.Event) -> None:
        """Publish stored messages in order, a window in flight; delete each after its PUBACK."""
        window = asyncio.Semaphore(self.settings.window)
        acked: list[int] = []
        in_flight: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []
        cursor = 0

        async def publish(message: StoredMessage) -> None:
            try:
                topic = wire.topic_for(self.gateway_id, message.channel)
                await link.publish(
                    topic, message.payload, qos=wire.QOS, content_type=wire.CONTENT_TYPES[message.channel]
                )
                acked.append(message.seq)
                self.stats.acked_messages += 1
            except PublishRefusedError as exc:
                # Never delete what the broker refused: keep it, say why, and reconnect with backoff.
                failure.append(
                    PublishRefusedError(
                        f"the broker refused message seq {message.seq} ({exc.message}): check that this gateway's "
                        "certificate is active and the broker's ACL lists it (kakehashi broker reload)",
                        exc.code,
                    )
                )
            except LinkError as exc:
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
                    await until_set(self.outbox.changed, within=0.5)
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

    async def _heartbeat(self, link: MqttLink) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            await self._publish_status(link, wire.StatusReason.HEARTBEAT)

    async def _receive(self, link: MqttLink) -> None:
        async for message in link.receive():
            self.stats.downlinks += 1
            try:
                gateway, channel = wire.parse_topic(message.topic)
                if gateway != self.gateway_id or not channel.is_downlink:
                    raise wire.WireError(f"unexpected downlink topic {message.topic}", reason="bad_topic")
                await self._on_downlink(channel, message.payload)
            except wire.WireError as exc:
                self.stats.downlink_errors += 1
                log.warning("downlink_rejected", topic=message.topic, reason=exc.reason, detail=exc.message)
            except Exception as exc:  # a handler bug must not take the connection down
                self.stats.downlink_errors += 1
                log.exception("downlink_handler_failed", topic=message.topic, error=repr(exc))
            # Acknowledged only now: a downlink the gateway crashed on is redelivered when it reconnects.
            link.ack(message)
