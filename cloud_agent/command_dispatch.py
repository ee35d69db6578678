"""Command dispatch: send each gateway the commands it may run now, resend the unacknowledged, expire the rest.

The registry decides *what* may be sent (:meth:`Registry.commands_to_send`: queued, before the deadline, at most one
per device and none while another command of that device is sent or delivered); this module decides *when*:

- when told (:meth:`CommandDispatch.notify`): a command was created, confirmed or cancelled through the API, the
  gateway came online, or its acknowledgements freed a device;
- on a periodic sweep: commands past their deadline are expired, and commands still ``sent`` (published but never
  acknowledged: lost with a broker restart, or the agent restarted in between) are published again after
  ``resend_after_s``. The gateway keeps a journal of command ids and answers a repeat with the outcome it already
  has, so a resend never runs a command twice.

A command is marked ``sent`` in the registry *before* it is published (the registry expires it instead if its deadline
passed meanwhile); a publish that fails leaves it ``sent`` and the sweep publishes it again. A gateway that is offline
is skipped: its commands stay queued ("pending until" their deadline) and go out when it reconnects.
"""

from __future__ import annotations

import asyncio
import time

from cloud_agent.ingest import TRANSIENT_ERRORS
from cloud_agent.metrics import AgentMetrics
from cloud_agent.twin_delivery import Publisher
from device_registry import Registry, RegistryError
from device_registry.models import Command, CommandState
from kakehashi import wire
from kakehashi.log import get_logger
from kakehashi.mqtt_link import LinkError
from kakehashi.waiting import until_set

log = get_logger(__name__)

_DEFERRABLE: tuple[type[BaseException], ...] = (LinkError, RegistryError, *TRANSIENT_ERRORS)


def command_message(command: Command) -> wire.CommandMessage:
    """The wire form of a registry command."""
    precondition = None
    if command.precondition_version is not None:
        precondition = wire.Precondition(reported_version=command.precondition_version)
    return wire.CommandMessage(
        command_id=command.id,
        device_id=command.device_id,
        name=command.name,
        params=command.params,
        deadline=command.deadline,
        idempotency_key=command.idempotency_key,
        sent_at=time.time(),
        precondition=precondition,
    )


class CommandDispatch:
    def __init__(
        self,
        registry: Registry,
        publisher: Publisher,
        metrics: AgentMetrics,
        *,
        sweep_s: float = 5.0,
        resend_after_s: float = 15.0,
    ) -> None:
        self._registry = registry
        self._publisher = publisher
        self._metrics = metrics
        self._sweep_s = sweep_s
        self._resend_after_s = resend_after_s
        self._due: set[str] = set()
        self._wake = asyncio.Event()
        self._published: dict[str, float] = {}  # command id -> when last published (monotonic)
        self._locks: dict[str, asyncio.Lock] = {}

    def notify(self, gateway_id: str) -> None:
        """Look at ``gateway_id``'s commands soon (non-blocking)."""
        self._due.add(gateway_id)
        self._wake.set()

    async def _online(self, gateway_id: str) -> bool:
        presence = await self._registry.get_presence(gateway_id)
        return presence is not None and presence.online

    async def _publish(self, command: Command) -> None:
        payload = wire.encode_command(command_message(command))
        await self._publisher.publish(wire.topic_for(command.gateway_id, wire.Channel.COMMANDS), payload)
        self._published[command.id] = time.monotonic()
        self._metrics.commands_sent += 1
        log.info("command_sent", command=command.id, gateway=command.gateway_id, device=command.device_id,
                 name=command.name)  # fmt: skip

    async def dispatch_now(self, gateway_id: str) -> None:
        """Dispatch at once (an API request waits for it: the command is on its way when the answer comes back);
        if that fails, the run loop tries again shortly."""
        try:
            await self.dispatch(gateway_id)
        except _DEFERRABLE as exc:
            log.warning("command_dispatch_deferred", gateways=[gateway_id], error=str(exc)[:200])
            self.notify(gateway_id)

    async def dispatch(self, gateway_id: str) -> int:
        """Send what ``gateway_id`` may run now, if it is online; returns how many commands were published.

        One dispatch per gateway at a time in this agent, so that a command is not published twice by two callers
        (another agent may still race this one; the gateway answers a repeat from its journal)."""
        lock = self._locks.setdefault(gateway_id, asyncio.Lock())
        async with lock:
            return await self._dispatch(gateway_id)

    async def _dispatch(self, gateway_id: str) -> int:
        published = 0
        for queued in await self._registry.commands_to_send(gateway_id, online_only=True):
            command = await self._registry.mark_sent(queued.id)
            if command.state is not CommandState.SENT:
                log.info("command_not_sent", command=command.id, state=command.state.value, reason=command.reason)
                continue
            await self._publish(command)
            published += 1
        return published

    async def _resend(self, gateway_id: str) -> int:
        """Publish again the gateway's commands still ``sent`` and not published within ``resend_after_s``."""
        if not await self._online(gateway_id):
            return 0
        again = 0
        now = time.monotonic()
        page = await self._registry.list_commands(gateway=gateway_id, state=CommandState.SENT, limit=500)
        for command in page.items:
            last = self._published.get(command.id)
            if last is not None and now - last < self._resend_after_s:
                continue
            await self._publish(command)
            self._metrics.commands_resent += 1
            again += 1
        return again

    async def _gateways_with(self, state: CommandState) -> set[str]:
        found: set[str] = set()
        after: str | None = None
        while True:
            page = await self._registry.list_commands(state=state, after=after, limit=500)
            found.update(command.gateway_id for command in page.items)
            if page.next_cursor is None:
                return found
            after = page.next_cursor

    async def sweep(self) -> None:
        """Expire overdue commands; dispatch queued ones; resend unacknowledged ones."""
        for command in await self._registry.expire_commands():
            self._metrics.commands_expired += 1
            self._published.pop(command.id, None)
            log.info("command_expired", command=command.id, gateway=command.gateway_id, device=command.device_id)
        for gateway_id in sorted(await self._gateways_with(CommandState.QUEUED)):
            await self.dispatch(gateway_id)
        for gateway_id in sorted(await self._gateways_with(CommandState.SENT)):
            await self._resend(gateway_id)
        live = {c.id for c in (await self._registry.list_commands(state=CommandState.SENT, limit=500)).items}
        for command_id in [c for c in self._published if c not in live]:
            del self._published[command_id]

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch on notification; sweep every ``sweep_s``."""
        next_sweep = 0.0
        while not stop.is_set():
            due = set(self._due)
            self._due.clear()
            self._wake.clear()
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self._sweep_s
                    await self.sweep()
                for gateway_id in sorted(due):
                    await self.dispatch(gateway_id)
                    due.discard(gateway_id)
            except _DEFERRABLE as exc:
                self._due |= due  # after the pause
                log.warning("command_dispatch_deferred", gateways=sorted(due)[:20], error=str(exc)[:200])
            await until_set(self._wake, stop, within=1.0 if self._due else self._sweep_s)
