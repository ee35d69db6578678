"""The lifecycle state machine as data: states, allowed transitions, per-target preconditions and effects.

::

    registered ──▶ provisioned ──▶ active ⇄ suspended
        │               │             │         │
        └───────────────┴─────────────┴─────────┴──▶ decommissioned (final)

Gateways and devices share the machine. A transition is legal when the edge exists and every precondition of the
target state that applies to the entity holds. This module is pure: the storage side gathers :class:`Facts` and
applies :data:`EFFECTS` (see ``device_registry.transitions``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from device_registry.errors import IllegalTransition

__all__ = [
    "ACCEPTS_TRAFFIC",
    "EFFECTS",
    "PRECONDITIONS",
    "TRANSITIONS",
    "WATCH_TAG",
    "Effect",
    "Facts",
    "IllegalTransition",
    "Precondition",
    "Role",
    "State",
    "allowed_from",
    "check_transition",
]

WATCH_TAG: Final = "watch_tag"
"""The device kind of BLE watch tags (見守りタグ): personal data, kept only with consent and for a retention period."""

Role = Literal["gateway", "device"]


class State(enum.StrEnum):
    """Where a gateway or device is in its life (City OS device management)."""

    REGISTERED = "registered"
    """Known to the registry; nothing issued yet."""
    PROVISIONED = "provisioned"
    """Can be heard: a certificate was issued (gateways, nodes) or it was bound to its gateway (devices)."""
    ACTIVE = "active"
    """Its first authenticated message arrived."""
    SUSPENDED = "suspended"
    """Its traffic is refused and counted, commands to it are refused."""
    DECOMMISSIONED = "decommissioned"
    """Retired for good: certificates revoked, history kept until its retention ends."""


TRANSITIONS: Final[Mapping[State, tuple[State, ...]]] = {
    State.REGISTERED: (State.PROVISIONED, State.DECOMMISSIONED),
    State.PROVISIONED: (State.ACTIVE, State.DECOMMISSIONED),
    State.ACTIVE: (State.SUSPENDED, State.DECOMMISSIONED),
    State.SUSPENDED: (State.ACTIVE, State.DECOMMISSIONED),
    State.DECOMMISSIONED: (),
}
"""The allowed next states of each state, in lifecycle order."""

ACCEPTS_TRAFFIC: Final = frozenset({State.PROVISIONED, State.ACTIVE})
"""States whose messages are stored; a provisioned entity becomes active with its first one."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What the preconditions look at, gathered by the storage side inside the transaction."""

    entity_id: str
    role: Role
    state: State
    kind: str | None = None
    """The device kind; ``None`` for gateways."""
    has_active_certificate: bool = False
    """An unrevoked certificate that has not expired."""
    gateway_id: str | None = None
    """The gateway a device is bound to."""
    consent: bool | None = None
    """Watch tags only: whether consent is recorded."""


@dataclass(frozen=True, slots=True)
class Precondition:
    """A condition an entity must meet to enter a state; ``failure`` completes "<entity> cannot become <state>: "."""

    name: str
    applies: Callable[[Facts], bool]
    holds: Callable[[Facts], bool]
    failure: str


def _is_gateway(facts: Facts) -> bool:
    return facts.role == "gateway"


def _is_plain_device(facts: Facts) -> bool:
    return facts.role == "device" and facts.kind != WATCH_TAG


def _is_watch_tag(facts: Facts) -> bool:
    return facts.role == "device" and facts.kind == WATCH_TAG


_CERTIFICATE = Precondition(
    "certificate",
    _is_gateway,
    lambda facts: facts.has_active_certificate,
    "it has no active certificate (record the certificate issued to it first)",
)
_REACHABLE = Precondition(
    "reachable",
    _is_plain_device,
    lambda facts: facts.gateway_id is not None or facts.has_active_certificate,
    "it is bound to no gateway and has no certificate of its own (bind it to its gateway first)",
)
_CONSENT = Precondition(
    "consent",
    _is_watch_tag,
    lambda facts: bool(facts.consent),
    "it is a watch tag without recorded consent (watch tags are personal data: record consent first)",
)

PRECONDITIONS: Final[Mapping[State, tuple[Precondition, ...]]] = {
    State.REGISTERED: (),
    State.PROVISIONED: (_CERTIFICATE, _REACHABLE, _CONSENT),
    State.ACTIVE: (_CERTIFICATE, _REACHABLE, _CONSENT),
    State.SUSPENDED: (),
    State.DECOMMISSIONED: (),
}
"""Preconditions of entering each state: an entity must be able to be heard before it is provisioned or active."""


class Effect(enum.StrEnum):
    """Something the storage side does in the same transaction as entering a state."""

    REVOKE_CERTIFICATES = "revoke_certificates"
    """Revoke every active certificate of the entity; the caller republishes the CRL to the brokers."""


EFFECTS: Final[Mapping[State, tuple[Effect, ...]]] = {
    State.REGISTERED: (),
    State.PROVISIONED: (),
    State.ACTIVE: (),
    State.SUSPENDED: (),
    State.DECOMMISSIONED: (Effect.REVOKE_CERTIFICATES,),
}


def allowed_from(state: State) -> tuple[State, ...]:
    """The states ``state`` may move to."""
    return TRANSITIONS[state]


def check_transition(facts: Facts, to_state: State) -> None:
    """Raise :class:`IllegalTransition` unless ``facts`` may move to ``to_state``."""
    subject = f"{facts.role} {facts.entity_id}"
    allowed = allowed_from(facts.state)
    if to_state not in allowed:
        listed = ", ".join(allowed) if allowed else "none"
        raise IllegalTransition(
            f"{subject} is {facts.state}: it cannot become {to_state} (allowed from {facts.state}: {listed})",
            entity_id=facts.entity_id,
            from_state=facts.state,
            to_state=to_state,
        )
    for precondition in PRECONDITIONS[to_state]:
        if precondition.applies(facts) and not precondition.holds(facts):
            raise IllegalTransition(
                f"{subject} cannot become {to_state}: {precondition.failure}",
                entity_id=facts.entity_id,
                from_state=facts.state,
                to_state=to_state,
                reason="precondition",
            )
