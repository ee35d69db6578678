"""Faults a test injects into a stand-in broker at run time, and the record of what the broker was asked.

A test changes the fields of a :class:`Faults` while the stand-in serves; every write request consults it::

    broker.faults.answer(500, times=3)            # the next three writes answer 500
    broker.faults.answer(429, retry_after_s=1)    # every write answers 429 with Retry-After: 1 until cleared
    broker.faults.entity_errors["urn:ngsi-ld:Device:a"] = "BadRequestData"   # per-entity failure (207 / 400)
    broker.faults.delay_s = 0.5                   # slow answers
    broker.faults.clear()

Refusing connections altogether is :meth:`hw.cityos.server.StandInServer.down`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One write request as the stand-in saw it: when, what it answered, which entity ids it carried."""

    at: float
    path: str
    status: int
    entity_ids: tuple[str, ...]


@dataclass
class Faults:
    """What the stand-in does wrong, set by tests; all off by default."""

    status: int | None = None
    """Answer every write with this status (500, 503, 429, ...) instead of processing it."""
    times: int | None = None
    """How many writes ``status`` applies to; None: until cleared."""
    retry_after_s: int | None = None
    """Sent as ``Retry-After`` with ``status`` (429 or 503)."""
    entity_errors: dict[str, str] = field(default_factory=dict)
    """Entity id → error type (NGSI-LD: ProblemDetails type short name such as ``BadRequestData`` or
    ``InternalError``; Orion: ``BadRequest`` fails the whole request, as Orion does)."""
    delay_s: float = 0.0
    """Wait this long before answering any request."""

    def answer(self, status: int, *, times: int | None = None, retry_after_s: int | None = None) -> None:
        """Answer the next ``times`` writes (all, when None) with ``status`` and optionally ``Retry-After``."""
        self.status, self.times, self.retry_after_s = status, times, retry_after_s

    def clear(self) -> None:
        """Back to healthy."""
        self.status, self.times, self.retry_after_s = None, None, None
        self.entity_errors.clear()
        self.delay_s = 0.0

    def take_status(self) -> tuple[int, int | None] | None:
        """The injected status for this write (and its Retry-After), counting it down; None when healthy."""
        if self.status is None:
            return None
        injected = (self.status, self.retry_after_s)
        if self.times is not None:
            self.times -= 1
            if self.times <= 0:
                self.status, self.times, self.retry_after_s = None, None, None
        return injected


def now() -> float:
    """The clock request records use (monotonic seconds)."""
    return time.monotonic()
