"""Twins: desired changes become versioned deltas per gateway; reported state merges; stale versions are refused.

The wire has one version sequence per gateway (``down/desired`` carries it, ``up/reported`` echoes the version the
gateway has applied), so a device's desired change takes the next version of its gateway and travels as
``{"devices": {"<device>": delta}}``. Desired and reported documents merge by JSON Merge Patch (RFC 7396).

A reported version older than the stored one is stale; one newer than any version issued is unknown; both are
refused. The same version may be reported again (the gateway re-reports its state after each desired message).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry import validation
from device_registry.errors import InvalidInput, NotFound
from device_registry.inventory import EntityRow
from device_registry.merge import merge_document
from device_registry.models import DesiredDelta, Twin
from device_registry.schema import desired_deltas, twins
from kakehashi.wire import JSONObject


class ReportOutcome(enum.Enum):
    MERGED = "merged"
    STALE = "stale"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ReportResult:
    outcome: ReportOutcome
    stored_version: int
    """The reported version stored before this report."""
    issued_version: int
    """The newest desired version issued to the gateway."""


async def _row(conn: AsyncConnection, entity_id: str, *, lock: bool) -> Any:
    stmt = sa.select(twins.c.desired, twins.c.desired_version, twins.c.reported, twins.c.reported_version).where(
        twins.c.entity_id == entity_id
    )
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"there is no twin for {entity_id!r}")
    return row


def gateway_of(target: EntityRow) -> str:
    """The gateway whose version sequence a change of ``target`` takes."""
    if target.role == "gateway":
        return target.id
    if target.gateway_id is None:
        raise InvalidInput(f"device {target.id} is bound to no gateway: bind it before changing its desired state")
    return target.gateway_id


async def set_desired(
    conn: AsyncConnection, target: EntityRow, delta: JSONObject, *, actor: str, now: datetime
) -> DesiredDelta:
    """Merge ``delta`` into the target's desired document and queue it for the gateway at the next version."""
    validation.document(delta, "desired delta")
    if not delta:
        raise InvalidInput("desired delta is empty: say what should change")
    gateway_id = gateway_of(target)
    wire_delta: JSONObject = delta if target.role == "gateway" else {"devices": {target.id: delta}}
    validation.document(wire_delta, "desired delta for the gateway")
    gateway_twin = await _row(conn, gateway_id, lock=True)
    version = int(gateway_twin.desired_version) + 1
    current = gateway_twin if target.id == gateway_id else await _row(conn, target.id, lock=True)
    desired = merge_document(dict(current.desired), delta)
    if target.id != gateway_id:
        await conn.execute(
            twins.update().where(twins.c.entity_id == gateway_id).values(desired_version=version, updated_at=now)
        )
    await conn.execute(
        twins.update()
        .where(twins.c.entity_id == target.id)
        .values(desired=desired, desired_version=version, updated_at=now)
    )
    await conn.execute(
        desired_deltas.insert().values(
            gateway_id=gateway_id, version=version, target_id=target.id, delta=wire_delta, actor=actor, created_at=now
        )
    )
    return DesiredDelta(gateway_id=gateway_id, version=version, target_id=target.id, delta=wire_delta, created_at=now)


async def resend_desired(conn: AsyncConnection, device: EntityRow, *, actor: str, now: datetime) -> DesiredDelta | None:
    """Queue a device's whole desired document for its (new) gateway; None if the document is empty."""
    desired = dict((await _row(conn, device.id, lock=True)).desired)
    if not desired:
        return None
    return await set_desired(conn, device, desired, actor=actor, now=now)


async def pending(conn: AsyncConnection, gateway_id: str) -> list[DesiredDelta]:
    """Deltas above the version the gateway last reported, oldest first (send them in this order)."""
    reported_version = (await _row(conn, gateway_id, lock=False)).reported_version
    stmt = (
        sa.select(desired_deltas)
        .where(desired_deltas.c.gateway_id == gateway_id, desired_deltas.c.version > reported_version)
        .order_by(desired_deltas.c.version)
    )
    return [
        DesiredDelta(
            gateway_id=row.gateway_id,
            version=int(row.version),
            target_id=row.target_id,
            delta=dict(row.delta),
            created_at=row.created_at,
        )
        for row in (await conn.execute(stmt)).all()
    ]


async def gateways_with_pending(conn: AsyncConnection) -> list[str]:
    """Gateways that have desired deltas above the version they last reported."""
    stmt = (
        sa.select(desired_deltas.c.gateway_id)
        .join(twins, twins.c.entity_id == desired_deltas.c.gateway_id)
        .where(desired_deltas.c.version > twins.c.reported_version)
        .distinct()
        .order_by(desired_deltas.c.gateway_id)
    )
    return [str(gateway_id) for gateway_id in (await conn.scalars(stmt)).all()]


async def merge_reported(
    conn: AsyncConnection, gateway_id: str, version: int, state: JSONObject, *, now: datetime
) -> ReportResult:
    """Merge a reported ``state`` at ``version`` into the gateway's reported document, unless the version is stale."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidInput(f"reported version must be a non-negative integer, got {version!r}")
    validation.document(state, "reported state")
    row = await _row(conn, gateway_id, lock=True)
    stored, issued = int(row.reported_version), int(row.desired_version)
    if version < stored:
        return ReportResult(ReportOutcome.STALE, stored, issued)
    if version > issued:
        return ReportResult(ReportOutcome.UNKNOWN, stored, issued)
    reported = merge_document(dict(row.reported), state)
    await conn.execute(
        twins.update()
        .where(twins.c.entity_id == gateway_id)
        .values(reported=reported, reported_version=version, updated_at=now)
    )
    return ReportResult(ReportOutcome.MERGED, stored, issued)


async def twin(conn: AsyncConnection, target: EntityRow) -> Twin:
    """The twin of a gateway, or of a device (its reported part read from its gateway's ``devices.<id>``)."""
    own = await _row(conn, target.id, lock=False)
    if target.role == "gateway":
        reported_doc = dict(own.reported)
        return Twin(target.id, dict(own.desired), int(own.desired_version), reported_doc, int(own.reported_version))
    reported: JSONObject = {}
    reported_version = 0
    if target.gateway_id is not None:
        gateway_twin = await _row(conn, target.gateway_id, lock=False)
        section = gateway_twin.reported.get("devices")
        found = section.get(target.id) if isinstance(section, dict) else None
        reported = dict(found) if isinstance(found, dict) else {}
        reported_version = int(gateway_twin.reported_version)
    return Twin(target.id, dict(own.desired), int(own.desired_version), reported, reported_version)
