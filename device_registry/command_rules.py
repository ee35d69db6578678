"""The command lifecycle as data: allowed moves, what each gateway acknowledgement means, ids and limits.

::

    awaiting_confirmation ──confirm──▶ queued ──▶ sent ──▶ delivered ──▶ succeeded | failed | expired
             │                           │          │
             └──────── cancelled ◀───────┴──────────┘        (any non-final state ──deadline──▶ expired)

A final state (succeeded, failed, expired, cancelled) never changes again. Acknowledgements are facts reported by the
gateway, so they may also move a command that the agent has not yet marked sent (the ack of a command published a
moment before its ``sent`` step committed). This module is pure; :mod:`device_registry.commands` applies it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

from device_registry.errors import CommandRefused, InvalidInput
from device_registry.models import CommandState
from kakehashi.wire import AckStatus

__all__ = [
    "ACK_STATES",
    "CANCELLABLE",
    "MAX_TTL",
    "TRANSITIONS",
    "check_idempotency_key",
    "check_move",
    "check_name",
    "check_ttl",
    "new_command_id",
]

S = CommandState

TRANSITIONS: Final[Mapping[CommandState, frozenset[CommandState]]] = {
    S.AWAITING_CONFIRMATION: frozenset({S.QUEUED, S.CANCELLED, S.EXPIRED}),
    S.QUEUED: frozenset({S.SENT, S.DELIVERED, S.SUCCEEDED, S.FAILED, S.EXPIRED, S.CANCELLED}),
    S.SENT: frozenset({S.DELIVERED, S.SUCCEEDED, S.FAILED, S.EXPIRED, S.CANCELLED}),
    S.DELIVERED: frozenset({S.SUCCEEDED, S.FAILED, S.EXPIRED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.EXPIRED: frozenset(),
    S.CANCELLED: frozenset(),
}
"""The states each state may move to. queued → delivered | succeeded | failed only through a gateway's ack."""

CANCELLABLE: Final = frozenset({S.AWAITING_CONFIRMATION, S.QUEUED, S.SENT})
"""A delivered command is being executed by the gateway: it can no longer be cancelled."""

ACK_STATES: Final[Mapping[AckStatus, CommandState]] = {
    AckStatus.DELIVERED: S.DELIVERED,
    AckStatus.SUCCEEDED: S.SUCCEEDED,
    AckStatus.FAILED: S.FAILED,
    AckStatus.EXPIRED: S.EXPIRED,
    AckStatus.REJECTED: S.FAILED,
}
"""The state a gateway's acknowledgement moves a command to (a rejection is a failure with the gateway's reason)."""

ACKABLE: Final = frozenset({S.QUEUED, S.SENT, S.DELIVERED})
"""States in which a gateway's acknowledgement counts; in any other the ack is ignored (and audited)."""

MAX_TTL: Final = timedelta(days=7)
"""Longest time to live: a command older than a week is not what anyone still means."""
MAX_KEY: Final = 128
_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ALPHABET: Final = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base 32, lowercase: sorts like the numbers


def _base32(number: int, digits: int) -> str:
    out = []
    for _ in range(digits):
        number, digit = divmod(number, 32)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_command_id(now: datetime) -> str:
    """``c-`` + 10 characters of the creation millisecond + 10 random ones (50 bits): sortable, unguessable."""
    millis = int(now.timestamp() * 1000) % 32**10
    return f"c-{_base32(millis, 10)}{_base32(secrets.randbits(50), 10)}"


def check_move(command_id: str, current: CommandState, target: CommandState) -> None:
    """Raise :class:`CommandRefused` (``illegal_transition``) unless ``current`` may move to ``target``."""
    if target in TRANSITIONS[current]:
        return
    if current.is_final:
        why = f"it is already {current} (final: a command never changes after that)"
    else:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none"
        why = f"it is {current} (allowed from {current}: {allowed})"
    raise CommandRefused(f"command {command_id} cannot become {target}: {why}", reason="illegal_transition")


def check_ttl(ttl: timedelta) -> float:
    """The time to live in seconds, if it is above zero and at most :data:`MAX_TTL`."""
    if not isinstance(ttl, timedelta) or ttl <= timedelta(0) or ttl > MAX_TTL:
        raise InvalidInput(f"a command's time to live must be above 0 and at most 7 days, not {ttl}", reason="bad_ttl")
    return ttl.total_seconds()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(f"command name {name!r} must be 1-64 of a-z, 0-9, '_' starting with a letter")
    return name


def check_idempotency_key(key: str) -> str:
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY:
        raise InvalidInput(
            f"idempotency key {key!r} must be 1-{MAX_KEY} characters (the same key returns the same command)"
        )
    return key
