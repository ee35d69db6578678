"""The registry's boundary types: frozen dataclasses returned by (and passed to) the async API.

Times of registry records are timezone-aware UTC datetimes; times of readings and messages are epoch seconds, as on
the wire (:mod:`kakehashi.wire`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Generic, NamedTuple, TypeVar

from device_registry.lifecycle import WATCH_TAG, Role, State
from kakehashi import wire
from kakehashi.wire import JSONObject

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Location:
    """Where a gateway or device is: coordinates (WGS 84) and/or a place description."""

    latitude: float | None = None
    longitude: float | None = None
    place: str | None = None


@dataclass(frozen=True, slots=True)
class Organisation:
    """A city, utility or operator that owns gateways and devices."""

    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Gateway:
    """A Raspberry Pi gateway."""

    id: str
    organisation_id: str
    state: State
    state_changed_at: datetime
    hardware_serial: str | None
    owner: str | None
    location: Location
    labels: Mapping[str, str]
    created_at: datetime
    refused_readings: int
    """Readings refused because the gateway was not provisioned or active."""


@dataclass(frozen=True, slots=True)
class Device:
    """A sensor, meter, node or watch tag behind a gateway."""

    id: str
    organisation_id: str
    kind: str
    profile: str | None
    """The hardware profile in the catalogue (``hw/``), e.g. ``sdm120``."""
    state: State
    state_changed_at: datetime
    gateway_id: str | None
    hardware_serial: str | None
    owner: str | None
    location: Location
    labels: Mapping[str, str]
    consent: bool | None
    """Watch tags only: consent is recorded. ``None`` for other kinds."""
    retention: timedelta | None
    """How long its history is kept; ``None`` means the registry default. Always set for watch tags."""
    created_at: datetime
    refused_readings: int
    """Readings refused because the device was not provisioned or active."""

    @property
    def is_watch_tag(self) -> bool:
        return self.kind == WATCH_TAG


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: ``items`` in id order, ``total`` matching items, and the cursor of the next page."""

    items: tuple[T, ...]
    total: int
    next_cursor: str | None
    """Pass as ``after`` to get the next page; ``None`` on the last page. Stable under inserts (keyset on id)."""


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate the fleet CA issued to a gateway or device."""

    serial: str
    """Lowercase hex without leading zeros."""
    entity_id: str
    not_after: datetime
    status: str
    """``active`` or ``revoked`` (expiry is not a status: see :meth:`is_valid_at`)."""
    issued_at: datetime
    revoked_at: datetime | None
    revocation_reason: str | None

    def is_valid_at(self, now: datetime) -> bool:
        return self.status == "active" and now < self.not_after


@dataclass(frozen=True, slots=True)
class Transition:
    """A lifecycle change that happened, and the certificates it revoked (republish the CRL if any)."""

    entity_id: str
    role: Role
    from_state: State
    to_state: State
    revoked_serials: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HardwareReplacement:
    """Broken hardware replaced: same logical device and history, new serial, old certificates revoked."""

    entity_id: str
    old_serial: str | None
    new_serial: str
    revoked_serials: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Twin:
    """Desired and reported documents of a gateway or device with their versions.

    Versions count per gateway (the wire sends one version sequence per gateway); a device's ``desired_version`` is
    the gateway version of its last desired change, and its reported document is the ``devices.<id>`` part of its
    gateway's reported document.
    """

    entity_id: str
    desired: JSONObject
    desired_version: int
    reported: JSONObject
    reported_version: int


@dataclass(frozen=True, slots=True)
class DesiredDelta:
    """A desired-state delta for a gateway, in wire form (device deltas sit under ``devices.<id>``)."""

    gateway_id: str
    version: int
    target_id: str
    delta: JSONObject
    created_at: datetime


class Received(NamedTuple):
    """One readings message as the agent received it: the gateway's ``seq``, the agent's receive time, readings."""

    seq: int
    received_at: float
    readings: Sequence[wire.Reading]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What :meth:`Registry.ingest_readings` did with a batch of messages."""

    messages: int = 0
    """New messages (sequence numbers not seen before)."""
    duplicates: int = 0
    """Messages skipped because their sequence number was already stored (or repeated in the batch)."""
    stored: int = 0
    """Readings written to history."""
    rejected_unbound: int = 0
    """Readings for devices not bound to the gateway (unknown, bound elsewhere, or a tag of another organisation)."""
    rejected_no_consent: int = 0
    """Watch-tag readings without an active consented record; nothing of them is stored."""
    rejected_inactive: int = 0
    """Readings refused because the gateway or the device is not provisioned or active."""
    activated: tuple[str, ...] = ()
    """Gateway and devices that became active with this batch."""


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading in history or the latest value of one quantity."""

    device_id: str
    quantity: str
    value: float | str | bool | bytes
    unit: str | None
    observed_at: float
    received_at: float
    clock: wire.ClockQuality
    gateway_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class SeqRange:
    """The sequence numbers ``first..last`` (inclusive)."""

    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class GapRecord:
    """A gap report from a gateway: it dropped messages ``from_seq..to_seq`` holding ``count`` readings."""

    from_seq: int
    to_seq: int
    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class Completeness:
    """What arrived from one gateway: every sequence number up to ``highest_seq`` is received, reported or missing."""

    gateway_id: str
    floor: int
    """Sequence numbers up to here were pruned with the history (older than the retention); counted as accounted."""
    highest_seq: int
    received: int
    """Distinct messages received above ``floor``."""
    reported_gaps: tuple[GapRecord, ...]
    missing: tuple[SeqRange, ...]
    """Ranges neither received nor covered by a gap report."""

    @property
    def missing_count(self) -> int:
        return sum(part.size for part in self.missing)

    @property
    def reported_lost_readings(self) -> int:
        return sum(gap.count for gap in self.reported_gaps)

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a retention run deleted."""

    readings: int
    latest: int
    messages: int
    """Dedupe/completeness rows of messages older than the default retention."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One append-only audit record: who did what to which entity, when and why."""

    id: int
    at: datetime
    actor: str
    action: str
    entity_id: str | None
    reason: str
    detail: JSONObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Presence:
    """Whether a gateway is connected: from its status messages, last will and the heartbeat time-out."""

    gateway_id: str
    online: bool
    changed_at: float
    """When ``online`` last changed (epoch seconds, the agent's clock)."""
    last_seen: float
    """When the agent last heard from the gateway (status, heartbeat or any uplink)."""
    reason: str
    """Why: ``connected``, ``heartbeat``, ``shutdown``, ``will`` or ``heartbeat_timeout``."""
    health: JSONObject = field(default_factory=dict)
    """The health document of the gateway's newest status message."""


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """The outcome of a status message: the presence after it, and whether the gateway came online by it."""

    presence: Presence
    came_online: bool
    went_offline: bool


class ApiRole(StrEnum):
    """What an API token may do (see :mod:`device_registry.access`)."""

    ADMIN = "admin"
    ASSET_MANAGER = "asset-manager"
    VIEWER = "viewer"
    CITY_OS = "city-os"


@dataclass(frozen=True, slots=True)
class ApiToken:
    """An API token as listed (the secret itself is never stored)."""

    name: str
    role: ApiRole
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class CommandState(StrEnum):
    """Where a command is in its lifecycle (see :mod:`device_registry.command_rules` for the allowed moves)."""

    AWAITING_CONFIRMATION = "awaiting_confirmation"
    """Its profile marks it as needing a second person; nothing is sent until one confirms it."""
    QUEUED = "queued"
    """Waiting for its gateway (offline, or another command of the device still running): pending until the deadline."""
    SENT = "sent"
    """Published to the gateway."""
    DELIVERED = "delivered"
    """The gateway acknowledged it and is executing it."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The device or gateway refused or could not do it; ``reason`` says why."""
    EXPIRED = "expired"
    """Its deadline passed before it finished; the gateway never starts a command past its deadline."""
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Succeeded, failed, expired or cancelled: the command never changes again."""
        return self in _FINAL_COMMAND_STATES


_FINAL_COMMAND_STATES: frozenset[CommandState] = frozenset(
    {CommandState.SUCCEEDED, CommandState.FAILED, CommandState.EXPIRED, CommandState.CANCELLED}
)


@dataclass(frozen=True, slots=True)
class Command:
    """A command to one device behind its gateway, as the registry keeps it."""

    id: str
    """``c-`` and 20 characters; ids sort in creation order (the first ten encode the creation millisecond)."""
    device_id: str
    gateway_id: str
    """The gateway the device was bound to when the command was created; it executes it."""
    name: str
    params: JSONObject
    state: CommandState
    idempotency_key: str
    deadline: float
    """Epoch seconds; past it the command is expired and never executed."""
    precondition_version: int | None
    """Run only if the gateway's reported twin version is still this one (compare-and-set), when given."""
    requires_confirmation: bool
    requested_by: str
    confirmed_by: str | None
    created_at: datetime
    updated_at: datetime
    reason: str | None
    """Why it failed, expired or was cancelled."""
    result: JSONObject | None
    """What the device answered (a read-back, a node's result), when it did."""


@dataclass(frozen=True, slots=True)
class CommandStep:
    """One transition in a command's history: the state entered, when, by whom, and why."""

    command_id: str
    seq: int
    """1 for the creation, then one more per transition."""
    at: datetime
    state: CommandState
    actor: str
    """A person (API token name), the gateway id, or ``system`` (the agent: sending, expiry)."""
    reason: str | None
    detail: JSONObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ApiPrincipal:
    """Who an API request acts as: the token's name (the audit log's actor) and role."""

    name: str
    role: ApiRole


@dataclass(frozen=True, slots=True)
class NorthboundItem:
    """A stored readings message waiting for the City OS (a row of ``northbound_outbox``)."""

    id: int
    gateway_id: str
    seq: int
    queued_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class NorthboundDepth:
    """How much waits for the City OS: pending messages, dead-lettered ones, and the oldest pending one's age."""

    pending: int
    dead: int
    oldest_queued_at: float | None
