"""The small interface every source plug-in implements, and the health record each one keeps.

A source is an object with a ``name`` and an ``async run(sink, health)`` coroutine that runs until cancelled. It
calls ``await sink.submit(readings)``; when that returns, the readings are durably committed in the outbox (accepted).
A source reports problems by counting them in its :class:`SourceHealth` and logging them; it raises only when it
cannot go on at all, and then the supervisor restarts it with backoff while the other sources carry on.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.model import Reading


class ReadingSink(Protocol):
    """Where sources put readings; ``submit`` returns once they are committed to the outbox."""

    async def submit(self, readings: Sequence[Reading]) -> None: ...


@dataclass
class SourceHealth:
    """Counters and state of one source, reported in the gateway's heartbeat."""

    name: str
    state: str = "starting"  # starting | ok | degraded | failed
    readings: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    last_error: str | None = None
    last_error_at: float | None = None
    restarts: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    def count_error(self, kind: str, message: str) -> None:
        """Record one error of ``kind`` (a short code such as ``timeout`` or ``crc``) with its message."""
        self.errors[kind] += 1
        self.last_error = message
        self.last_error_at = time.time()

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "readings": self.readings,
            "errors": dict(self.errors),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "restarts": self.restarts,
            **({"detail": self.detail} if self.detail else {}),
        }


class Source(Protocol):
    """A source plug-in."""

    @property
    def name(self) -> str: ...

    async def run(self, sink: ReadingSink, health: SourceHealth) -> None:
        """Read the hardware and submit readings until cancelled."""
        ...
