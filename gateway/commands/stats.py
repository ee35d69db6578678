"""Counters of the command executor, for the gateway's health document."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CommandStats"]


@dataclass
class CommandStats:
    """What happened to the commands this gateway received since it started.

    ``executed`` counts commands handed to a device (Modbus write, node relay); ``refused`` counts commands answered
    ``failed`` or ``expired`` without anything being sent to a device (expired on arrival or in the queue, precondition
    failed, unknown device or command, bad value, LPWA); ``duplicates`` counts deliveries of a command already taken on
    (answered again from the journal, or ignored while it runs); ``interrupted`` counts commands found cut off by a
    crash at start-up. ``reasons`` counts final failures by reason code.
    """

    received: int = 0
    executed: int = 0
    succeeded: int = 0
    failed: int = 0
    expired: int = 0
    refused: int = 0
    duplicates: int = 0
    interrupted: int = 0
    running: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "executed": self.executed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "expired": self.expired,
            "refused": self.refused,
            "duplicates": self.duplicates,
            "interrupted": self.interrupted,
            "running": self.running,
            "reasons": dict(self.reasons),
        }
