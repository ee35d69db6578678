"""Commands relayed to edge nodes over the gateway's local broker, and the nodes' acknowledgements routed back.

The node relay (:mod:`gateway.sources.nodes`) owns the one connection to the local broker; it attaches it here
while it is up and hands the command acknowledgements of every ``kn/v1/<node>/up/acks`` message to
:meth:`NodeCommandRelay.on_acks` (the settings acknowledgements ``config-<n>`` go to
:mod:`gateway.sources.nodes_settings`).

:meth:`NodeCommandRelay.send` publishes a command on ``kn/v1/<node>/down/commands`` in the wire's command shape
(``kakehashi.wire.encode_command``: id, device = the node, name, params, deadline, idempotency key), which is what
the firmware reads (``edge/khnode/downlink.py``), and waits for the node's acknowledgement of that command id until
the command's deadline. The local broker keeps the command in the node's persistent session
while the node sleeps; a node that wakes after the deadline acknowledges it ``expired`` without running it (the
firmware checks the deadline too), so a command the gateway stopped waiting for never runs late.

A command acknowledgement nobody waits for (a late ack of a command the gateway already finished) is counted in
``unmatched`` and logged.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence

from kakehashi import wire
from kakehashi.log import get_logger
from kakehashi.mqtt_link import MqttLink

__all__ = ["NodeCommandRelay", "NodeLinkDown"]

log = get_logger(__name__)

_FINAL = frozenset({wire.AckStatus.SUCCEEDED, wire.AckStatus.FAILED, wire.AckStatus.EXPIRED, wire.AckStatus.REJECTED})


class NodeLinkDown(Exception):
    """The local broker stayed unreachable until the timeout: the command was not published."""


class NodeCommandRelay:
    """Publishes commands to nodes and matches the nodes' acknowledgements to the waiting commands."""

    def __init__(self) -> None:
        self._link: MqttLink | None = None
        self._up = asyncio.Event()
        self._waiting: dict[tuple[str, str], asyncio.Future[wire.CommandAck]] = {}
        self.counts: Counter[str] = Counter()

    def attach(self, link: MqttLink | None) -> None:
        """The relay's link to the local broker is up (``link``) or down (``None``)."""
        self._link = link
        if link is None:
            self._up.clear()
        else:
            self._up.set()

    async def send(self, command: wire.CommandMessage) -> wire.CommandAck:
        """Publish ``command`` to its node and return the node's final acknowledgement.

        Raises :class:`NodeLinkDown` if the local broker is not reachable before the command's deadline (nothing was
        sent) and :class:`TimeoutError` if the node does not answer before it (the command was sent)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + (command.deadline - time.time())
        key = (command.device_id, command.command_id)
        future: asyncio.Future[wire.CommandAck] = loop.create_future()
        self._waiting[key] = future
        try:
            try:
                async with asyncio.timeout_at(end):
                    await self._up.wait()
            except TimeoutError:
                raise NodeLinkDown(f"the local broker was not reachable to send {command.command_id}") from None
            link = self._link
            if link is None:
                raise NodeLinkDown(f"the link to the local broker dropped before {command.command_id} was sent")
            topic = wire.node_topic_for(command.device_id, wire.NodeChannel.COMMANDS)
            async with asyncio.timeout_at(end):
                await link.publish(topic, wire.encode_command(command), qos=wire.QOS)
                self.counts["sent"] += 1
                log.info("node_command_sent", node=command.device_id, command=command.command_id, name=command.name)
                return await future
        finally:
            self._waiting.pop(key, None)

    def on_acks(self, node: str, acks: Sequence[wire.CommandAck]) -> None:
        """Route command acknowledgements of ``node`` (from one ``up/acks`` message) to the commands waiting."""
        for ack in acks:
            if ack.status not in _FINAL:
                continue
            future = self._waiting.get((node, ack.command_id))
            if future is None or future.done():
                self.counts["unmatched"] += 1
                log.info("node_ack_unmatched", node=node, command=ack.command_id, status=ack.status.value)
                continue
            self.counts["routed"] += 1
            future.set_result(ack)
