"""Organisations, gateways and devices: create, read, bind, consent, hardware serial. No audit, no transactions.

Every function works inside the caller's transaction (see :mod:`device_registry.registry`, which composes them and
writes the audit entries). Gateways and devices share the ``entities`` table (one id namespace, one lifecycle);
device-only fields live in ``devices``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry.errors import AlreadyExists, InvalidInput, NotFound
from device_registry.lifecycle import WATCH_TAG, Role, State
from device_registry.models import Device, Gateway, Location, Organisation
from device_registry.schema import devices, entities, entity_labels, organisations, twins


@dataclass(frozen=True, slots=True)
class EntityRow:
    """The fields of a gateway or device that rules look at (lifecycle, ingest, twin)."""

    id: str
    role: Role
    organisation_id: str
    state: State
    hardware_serial: str | None
    kind: str | None
    gateway_id: str | None
    consent: bool | None
    retention_s: int | None
    seq_floor: int

    @property
    def subject(self) -> str:
        """``gateway gw-0001`` or ``device wl-0007``, for messages."""
        return f"{self.role} {self.id}"


_ENTITY_COLUMNS = (
    entities.c.id,
    entities.c.role,
    entities.c.organisation_id,
    entities.c.state,
    entities.c.hardware_serial,
    entities.c.seq_floor,
    devices.c.kind,
    devices.c.gateway_id,
    devices.c.consent,
    devices.c.retention_s,
)
_ENTITY_FROM = entities.outerjoin(devices, devices.c.id == entities.c.id)
_ENTITY_SELECT = sa.select(*_ENTITY_COLUMNS).select_from(_ENTITY_FROM)
# Built once: the ingest path runs these for every batch.
_ONE = _ENTITY_SELECT.where(entities.c.id == sa.bindparam("id"))
_ONE_LOCKED = _ONE.with_for_update(of=entities)
_MANY = _ENTITY_SELECT.where(entities.c.id.in_(sa.bindparam("ids", expanding=True)))


def _entity_row(row: Any) -> EntityRow:
    return EntityRow(
        id=row.id,
        role=row.role,
        organisation_id=row.organisation_id,
        state=State(row.state),
        hardware_serial=row.hardware_serial,
        kind=row.kind,
        gateway_id=row.gateway_id,
        consent=row.consent,
        retention_s=row.retention_s,
        seq_floor=int(row.seq_floor),
    )


async def entity(conn: AsyncConnection, entity_id: str, *, lock: bool = False, role: Role | None = None) -> EntityRow:
    """The gateway or device ``entity_id``; ``lock`` holds its row until the transaction ends (PostgreSQL)."""
    row = (await conn.execute(_ONE_LOCKED if lock else _ONE, {"id": entity_id})).first()
    if row is None or (role is not None and row.role != role):
        raise NotFound(f"there is no {role or 'gateway or device'} with id {entity_id!r}")
    return _entity_row(row)


async def entities_by_id(conn: AsyncConnection, entity_ids: Iterable[str]) -> dict[str, EntityRow]:
    """The gateways and devices among ``entity_ids``, in one query (unknown ids are absent)."""
    ids = list(entity_ids)
    if not ids:
        return {}
    return {row.id: _entity_row(row) for row in (await conn.execute(_MANY, {"ids": ids})).all()}


async def create_organisation(conn: AsyncConnection, organisation_id: str, name: str, now: datetime) -> Organisation:
    if await conn.scalar(sa.select(organisations.c.id).where(organisations.c.id == organisation_id)) is not None:
        raise AlreadyExists(f"organisation {organisation_id} already exists")
    await conn.execute(organisations.insert().values(id=organisation_id, name=name, created_at=now))
    return Organisation(id=organisation_id, name=name, created_at=now)


async def organisation(conn: AsyncConnection, organisation_id: str) -> Organisation:
    row = (await conn.execute(sa.select(organisations).where(organisations.c.id == organisation_id))).first()
    if row is None:
        raise NotFound(f"there is no organisation with id {organisation_id!r}")
    return Organisation(id=row.id, name=row.name, created_at=row.created_at)


async def check_serial_free(conn: AsyncConnection, serial: str | None, *, owner: str | None = None) -> None:
    """Refuse a hardware serial that a gateway or device in service (not decommissioned) already has."""
    if serial is None:
        return
    holder = await conn.scalar(
        sa.select(entities.c.id).where(
            entities.c.hardware_serial == serial,
            entities.c.state != State.DECOMMISSIONED.value,
            entities.c.id != (owner or ""),
        )
    )
    if holder is not None:
        raise AlreadyExists(f"hardware serial {serial!r} is already in use by {holder} (decommission it first)")


async def _insert_entity(
    conn: AsyncConnection,
    *,
    entity_id: str,
    role: Role,
    organisation_id: str,
    hardware_serial: str | None,
    owner: str | None,
    location: Location,
    labels: Mapping[str, str],
    now: datetime,
) -> None:
    if await conn.scalar(sa.select(entities.c.role).where(entities.c.id == entity_id)) is not None:
        raise AlreadyExists(f"id {entity_id} is already used by a gateway or device (ids name one certificate each)")
    await organisation(conn, organisation_id)
    await check_serial_free(conn, hardware_serial)
    await conn.execute(
        entities.insert().values(
            id=entity_id,
            role=role,
            organisation_id=organisation_id,
            state=State.REGISTERED.value,
            state_changed_at=now,
            hardware_serial=hardware_serial,
            owner=owner,
            latitude=location.latitude,
            longitude=location.longitude,
            place=location.place,
            created_at=now,
        )
    )
    if labels:
        await conn.execute(
            entity_labels.insert(), [{"entity_id": entity_id, "key": k, "value": v} for k, v in labels.items()]
        )
    await conn.execute(
        twins.insert().values(
            entity_id=entity_id, desired={}, desired_version=0, reported={}, reported_version=0, updated_at=now
        )
    )


async def create_gateway(
    conn: AsyncConnection,
    *,
    gateway_id: str,
    organisation_id: str,
    hardware_serial: str | None,
    owner: str | None,
    location: Location,
    labels: Mapping[str, str],
    now: datetime,
) -> None:
    await _insert_entity(
        conn,
        entity_id=gateway_id,
        role="gateway",
        organisation_id=organisation_id,
        hardware_serial=hardware_serial,
        owner=owner,
        location=location,
        labels=labels,
        now=now,
    )


async def create_device(
    conn: AsyncConnection,
    *,
    device_id: str,
    organisation_id: str,
    kind: str,
    profile: str | None,
    hardware_serial: str | None,
    owner: str | None,
    location: Location,
    labels: Mapping[str, str],
    consent: bool | None,
    retention_s: int | None,
    now: datetime,
) -> None:
    if kind == WATCH_TAG and (consent is None or retention_s is None):
        raise InvalidInput(
            f"watch tag {device_id} needs a consent decision and a retention period (watch tags are personal data)"
        )
    if kind != WATCH_TAG and consent is not None:
        raise InvalidInput(f"device {device_id} is a {kind}: only watch tags carry a consent flag")
    await _insert_entity(
        conn,
        entity_id=device_id,
        role="device",
        organisation_id=organisation_id,
        hardware_serial=hardware_serial,
        owner=owner,
        location=location,
        labels=labels,
        now=now,
    )
    await conn.execute(
        devices.insert().values(id=device_id, kind=kind, profile=profile, consent=consent, retention_s=retention_s)
    )


async def bind(conn: AsyncConnection, device_id: str, gateway_id: str | None, now: datetime) -> None:
    await conn.execute(
        devices.update()
        .where(devices.c.id == device_id)
        .values(gateway_id=gateway_id, bound_at=now if gateway_id is not None else None)
    )


async def set_consent(conn: AsyncConnection, device_id: str, consent: bool) -> None:
    await conn.execute(devices.update().where(devices.c.id == device_id).values(consent=consent))


async def set_hardware_serial(conn: AsyncConnection, entity_id: str, serial: str) -> None:
    await conn.execute(entities.update().where(entities.c.id == entity_id).values(hardware_serial=serial))


async def labels_of(conn: AsyncConnection, entity_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """The labels of each of ``entity_ids`` (ids without labels are absent)."""
    ids = list(entity_ids)
    found: dict[str, dict[str, str]] = {}
    if not ids:
        return found
    stmt = sa.select(entity_labels).where(entity_labels.c.entity_id.in_(ids))
    for row in (await conn.execute(stmt)).all():
        found.setdefault(row.entity_id, {})[row.key] = row.value
    return found


GATEWAY_COLUMNS = tuple(entities.c)
DEVICE_COLUMNS = (
    *entities.c,
    devices.c.kind,
    devices.c.profile,
    devices.c.gateway_id,
    devices.c.consent,
    devices.c.retention_s,
)
DEVICE_FROM = entities.join(devices, devices.c.id == entities.c.id)


def _location(row: Row[tuple[object, ...]]) -> Location:
    return Location(latitude=row.latitude, longitude=row.longitude, place=row.place)


def gateway_from_row(row: Row[tuple[object, ...]], labels: Mapping[str, str]) -> Gateway:
    return Gateway(
        id=row.id,
        organisation_id=row.organisation_id,
        state=State(row.state),
        state_changed_at=row.state_changed_at,
        hardware_serial=row.hardware_serial,
        owner=row.owner,
        location=_location(row),
        labels=dict(labels),
        created_at=row.created_at,
        refused_readings=int(row.refused_readings),
    )


def device_from_row(row: Row[tuple[object, ...]], labels: Mapping[str, str]) -> Device:
    return Device(
        id=row.id,
        organisation_id=row.organisation_id,
        kind=row.kind,
        profile=row.profile,
        state=State(row.state),
        state_changed_at=row.state_changed_at,
        gateway_id=row.gateway_id,
        hardware_serial=row.hardware_serial,
        owner=row.owner,
        location=_location(row),
        labels=dict(labels),
        consent=row.consent,
        retention=None if row.retention_s is None else timedelta(seconds=row.retention_s),
        created_at=row.created_at,
        refused_readings=int(row.refused_readings),
    )


async def gateways_by_id(conn: AsyncConnection, ids: Sequence[str]) -> list[Gateway]:
    stmt = sa.select(*GATEWAY_COLUMNS).where(entities.c.id.in_(ids), entities.c.role == "gateway")
    rows = (await conn.execute(stmt.order_by(entities.c.id))).all()
    labels = await labels_of(conn, [row.id for row in rows])
    return [gateway_from_row(row, labels.get(row.id, {})) for row in rows]


async def devices_by_id(conn: AsyncConnection, ids: Sequence[str]) -> list[Device]:
    stmt = sa.select(*DEVICE_COLUMNS).select_from(DEVICE_FROM).where(entities.c.id.in_(ids))
    rows = (await conn.execute(stmt.order_by(entities.c.id))).all()
    labels = await labels_of(conn, [row.id for row in rows])
    return [device_from_row(row, labels.get(row.id, {})) for row in rows]


async def gateway(conn: AsyncConnection, gateway_id: str) -> Gateway:
    found = await gateways_by_id(conn, [gateway_id])
    if not found:
        raise NotFound(f"there is no gateway with id {gateway_id!r}")
    return found[0]


async def device(conn: AsyncConnection, device_id: str) -> Device:
    found = await devices_by_id(conn, [device_id])
    if not found:
        raise NotFound(f"there is no device with id {device_id!r}")
    return found[0]
