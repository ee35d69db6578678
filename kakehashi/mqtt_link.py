"""An asyncio MQTT 5 link on paho-mqtt's public API, for the paths where delivery must be proven.

aiomqtt reports a QoS 1 publish as done when any PUBACK arrives, even one whose MQTT 5 reason code says the broker
refused it (0x87 not authorized): an outbox that trusted it would delete messages the broker threw away. This link
resolves each publish with the PUBACK's reason code and raises :class:`PublishRefusedError` for a refusal. It also
receives with manual acknowledgement, so a consumer PUBACKs a message only after it has durably handled it.

paho runs its network loop on its own thread; every callback is handed to the asyncio loop with
``call_soon_threadsafe`` and never blocks the network thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from kakehashi.errors import KakehashiError
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity, client_tls_context


class LinkError(KakehashiError):
    """The connection to the broker failed or was lost."""

    reason = "mqtt_link"


class ConnectRefusedError(LinkError):
    reason = "connect_refused"


class PublishRefusedError(LinkError):
    """The broker answered a publish with a failure reason code (for example 135, not authorized)."""

    reason = "publish_refused"

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    """A received message; call :meth:`MqttLink.ack` with it once handled (manual-ack links)."""

    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool


def _properties(
    packet: int,
    content_type: str | None = None,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
) -> Properties:
    props = Properties(packet)  # type: ignore[no-untyped-call]
    if content_type is not None:
        props.ContentType = content_type
    if session_expiry_s is not None:
        props.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


def _code(reason: Any) -> int:
    return int(reason.value) if isinstance(reason, ReasonCode) else int(reason)


class MqttLink:
    """One MQTT 5 connection over mutual TLS. Use ``async with MqttLink(...) as link:``."""

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        identity: TlsIdentity,
        *,
        client_id: str,
        will: Will | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        keepalive_s: int = 30,
        connect_timeout_s: float = 10.0,
        max_inflight: int = 256,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._client_id = client_id
        self._connect_timeout = connect_timeout_s
        self._keepalive = keepalive_s
        self._clean_start = clean_start
        self._session_expiry = session_expiry_s
        self._receive_maximum = receive_maximum
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._connack: asyncio.Future[None] | None = None
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self.messages: asyncio.Queue[Received] = asyncio.Queue()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        self._client.tls_set_context(tls_context or client_tls_context(identity))
        self._client.connect_timeout = connect_timeout_s
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        if will is not None:
            self._client.will_set(
                will.topic, will.payload, will.qos, will.retain, _properties(PacketTypes.WILLMESSAGE, will.content_type)
            )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # -- callbacks: run on paho's network thread, hand everything to the asyncio loop --------------------------

    def _soon(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._soon(self._connected, _code(reason), str(reason))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._soon(self._disconnected, str(reason))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._soon(self._acked, mid, _code(reason), str(reason))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self._soon(self._subacked, mid, [_code(r) for r in reasons])

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        received = Received(message.topic, bytes(message.payload), message.qos, message.mid, bool(message.retain))
        self._soon(self.messages.put_nowait, received)

    # -- loop side ------------------------------------------------------------------------------------------

    def _connected(self, code: int, text: str) -> None:
        if self._connack is not None and not self._connack.done():
            if code < 0x80:
                self._connack.set_result(None)
            else:
                self._connack.set_exception(ConnectRefusedError(f"the broker refused the connection: {text}"))

    def _disconnected(self, text: str) -> None:
        self.lost_reason = text
        self.lost.set()
        error = LinkError(f"connection to {self.endpoint.host}:{self.endpoint.port} lost ({text})")
        futures: list[asyncio.Future[Any]] = [*self._pending.values(), *self._subacks.values()]
        for future in futures:
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        self._subacks.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error)

    def _acked(self, mid: int, code: int, text: str) -> None:
        # publish() registers its mid before yielding to the loop, and this runs on the loop: no PUBACK can arrive
        # before its future exists. An unknown mid is a QoS 0 or an already-failed publish.
        future = self._pending.pop(mid, None)
        if future is None or future.done():
            return
        if code >= 0x80:
            future.set_exception(PublishRefusedError(f"the broker refused the publish: {text} ({code})", code))
        else:
            future.set_result(None)

    def _subacked(self, mid: int, codes: list[int]) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(codes)

    async def __aenter__(self) -> MqttLink:
        self._loop = asyncio.get_running_loop()
        self._connack = self._loop.create_future()
        props = _properties(
            PacketTypes.CONNECT, session_expiry_s=self._session_expiry or None, receive_maximum=self._receive_maximum
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                await asyncio.to_thread(
                    self._client.connect,
                    self.endpoint.host,
                    self.endpoint.port,
                    self._keepalive,
                    clean_start=self._clean_start,
                    properties=props,
                )
        except TimeoutError:
            where = f"{self.endpoint.host}:{self.endpoint.port}"
            raise LinkError(f"no answer from {where} within {self._connect_timeout} s") from None
        except ssl.SSLError as exc:
            where = f"{self.endpoint.host}:{self.endpoint.port}"
            raise LinkError(f"TLS handshake with {where} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise LinkError(f"cannot reach {self.endpoint.host}:{self.endpoint.port}: {exc.strerror or exc}") from None
        self._no_delay()
        self._client.loop_start()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._connack
        except BaseException:
            await self._shutdown(send_disconnect=False)
            raise
        return self

    def _no_delay(self) -> None:
        """Send each packet at once: an ack or a command must not wait for Nagle's algorithm (up to 40 ms per hop)."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):  # an ssl.SSLSocket is one
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def __aexit__(self, *exc_info: object) -> None:
        await self._shutdown(send_disconnect=True)

    async def _shutdown(self, *, send_disconnect: bool) -> None:
        if send_disconnect and not self.lost.is_set():
            self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._disconnected("closed")

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, content_type: str | None = None
    ) -> None:
        """Publish and, for QoS 1, return only once the broker accepted it; raise if it refused or the link broke."""
        if self.lost.is_set():
            raise LinkError(f"not connected to {self.endpoint.host}:{self.endpoint.port} ({self.lost_reason})")
        props = _properties(PacketTypes.PUBLISH, content_type) if content_type else None
        info = self._client.publish(topic, payload, qos, retain, props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise LinkError(f"publish to {topic} failed locally: {paho.error_string(info.rc)}")
        if qos == 0:
            return
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[info.mid] = future
        await future

    async def subscribe(self, topics: list[str], qos: int = 1) -> list[int]:
        """Subscribe and return the granted codes (a code >= 0x80 means refused; Mosquitto may grant and still
        deliver nothing when its ACL denies)."""
        assert self._loop is not None
        result, mid = self._client.subscribe([(topic, qos) for topic in topics])
        if result != paho.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"subscribe failed locally: {paho.error_string(result)}")
        future: asyncio.Future[list[int]] = self._loop.create_future()
        self._subacks[mid] = future
        async with asyncio.timeout(self._connect_timeout):
            return await future

    def ack(self, message: Received) -> None:
        """PUBACK a message received on a manual-ack link, after it has been durably handled."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    async def receive(self) -> AsyncIterator[Received]:
        """Messages as they arrive, until the connection is lost (then :class:`LinkError`)."""
        while True:
            getter = asyncio.ensure_future(self.messages.get())
            lost = asyncio.ensure_future(self.lost.wait())
            try:
                done, _ = await asyncio.wait({getter, lost}, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:  # the consumer was cancelled: leave no waiter behind, and lose no message
                lost.cancel()
                if getter.done() and not getter.cancelled():
                    self.messages.put_nowait(getter.result())
                else:
                    getter.cancel()
                raise
            lost.cancel()
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            raise LinkError(f"connection to {self.endpoint.host}:{self.endpoint.port} lost ({self.lost_reason})")
