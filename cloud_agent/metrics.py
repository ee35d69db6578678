"""The agent's counters: what it ingested, what it refused and why, how its database and broker links are doing.

Plain integers bumped on the event loop (one thread), read by ``GET /v1/agent/metrics`` and the logs.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kakehashi.wire import JSONObject

LATENCY_WINDOW = 100_000


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class AgentMetrics:
    started_at: float = field(default_factory=time.time)
    messages: Counter[str] = field(default_factory=Counter)
    """Uplink messages handled, by channel (``readings``, ``events``, ``reported``, ``acks``, ``status``)."""
    acknowledged: int = 0
    """Uplink messages acknowledged to the broker (stored, recognised as repeats, or refused for good)."""
    readings_stored: int = 0
    readings_rejected: Counter[str] = field(default_factory=Counter)
    """Readings not stored, by reason (``unbound``, ``no_consent``, ``inactive``)."""
    duplicates: int = 0
    """Messages delivered again and recognised by (gateway, seq): stored once."""
    refused: Counter[str] = field(default_factory=Counter)
    """Messages refused, by reason (``bad_topic``, ``bad_payload``, ``unknown_gateway``, ``inactive``, ...)."""
    batches: int = 0
    database_retries: int = 0
    broker_connects: int = 0
    broker_losses: int = 0
    presence_online: int = 0
    presence_offline: int = 0
    desired_sent: int = 0
    commands_sent: int = 0
    commands_resent: int = 0
    commands_expired: int = 0
    command_acks: int = 0
    """Command state changes the gateways' acknowledgements made."""
    crl_published: int = 0
    last_batch_ms: float = 0.0
    extra: dict[str, Callable[[], Any]] = field(default_factory=dict)
    """More sections of the snapshot, each read when the snapshot is taken (e.g. the northbound pusher's)."""
    stored_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    """For the newest readings messages: commit time minus the message's ``ts`` (when the gateway formed it), so
    it includes time spent in the gateway's outbox and assumes synchronised clocks."""

    def latency(self) -> JSONObject:
        ordered = sorted(self.stored_latency_ms)
        if not ordered:
            return {"samples": 0}
        return {
            "samples": len(ordered),
            "p50_ms": round(_percentile(ordered, 0.50), 2),
            "p99_ms": round(_percentile(ordered, 0.99), 2),
            "max_ms": round(ordered[-1], 2),
        }

    def snapshot(self) -> JSONObject:
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "messages": dict(self.messages),
            "acknowledged": self.acknowledged,
            "readings_stored": self.readings_stored,
            "readings_rejected": dict(self.readings_rejected),
            "duplicates": self.duplicates,
            "refused": dict(self.refused),
            "batches": self.batches,
            "database_retries": self.database_retries,
            "broker_connects": self.broker_connects,
            "broker_losses": self.broker_losses,
            "presence_online": self.presence_online,
            "presence_offline": self.presence_offline,
            "desired_sent": self.desired_sent,
            "commands": {
                "sent": self.commands_sent,
                "resent": self.commands_resent,
                "expired": self.commands_expired,
                "acks_applied": self.command_acks,
            },
            "crl_published": self.crl_published,
            "last_batch_ms": round(self.last_batch_ms, 2),
            "stored_latency": self.latency(),
            **{name: section() for name, section in self.extra.items()},
        }
