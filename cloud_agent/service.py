"""The cloud agent service: MQTT ingest, presence, twin delivery, CRL publication, retention and the HTTPS API.

One asyncio TaskGroup runs every part until SIGTERM/SIGINT (or ``stop``):

- the broker loop keeps one MQTT 5 connection with a persistent session and a shared subscription to every
  gateway's uplinks (``$share/<group>/kh/v1/+/up/#`` and status), so several agents split the load; messages are
  taken in batches (up to ``ingest.batch_messages``, waiting at most ``ingest.batch_wait_ms`` to fill one), stored
  by :class:`~cloud_agent.ingest.UplinkIngest`, and only then acknowledged; on a lost connection it reconnects with
  back-off and the broker redelivers what was not acknowledged;
- the presence watchdog marks gateways offline after ``presence.heartbeat_timeout_s`` of silence;
- twin delivery sends desired deltas to online gateways; command dispatch sends commands (one at a time per device),
  resends unacknowledged ones and expires overdue ones; the CRL publisher keeps the CRL fresh and on the gateways;
- the retention loop purges history past its retention;
- with ``[northbound]``, the pusher feeds the City OS from the registry's northbound outbox (every stored message,
  queued in its ingest transaction) as Smart Data Models entities over NGSI-LD or NGSI v2; with
  ``[context_source]`` it registers itself with the City OS broker as a context source (re-registering every
  ``retry_s`` so the served types stay current) and removes the registration when it stops;
- the HTTPS API (``[api]``) serves the registry to asset managers, the CLI and the City OS.

On stop the batch in hand is finished (stored and acknowledged), then everything closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

from cloud_agent.command_dispatch import CommandDispatch
from cloud_agent.config import AgentConfig
from cloud_agent.fleet_actions import CrlPublisher, CurrentLink, FleetActions
from cloud_agent.ingest import TRANSIENT_ERRORS, Delivery, UplinkIngest
from cloud_agent.metrics import AgentMetrics
from cloud_agent.northbound.csource_task import run_registration
from cloud_agent.northbound.pusher import Pusher
from cloud_agent.northbound.setup import NorthboundFeed, build_feed
from cloud_agent.northbound.tag_retention import TagRetention
from cloud_agent.pki.authority import CertificateAuthority
from cloud_agent.runtime import AgentRuntime
from cloud_agent.twin_delivery import TwinDelivery
from device_registry import Registry, RegistryError
from kakehashi import wire
from kakehashi.backoff import Backoff
from kakehashi.log import get_logger
from kakehashi.mqtt import client_tls_context
from kakehashi.mqtt_link import LinkError, MqttLink
from kakehashi.mqtt_link import Received as MqttMessage
from kakehashi.waiting import next_within, until_set

log = get_logger(__name__)

_HOUSEKEEPING_ERRORS: tuple[type[BaseException], ...] = (RegistryError, *TRANSIENT_ERRORS)


async def _next_batch(link: MqttLink, stop: asyncio.Event, size: int, wait_s: float) -> list[MqttMessage] | None:
    """The next batch of received messages, or None when stopping; raises :class:`LinkError` when the link drops.

    A lone message is handed over at once; when several are waiting (traffic), the batch waits up to ``wait_s`` to
    fill to ``size``, so that a busy agent commits fewer, larger transactions."""
    queue = link.messages
    if queue.empty():
        getter = asyncio.ensure_future(queue.get())
        lost = asyncio.ensure_future(link.lost.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({getter, lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (lost, stopping):
                waiter.cancel()
        if not getter.done():
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter
            if stop.is_set():
                return None
            raise LinkError(f"connection to {link.endpoint.host}:{link.endpoint.port} lost ({link.lost_reason})")
        batch = [getter.result()]
    else:
        batch = [queue.get_nowait()]
    while len(batch) < size:  # whatever has arrived already
        try:
            batch.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            break
    if len(batch) == 1:
        return batch  # a lone message (light traffic): no reason to make it wait for company
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while len(batch) < size:
        try:
            batch.append(queue.get_nowait())
            continue
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        item = await next_within(queue, remaining)
        if item is None:
            break
        batch.append(item)
    return batch


class AgentService:
    """Builds the parts from the config and runs them (see the module docstring)."""

    def __init__(self, config: AgentConfig, registry: Registry, authority: CertificateAuthority | None) -> None:
        self.config = config
        self.registry = registry
        self.authority = authority
        self.metrics = AgentMetrics()
        self.link = CurrentLink()
        self.twin = TwinDelivery(registry, self.link, self.metrics)
        self.crl = None if authority is None else CrlPublisher(registry, authority, self.link, self.metrics)
        self.commands = CommandDispatch(
            registry,
            self.link,
            self.metrics,
            sweep_s=config.commands.sweep_s,
            resend_after_s=config.commands.resend_after_s,
        )
        self.stop = asyncio.Event()
        self.ingest = UplinkIngest(
            registry,
            self.metrics,
            came_online=self._came_online,
            acks_applied=self.commands.notify,
            readings_stored=self._readings_stored,
            retry_max_s=config.ingest.retry_max_s,
            stop=self.stop,
        )
        self.runtime = AgentRuntime(
            registry=registry,
            actions=FleetActions(self.twin, authority, self.crl, self.commands),
            authority=authority,
            metrics=self.metrics.snapshot,
        )
        self.connected = asyncio.Event()
        self.api_ready = asyncio.Event()
        self.pusher: Pusher | None = None
        self._tag_retention: TagRetention | None = None
        self.northbound: NorthboundFeed | None = None
        if config.northbound is not None:
            self.northbound = build_feed(config.northbound, registry, config.database.url)
            self.pusher, self._tag_retention = self.northbound.pusher, self.northbound.tag_retention
            self.metrics.extra["northbound"] = self.pusher.metrics.as_dict

    def _readings_stored(self) -> None:
        if self.pusher is not None:
            self.pusher.wake()

    def _came_online(self, gateway_id: str) -> None:
        self.twin.came_online(gateway_id)
        self.commands.notify(gateway_id)

    # -- broker ---------------------------------------------------------------------------------------------

    def _open_link(self) -> MqttLink:
        broker = self.config.broker
        return MqttLink(
            broker.endpoint(),
            broker.identity(),
            client_id=self.config.agent.id,
            clean_start=False,
            session_expiry_s=broker.session_expiry_s,
            keepalive_s=broker.keepalive_s,
            manual_ack=True,
            receive_maximum=broker.receive_window,
        )

    async def run_broker_loop(self) -> None:
        backoff = Backoff(base=0.2, cap=10.0)
        filters = wire.uplink_subscriptions(self.config.agent.share_group)
        while not self.stop.is_set():
            try:
                async with self._open_link() as link:
                    codes = await link.subscribe(filters, qos=wire.QOS)
                    if any(code >= 0x80 for code in codes):
                        raise LinkError(f"the broker refused the subscriptions {filters} (codes {codes})")
                    self.link.link = link
                    self.metrics.broker_connects += 1
                    self.connected.set()
                    backoff.reset()
                    log.info("broker_connected", host=link.endpoint.host, port=link.endpoint.port, filters=filters)
                    await self._consume(link)
                    return
            except LinkError as exc:
                self.metrics.broker_losses += 1
                delay = backoff.next()
                log.warning("broker_unavailable", error=exc.message, retry_in_s=round(delay, 2))
                await until_set(self.stop, within=delay)
            finally:
                self.link.link = None
                self.connected.clear()

    async def _consume(self, link: MqttLink) -> None:
        settings = self.config.ingest
        while True:
            batch = await _next_batch(link, self.stop, settings.batch_messages, settings.batch_wait_ms / 1000)
            if batch is None:
                return
            now = time.time()
            deliveries = [Delivery(message, now, _acker(link, message)) for message in batch]
            await self.ingest.handle_batch(deliveries)

    # -- housekeeping ---------------------------------------------------------------------------------------

    async def run_presence_watchdog(self) -> None:
        settings = self.config.presence
        while not self.stop.is_set():
            await until_set(self.stop, within=settings.check_interval_s)
            if self.stop.is_set():
                return
            try:
                gone = await self.registry.expire_presence(settings.heartbeat_timeout_s)
            except _HOUSEKEEPING_ERRORS as exc:
                log.warning("presence_check_failed", error=str(exc)[:200])
                continue
            for gateway_id in gone:
                self.metrics.presence_offline += 1
                log.info("gateway_offline", gateway=gateway_id, reason="heartbeat_timeout")

    async def run_retention(self) -> None:
        while not self.stop.is_set():
            try:
                result = await self.registry.purge_history()
                if result.readings or result.latest or result.messages:
                    log.info(
                        "retention_purged", readings=result.readings, latest=result.latest, messages=result.messages
                    )
            except _HOUSEKEEPING_ERRORS as exc:
                log.warning("retention_failed", error=str(exc)[:200])
            await until_set(self.stop, within=self.config.retention.purge_interval_s)

    async def run_api(self) -> None:
        from cloud_agent.api.app import create_app
        from cloud_agent.api.server import serve_api

        api = self.config.api
        assert api.certfile is not None
        assert api.keyfile is not None
        await serve_api(
            create_app(self.runtime),
            host=api.host,
            port=api.port,
            certfile=api.certfile,
            keyfile=api.keyfile,
            stop=self.stop,
            ready=self.api_ready,
        )

    async def run(self, on_started: Callable[[AgentService], None] | None = None) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.run_broker_loop())
            tg.create_task(self.twin.run(self.stop))
            tg.create_task(self.commands.run(self.stop))
            tg.create_task(self.run_presence_watchdog())
            tg.create_task(self.run_retention())
            if self.crl is not None:
                tg.create_task(self.crl.run(self.stop))
            if self.config.api.enabled:
                tg.create_task(self.run_api())
            if self.pusher is not None:
                tg.create_task(self.pusher.run(self.stop))
            if self._tag_retention is not None:
                tg.create_task(self._tag_retention.run(self.stop))
            if self.config.context_source is not None:
                tg.create_task(run_registration(self.config.context_source, self.registry, self.stop))
            if on_started is not None:
                on_started(self)
            await self.stop.wait()


def _acker(link: MqttLink, message: MqttMessage) -> Callable[[], None]:
    def ack() -> None:
        if not link.lost.is_set():
            link.ack(message)

    return ack


async def open_agent(config: AgentConfig) -> AgentService:
    """Check the TLS identity, open (and migrate) the registry and the CA, without starting anything."""
    client_tls_context(config.broker.identity())  # unusable certificate, key or bundle: one clear line now
    authority = None if config.pki.dir is None else CertificateAuthority.open(config.pki.dir)
    registry = await Registry.open(config.database.url, northbound=config.northbound is not None)
    return AgentService(config, registry, authority)


async def run_agent(
    config: AgentConfig,
    *,
    stop: asyncio.Event | None = None,
    on_started: Callable[[AgentService], None] | None = None,
) -> None:
    """Run the agent until SIGTERM/SIGINT, or until ``stop`` is set when embedded (tests, the demo)."""
    service = await open_agent(config)
    loop = asyncio.get_running_loop()
    own_signals = stop is None
    if own_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, service.stop.set)
    watcher = None if stop is None else asyncio.ensure_future(_relay(stop, service.stop))
    try:
        await service.run(on_started)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if own_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if service.northbound is not None:
            await service.northbound.aclose()
        await service.registry.close()
        log.info("agent_stopped", agent=config.agent.id, metrics=service.metrics.snapshot())


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
