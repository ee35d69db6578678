"""What an actuator is: the part that carries one command out on one kind of device, and how it says how it ended.

An actuator ``owns`` the devices it can reach, ``check``s a command on arrival (refusing what it can tell is unusable
without asking the device) and ``execute``s it before the command's deadline. It returns an :class:`Outcome`
(succeeded with a result, or a node's own ``expired``), or raises :class:`CommandFailed` whose ``reason`` is a short
code (``bad_value``, ``exception``, ``timeout``, ...) and whose message says what happened; the acknowledgement's
reason is ``"<code>: <message>"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kakehashi import wire
from kakehashi.errors import KakehashiError

__all__ = ["REFUSALS", "Actuator", "CommandFailed", "Outcome"]

REFUSALS = frozenset(
    {"unknown_device", "unknown_command", "unknown_point", "bad_value", "not_writable", "lpwa_downlink_unsupported"}
)
"""Failure codes that mean the command was refused before anything was sent to the device."""


class CommandFailed(KakehashiError):
    """The command did not (or may not have) take effect; ``reason`` is its short code."""

    reason = "failed"

    @property
    def ack_reason(self) -> str:
        """The acknowledgement's reason: the code, then the sentence."""
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an executed command ended: ``status`` succeeded (or what the device itself said), reason, result."""

    status: wire.AckStatus
    reason: str | None = None
    result: wire.JSONObject | None = None


class Actuator(Protocol):
    """Executes commands on the devices it owns."""

    kind: str
    """A short name for logs and health (``modbus``, ``node``, ``lpwa``)."""

    def owns(self, device_id: str) -> bool:
        """Whether ``device_id`` is reachable through this actuator on this gateway."""
        ...

    def check(self, command: wire.CommandMessage) -> None:
        """Refuse, before anything is acknowledged, a command this actuator can tell is unusable without asking the
        device (unknown command, unusable parameters, no downlink): raises :class:`CommandFailed`."""
        ...

    async def execute(self, command: wire.CommandMessage) -> Outcome:
        """Carry ``command`` out, finishing before ``command.deadline``; raises :class:`CommandFailed`."""
        ...
