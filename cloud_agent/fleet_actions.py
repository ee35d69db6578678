"""What the agent does to the fleet after a registry change: deliver desired state, revoke, publish the CRL.

:class:`FleetActions` implements :class:`cloud_agent.runtime.AgentActions` for the running agent. Revocation goes to
the fleet CA (which writes a fresh CRL; brokers running from the same PKI reload it within a second) and the new CRL
is published, retained, on every active gateway's ``down/crl`` so that gateways can check their nodes' certificates
while offline. :class:`CurrentLink` is the agent's broker connection of the moment, shared by everything that
publishes.
"""

from __future__ import annotations

import asyncio

from cryptography.hazmat.primitives.serialization import Encoding

from cloud_agent.command_dispatch import CommandDispatch
from cloud_agent.ingest import TRANSIENT_ERRORS
from cloud_agent.metrics import AgentMetrics
from cloud_agent.pki.authority import CertificateAuthority
from cloud_agent.pki.errors import PkiError
from cloud_agent.twin_delivery import TwinDelivery
from device_registry import Registry, RegistryError, State
from kakehashi import wire
from kakehashi.log import get_logger
from kakehashi.mqtt_link import LinkError, MqttLink
from kakehashi.waiting import until_set

log = get_logger(__name__)

_DEFERRABLE: tuple[type[BaseException], ...] = (LinkError, RegistryError, PkiError, *TRANSIENT_ERRORS)


class CurrentLink:
    """The agent's broker connection while it is up; publishing without one raises :class:`LinkError`."""

    def __init__(self) -> None:
        self.link: MqttLink | None = None

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        link = self.link
        if link is None or link.lost.is_set():
            raise LinkError("the agent is not connected to the broker at the moment")
        await link.publish(topic, payload, qos=qos, retain=retain)


class CrlPublisher:
    """Publishes the fleet CRL, retained, on every active or provisioned gateway's ``down/crl`` when told."""

    def __init__(
        self, registry: Registry, authority: CertificateAuthority, link: CurrentLink, metrics: AgentMetrics
    ) -> None:
        self._registry = registry
        self._authority = authority
        self._link = link
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._wake.set()  # publish once at start: gateways get the CRL of the moment

    def notify(self) -> None:
        self._wake.set()

    async def publish_all(self) -> int:
        payload = wire.encode_crl(self._authority.current_crl().public_bytes(Encoding.DER))
        sent = 0
        after: str | None = None
        while True:
            page = await self._registry.list_gateways(after=after, limit=500)
            for gateway in page.items:
                if gateway.state in (State.PROVISIONED, State.ACTIVE):
                    await self._link.publish(wire.topic_for(gateway.id, wire.Channel.CRL), payload, retain=True)
                    sent += 1
            if page.next_cursor is None:
                break
            after = page.next_cursor
        self._metrics.crl_published += 1
        log.info("crl_published", gateways=sent, bytes=len(payload))
        return sent

    async def run(self, stop: asyncio.Event, *, refresh_check_s: float = 600.0) -> None:
        """Publish when told, and check every ``refresh_check_s`` that the CRL is not about to go stale."""
        while not stop.is_set():
            await until_set(self._wake, stop, within=refresh_check_s)
            if stop.is_set():
                return
            try:
                if await asyncio.to_thread(self._authority.ensure_fresh_crl):
                    self._wake.set()
                if self._wake.is_set():
                    self._wake.clear()
                    await self.publish_all()
            except _DEFERRABLE as exc:
                self._wake.set()
                log.warning("crl_publish_deferred", error=str(exc)[:200])
                await until_set(stop, within=2.0)


class FleetActions:
    """The running agent's :class:`~cloud_agent.runtime.AgentActions`."""

    def __init__(
        self,
        twin: TwinDelivery,
        authority: CertificateAuthority | None,
        crl: CrlPublisher | None,
        commands: CommandDispatch,
    ) -> None:
        self._twin = twin
        self._commands = commands
        self._authority = authority
        self._crl = crl

    async def desired_changed(self, gateway_id: str) -> None:
        self._twin.notify(gateway_id)

    async def commands_changed(self, gateway_id: str) -> None:
        await self._commands.dispatch_now(gateway_id)

    async def identity_revoked(self, entity_id: str, reason: str) -> None:
        if self._authority is None:
            log.warning("revocation_not_at_ca", entity=entity_id, why="this agent has no [pki] dir configured")
            return
        try:
            revoked = await asyncio.to_thread(self._authority.revoke, entity_id, reason)
        except PkiError as exc:  # nothing active to revoke (expired, or issued by another CA)
            log.info("revocation_nothing_to_do", entity=entity_id, detail=exc.message)
            return
        log.info("identity_revoked", entity=entity_id, reason=reason, serials=[r.serial_hex for r in revoked])
        if self._crl is not None:
            self._crl.notify()
