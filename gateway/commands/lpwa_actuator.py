"""Commands on LPWA radio devices: refused, because this code base has no LPWA downlink.

The modules themselves can transmit (IM920 ``TXDA``, ES920LR's send in operation mode, RAK3172 ``AT+PSEND`` in
P2P), but nothing on the receiving end is defined: the LPWA device profiles (``hw/lpwa/profiles``) describe uplink
payloads only and declare no command or downlink payload, the devices they describe (watch tags, water-level
sensors) transmit and sleep without a receive window, and the LPWA source drives its module receive-only. A
command to an LPWA device is therefore acknowledged ``failed`` with reason ``lpwa_downlink_unsupported`` at once,
without sending anything, instead of leaving the cloud waiting.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.commands.actuator import CommandFailed, Outcome
from kakehashi import wire

__all__ = ["LpwaActuator"]


class LpwaActuator:
    """Owns the LPWA devices configured on this gateway and refuses commands to them."""

    kind = "lpwa"

    def __init__(self, device_ids: Iterable[str]) -> None:
        self._devices = frozenset(device_ids)

    def owns(self, device_id: str) -> bool:
        return device_id in self._devices

    def check(self, command: wire.CommandMessage) -> None:
        raise CommandFailed(
            f"{command.device_id} is an LPWA radio device; no LPWA device profile declares a downlink and the LPWA "
            "source is receive-only, so this gateway cannot send it commands",
            reason="lpwa_downlink_unsupported",
        )

    async def execute(self, command: wire.CommandMessage) -> Outcome:
        self.check(command)
        raise AssertionError("check always refuses")  # pragma: no cover
