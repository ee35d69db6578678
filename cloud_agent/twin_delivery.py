"""Twin delivery: send each online gateway the desired deltas it has not applied, in version order.

A desired change made through the API becomes a versioned delta in the registry at once; this module gets it to
the gateway. It sends when told (:meth:`TwinDelivery.notify`: a desired change, or the gateway coming online) and
sweeps periodically for deltas that were sent but never reported as applied (a message lost with a broker restart,
a gateway that was offline). A gateway that is offline is skipped: its deltas wait in the registry and go out when
its next ``online`` status arrives. Sending a version twice is harmless: the gateway refuses versions it already
applied and re-reports its state.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from cloud_agent.ingest import TRANSIENT_ERRORS
from cloud_agent.metrics import AgentMetrics
from device_registry import Registry, RegistryError
from kakehashi import wire
from kakehashi.log import get_logger
from kakehashi.mqtt_link import LinkError
from kakehashi.waiting import until_set

log = get_logger(__name__)

DEFERRABLE: tuple[type[BaseException], ...] = (LinkError, RegistryError, *TRANSIENT_ERRORS)


class Publisher(Protocol):
    """The agent's current broker connection (raises :class:`LinkError` while there is none)."""

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None: ...


class TwinDelivery:
    def __init__(
        self,
        registry: Registry,
        publisher: Publisher,
        metrics: AgentMetrics,
        *,
        resend_after_s: float = 30.0,
    ) -> None:
        self._registry = registry
        self._publisher = publisher
        self._metrics = metrics
        self._resend_after_s = resend_after_s
        self._due: dict[str, bool] = {}  # gateway id -> force
        self._wake = asyncio.Event()
        self._sent: dict[tuple[str, int], float] = {}

    def notify(self, gateway_id: str, *, force: bool = False) -> None:
        """Deliver ``gateway_id``'s pending deltas soon (non-blocking); ``force`` resends recently sent ones too."""
        self._due[gateway_id] = self._due.get(gateway_id, False) or force
        self._wake.set()

    def came_online(self, gateway_id: str) -> None:
        """The gateway (re)connected: whatever it had not applied goes out again."""
        self.notify(gateway_id, force=True)

    async def deliver(self, gateway_id: str, *, force: bool = False) -> int:
        """Send the gateway's pending deltas if it is online; returns how many were sent.

        A delta sent less than ``resend_after_s`` ago is not sent again unless ``force`` (the gateway reconnected).
        """
        presence = await self._registry.get_presence(gateway_id)
        if presence is None or not presence.online:
            return 0
        sent = 0
        now = time.monotonic()
        for delta in await self._registry.pending_desired(gateway_id):
            key = (gateway_id, delta.version)
            last = self._sent.get(key)
            if not force and last is not None and now - last < self._resend_after_s:
                continue
            payload = wire.encode_desired(
                wire.DesiredMessage(version=delta.version, sent_at=time.time(), delta=delta.delta)
            )
            await self._publisher.publish(wire.topic_for(gateway_id, wire.Channel.DESIRED), payload, qos=wire.QOS)
            self._sent[key] = now
            sent += 1
            self._metrics.desired_sent += 1
            log.info("desired_sent", gateway=gateway_id, version=delta.version, target=delta.target_id)
        return sent

    def _forget_old(self) -> None:
        horizon = time.monotonic() - 10 * self._resend_after_s
        for key in [key for key, at in self._sent.items() if at < horizon]:
            del self._sent[key]

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver on notification, and sweep every ``resend_after_s`` for deltas still not applied."""
        next_sweep = 0.0
        while not stop.is_set():
            sweep = time.monotonic() >= next_sweep
            due = dict(self._due)
            self._due.clear()
            self._wake.clear()
            try:
                if sweep:
                    for gateway_id in await self._registry.gateways_with_pending_desired():
                        due.setdefault(gateway_id, False)
                    next_sweep = time.monotonic() + self._resend_after_s
                    self._forget_old()
                for gateway_id in sorted(due):
                    await self.deliver(gateway_id, force=due[gateway_id])
                    del due[gateway_id]
            except DEFERRABLE as exc:
                for gateway_id, force in due.items():  # try again after the pause
                    self.notify(gateway_id, force=force)
                self._wake.clear()
                log.warning("desired_delivery_deferred", gateways=sorted(due)[:20], error=str(exc)[:200])
            await until_set(self._wake, stop, within=1.0 if self._due else self._resend_after_s)
