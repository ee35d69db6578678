"""Commands on edge nodes: relayed over the local broker, finished by the node's own acknowledgement.

The command goes to the node unchanged (the wire's command shape, see :mod:`gateway.sources.nodes_commands`); the
node runs it at its next wake and answers on ``up/acks``. The gateway waits for that answer until the command's
deadline and maps it:

* node ``succeeded`` → succeeded, with the node's result (``{"repeated": true}`` when the node had already run that
  idempotency key);
* node ``expired`` → expired (the node woke after the deadline and did not run it);
* node ``rejected`` or ``failed`` → failed, reason ``node_rejected: <the node's reason>``;
* no answer before the deadline → failed, reason ``node_timeout`` (the node slept through it; the firmware will
  answer ``expired`` if it wakes later, so it never runs late);
* the local broker unreachable until the deadline → failed, reason ``node_unreachable`` (nothing was sent).
"""

from __future__ import annotations

import time

from gateway.commands.actuator import CommandFailed, Outcome
from gateway.sources.nodes import NodesSource
from gateway.sources.nodes_commands import NodeLinkDown
from kakehashi import wire
from kakehashi.mqtt_link import LinkError

__all__ = ["NodeActuator"]


class NodeActuator:
    """Executes commands on the nodes bound to this gateway."""

    kind = "node"

    def __init__(self, source: NodesSource) -> None:
        self._source = source

    def owns(self, device_id: str) -> bool:
        return device_id in self._source.bound

    def check(self, command: wire.CommandMessage) -> None:
        """Nothing to check here: the node validates its own commands and says why it refuses one."""
        del command

    async def execute(self, command: wire.CommandMessage) -> Outcome:
        if command.deadline <= time.time():
            raise CommandFailed("the deadline passed before the command could be sent", reason="deadline")
        try:
            ack = await self._source.commands.send(command)
        except NodeLinkDown as exc:
            raise CommandFailed(str(exc), reason="node_unreachable") from None
        except TimeoutError:
            raise CommandFailed(
                f"node {command.device_id} did not acknowledge before the deadline (it may be asleep; it will not run "
                "the command after the deadline)",
                reason="node_timeout",
            ) from None
        except LinkError as exc:
            raise CommandFailed(
                f"the local broker link failed while sending: {exc.message}", reason="node_unreachable"
            ) from None
        if ack.status is wire.AckStatus.SUCCEEDED:
            return Outcome(wire.AckStatus.SUCCEEDED, result=ack.result)
        if ack.status is wire.AckStatus.EXPIRED:
            return Outcome(wire.AckStatus.EXPIRED, reason=f"node_expired: {ack.reason or 'the deadline had passed'}")
        raise CommandFailed(ack.reason or "the node refused the command", reason="node_rejected")
