"""Uplink ingest: decode a batch of MQTT messages, store it in the registry, and only then acknowledge it.

The agent consumes uplinks with manual acknowledgement: a message is PUBACKed after the transaction that stored it
committed, so a crash, a lost broker connection or a database outage can only cause a redelivery, and redeliveries
are recognised by (gateway, sequence number) in the registry. The effect is exactly once.

A batch is split by kind:

- readings messages of all gateways go to the registry in one transaction (:meth:`Registry.ingest_many`); if the
  registry refuses something in it (an unknown gateway), each gateway is retried on its own so one bad gateway
  cannot hold up the rest;
- events (gap reports, gateway events), reported twin states and command acks are stored one message per
  transaction, deduplicated by sequence number too; command acks move the commands along their lifecycle and hand
  the gateway to the command dispatch (a device whose command finished may run its next one);
- status messages (online, heartbeat, shutdown, last will) update the gateway's presence; a gateway that comes
  online is handed to the twin delivery, which sends it the desired changes it missed.

Anything the wire contract or the registry refuses (a malformed or oversize payload, a gateway that is suspended or
unknown, a stale twin version) is counted by reason, logged, and acknowledged: it can never become valid, and
redelivering it forever would block the gateway's queue. A database error is different: nothing is acknowledged,
and the batch is retried with back-off until it commits (the messages stay with the broker meanwhile).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy.exc

from cloud_agent.metrics import AgentMetrics
from device_registry import IngestResult, NotFound, Received, Registry, RegistryError, StaleVersion, TrafficRefused
from kakehashi import wire
from kakehashi.backoff import Backoff
from kakehashi.log import get_logger
from kakehashi.mqtt_link import Received as MqttMessage

log = get_logger(__name__)

T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.DBAPIError,
    sqlalchemy.exc.TimeoutError,
    OSError,
    ConnectionError,
    TimeoutError,
)
"""Database failures worth retrying: the server restarting, a dropped connection, a lock or deadlock time-out."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """An uplink message as received, and how to acknowledge it on the connection it came from."""

    message: MqttMessage
    received_at: float
    ack: Callable[[], None]


def _refusal(error: RegistryError) -> str:
    if isinstance(error, NotFound):
        return "unknown_gateway"
    if isinstance(error, TrafficRefused):
        return "inactive"
    return error.reason


class UplinkIngest:
    """Stores batches of uplink deliveries; see the module docstring for the rules."""

    def __init__(
        self,
        registry: Registry,
        metrics: AgentMetrics,
        *,
        came_online: Callable[[str], None],
        acks_applied: Callable[[str], None] = lambda gateway_id: None,
        readings_stored: Callable[[], None] = lambda: None,
        retry_max_s: float = 10.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._came_online = came_online
        self._acks_applied = acks_applied
        self._readings_stored = readings_stored
        self._retry_max_s = retry_max_s
        self._stop = stop or asyncio.Event()

    async def _retrying(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` until it does not fail with a database error (or the agent stops)."""
        backoff = Backoff(base=0.05, cap=self._retry_max_s)
        while True:
            try:
                return await operation()
            except TRANSIENT_ERRORS as exc:
                if self._stop.is_set():
                    raise
                delay = backoff.next()
                self._metrics.database_retries += 1
                log.warning("database_retry", operation=what, error=f"{type(exc).__name__}: {exc}"[:300], delay_s=delay)
                await asyncio.sleep(delay)

    async def handle_batch(self, deliveries: Sequence[Delivery]) -> None:
        """Store ``deliveries`` and then acknowledge every one of them, in the order received."""
        started = time.perf_counter()
        readings: dict[str, list[Received]] = {}
        formed_at: list[float] = []
        seen: dict[str, float] = {}
        others: list[tuple[str, wire.Channel, object, float]] = []
        for delivery in deliveries:
            decoded = self._decode(delivery)
            if decoded is None:
                continue
            gateway_id, channel, message = decoded
            seen[gateway_id] = max(seen.get(gateway_id, 0.0), delivery.received_at)
            self._metrics.messages[channel.value.rpartition("/")[2]] += 1
            if isinstance(message, wire.ReadingsMessage):
                readings.setdefault(gateway_id, []).append(
                    Received(message.seq, delivery.received_at, message.readings)
                )
                formed_at.append(message.sent_at)
            else:
                others.append((gateway_id, channel, message, delivery.received_at))
        if readings:  # last_seen is refreshed with the readings; status, events, acks have transactions of their own
            await self._store_readings(readings, seen)
            committed = time.time()
            self._metrics.stored_latency_ms.extend((committed - at) * 1000 for at in formed_at)
            self._readings_stored()
        for gateway_id, _channel, message, received_at in others:
            await self._store_other(gateway_id, message, received_at)
        for delivery in deliveries:
            delivery.ack()
        self._metrics.acknowledged += len(deliveries)
        self._metrics.batches += 1
        self._metrics.last_batch_ms = (time.perf_counter() - started) * 1000

    def _decode(self, delivery: Delivery) -> tuple[str, wire.Channel, object] | None:
        topic = delivery.message.topic
        try:
            gateway_id, channel = wire.parse_topic(topic)
            if channel is wire.Channel.STATUS:
                return gateway_id, channel, wire.decode_status(delivery.message.payload)
            return gateway_id, channel, wire.decode_uplink(channel, delivery.message.payload)
        except wire.WireError as exc:
            self._metrics.refused[exc.reason] += 1
            log.warning(
                "uplink_refused",
                topic=topic[:128],
                reason=exc.reason,
                error=exc.message[:300],
                bytes=len(delivery.message.payload),
            )
            return None

    # -- readings ---------------------------------------------------------------------------------------------

    async def _store_readings(self, readings: dict[str, list[Received]], seen: dict[str, float]) -> None:
        batches = list(readings.items())
        try:
            results = await self._retrying("ingest_many", lambda: self._registry.ingest_many(batches, seen=seen))
        except RegistryError:
            # one gateway's refusal rolled the whole transaction back: store each gateway on its own
            await self._retrying("touch", lambda: self._registry.ingest_many([], seen=seen))
            for gateway_id, messages in batches:
                await self._store_one_gateway(gateway_id, messages)
            return
        for (gateway_id, messages), result in zip(batches, results, strict=True):
            self._count(gateway_id, messages, result)

    async def _store_one_gateway(self, gateway_id: str, messages: list[Received]) -> None:
        try:
            result = await self._retrying(
                "ingest_readings", lambda: self._registry.ingest_readings(gateway_id, messages)
            )
        except RegistryError as exc:
            reason = _refusal(exc)
            self._metrics.refused[reason] += len(messages)
            log.warning(
                "readings_refused",
                gateway=gateway_id,
                reason=reason,
                error=exc.message,
                seqs=[m.seq for m in messages][:20],
            )
            return
        self._count(gateway_id, messages, result)

    def _count(self, gateway_id: str, messages: list[Received], result: IngestResult) -> None:
        metrics = self._metrics
        metrics.readings_stored += result.stored
        metrics.duplicates += result.duplicates
        if result.rejected_unbound:
            metrics.readings_rejected["unbound"] += result.rejected_unbound
        if result.rejected_no_consent:
            metrics.readings_rejected["no_consent"] += result.rejected_no_consent
        if result.rejected_inactive:
            metrics.readings_rejected["inactive"] += result.rejected_inactive
        if result.messages == 0 and result.duplicates == 0 and result.rejected_inactive:
            metrics.refused["inactive"] += len(messages)
            log.warning("gateway_refused", gateway=gateway_id, readings=result.rejected_inactive)
        if result.rejected_unbound or result.rejected_no_consent:
            log.warning(
                "readings_rejected",
                gateway=gateway_id,
                unbound=result.rejected_unbound,
                no_consent=result.rejected_no_consent,
            )
        for entity_id in result.activated:
            log.info("entity_activated", entity=entity_id, via=gateway_id)

    # -- everything else --------------------------------------------------------------------------------------

    async def _store_other(self, gateway_id: str, message: object, received_at: float) -> None:
        registry = self._registry
        try:
            if isinstance(message, wire.StatusMessage):
                change = await self._retrying(
                    "record_status", lambda: registry.record_status(gateway_id, message, received_at=received_at)
                )
                if change.came_online:
                    self._metrics.presence_online += 1
                    log.info("gateway_online", gateway=gateway_id, reason=message.reason.value)
                    self._came_online(gateway_id)
                elif change.went_offline:
                    self._metrics.presence_offline += 1
                    log.info("gateway_offline", gateway=gateway_id, reason=message.reason.value)
            elif isinstance(message, wire.EventsMessage):
                await self._retrying(
                    "record_events",
                    lambda: registry.record_events(gateway_id, message.seq, message.events, received_at=received_at),
                )
            elif isinstance(message, wire.ReportedMessage):
                twin = await self._retrying(
                    "merge_reported",
                    lambda: registry.merge_reported(
                        gateway_id, message.version, message.state, seq=message.seq, received_at=received_at
                    ),
                )
                log.info("twin_reported", gateway=gateway_id, version=twin.reported_version)
            elif isinstance(message, wire.AcksMessage):
                changed = await self._retrying(
                    "apply_acks",
                    lambda: registry.apply_acks(gateway_id, message.seq, message.acks, received_at=received_at),
                )
                self._metrics.command_acks += len(changed)
                for command in changed:
                    log.info(
                        "command_acknowledged",
                        gateway=gateway_id,
                        command=command.id,
                        device=command.device_id,
                        state=command.state.value,
                        reason=command.reason,
                    )
                if changed:
                    self._acks_applied(gateway_id)
        except StaleVersion as exc:
            self._metrics.refused[exc.reason] += 1
            log.warning("twin_report_refused", gateway=gateway_id, reason=exc.reason, error=exc.message)
        except RegistryError as exc:
            reason = _refusal(exc)
            self._metrics.refused[reason] += 1
            log.warning("uplink_refused", gateway=gateway_id, reason=reason, error=exc.message)
