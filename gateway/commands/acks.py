"""Command acknowledgements go upstream through the outbox, like every other uplink message.

They are committed with :attr:`~gateway.model.Priority.EVENT`: the outbox never evicts events (only telemetry is
thinned when its disk budget runs out), so an acknowledgement is as safe as an alarm, while ``ALARM`` stays reserved
for safety signals (flood levels, tamper) that an operator must see first. The sequence number is assigned by the
outbox at commit, as for any uplink; the agent deduplicates by it.
"""

from __future__ import annotations

import time

from gateway.model import Priority
from gateway.outbox import Outbox
from gateway.outbox_store import PendingMessage
from kakehashi import wire

__all__ = ["ACK_PRIORITY", "send_acks"]

ACK_PRIORITY = Priority.EVENT


async def send_acks(outbox: Outbox, acks: tuple[wire.CommandAck, ...]) -> None:
    """Commit one acks message holding ``acks``; when this returns they will reach the cloud."""

    def encode(seq: int) -> bytes:
        return wire.encode_acks(wire.AcksMessage(seq=seq, sent_at=time.time(), acks=acks))

    await outbox.append([PendingMessage(wire.Channel.ACKS, ACK_PRIORITY, 0, encode)])
