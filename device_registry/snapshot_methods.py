"""Set-based reads for many gateways and devices at once (mixed into :class:`~device_registry.Registry`).

The context source builds entities for whole listing pages; reading each device's latest values and twin on its own
costs two queries per device. These methods answer for a set of ids with a fixed number of queries per
:data:`CHUNK` ids (the ids go in ``IN`` lists, chunked so that SQLite's limit on bound variables is never reached),
inside one read transaction, on SQLite and PostgreSQL alike:

* :meth:`SnapshotMethods.snapshots` -- each one's latest value per quantity and its twin (three queries per chunk:
  the entities with their own twin rows, their gateways' twins, the latest values);
* :meth:`SnapshotMethods.devices_of` and :meth:`SnapshotMethods.gateways_of` -- the devices or gateways themselves
  (two queries per chunk: the rows and their labels).

Unknown ids are left out of every answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from device_registry import inventory
from device_registry.database import reading
from device_registry.models import Device, Gateway, StoredReading, Twin
from device_registry.readings import stored_reading
from device_registry.schema import devices, entities, latest, twins
from kakehashi.wire import JSONObject

__all__ = ["CHUNK", "DeviceSnapshot", "SnapshotMethods"]

_T = TypeVar("_T", Device, Gateway)

CHUNK: Final = 500
"""Ids per ``IN`` list: well below SQLite's oldest default limit of 999 bound variables."""


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """What the registry holds now for one gateway or device: its latest values and its twin."""

    entity_id: str
    latest: tuple[StoredReading, ...]
    """The newest reading of each quantity, by quantity (as :meth:`~device_registry.Registry.latest` answers)."""
    twin: Twin | None
    """As :meth:`~device_registry.Registry.get_twin` answers; None for the rare entity without a twin row."""

    @property
    def settings(self) -> Mapping[str, object] | None:
        """The twin's settings as the device has them: the reported document when the gateway reported any, else
        the desired one; None when both are empty (or there is no twin)."""
        if self.twin is None:
            return None
        return self.twin.reported or self.twin.desired or None


class _Registry(Protocol):
    engine: AsyncEngine


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), CHUNK):
        yield unique[start : start + CHUNK]


_OWN = (
    sa.select(
        entities.c.id,
        entities.c.role,
        devices.c.gateway_id,
        twins.c.entity_id.label("twin_id"),
        twins.c.desired,
        twins.c.desired_version,
        twins.c.reported,
        twins.c.reported_version,
    )
    .select_from(
        entities.outerjoin(devices, devices.c.id == entities.c.id).outerjoin(twins, twins.c.entity_id == entities.c.id)
    )
    .where(entities.c.id.in_(sa.bindparam("ids", expanding=True)))
)
_GATEWAY_TWINS = sa.select(twins.c.entity_id, twins.c.reported, twins.c.reported_version).where(
    twins.c.entity_id.in_(sa.bindparam("ids", expanding=True))
)
_LATEST = (
    sa.select(latest)
    .where(latest.c.device_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(latest.c.device_id, latest.c.quantity)
)


def _device_section(gateway_reported: JSONObject | None, device_id: str) -> JSONObject:
    """A device's reported document: the ``devices.<id>`` part of its gateway's (see :func:`twin.twin`)."""
    section = (gateway_reported or {}).get("devices")
    found = section.get(device_id) if isinstance(section, dict) else None
    return dict(found) if isinstance(found, dict) else {}


def _twin_of(row: Any, gateway_twins: Mapping[str, tuple[JSONObject, int]]) -> Twin | None:
    """The twin of one row of :data:`_OWN` (a device's reported part comes from its gateway's twin)."""
    if row.twin_id is None:
        return None
    desired, desired_version = dict(row.desired), int(row.desired_version)
    if row.role == "gateway":
        return Twin(row.id, desired, desired_version, dict(row.reported), int(row.reported_version))
    gateway = gateway_twins.get(row.gateway_id) if row.gateway_id is not None else None
    if gateway is None:
        return Twin(row.id, desired, desired_version, {}, 0)
    return Twin(row.id, desired, desired_version, _device_section(gateway[0], row.id), gateway[1])


async def _snapshot_chunk(conn: AsyncConnection, ids: list[str]) -> list[DeviceSnapshot]:
    own = (await conn.execute(_OWN, {"ids": ids})).all()
    if not own:
        return []
    gateway_twins: dict[str, tuple[JSONObject, int]] = {
        row.id: (dict(row.reported), int(row.reported_version))
        for row in own
        if row.role == "gateway" and row.twin_id is not None
    }
    wanted = sorted({row.gateway_id for row in own if row.gateway_id is not None} - gateway_twins.keys())
    for part in _chunks(wanted):
        for twin_row in (await conn.execute(_GATEWAY_TWINS, {"ids": part})).all():
            gateway_twins[twin_row.entity_id] = (dict(twin_row.reported), int(twin_row.reported_version))
    values: dict[str, list[StoredReading]] = {}
    for value_row in (await conn.execute(_LATEST, {"ids": [row.id for row in own]})).all():
        values.setdefault(value_row.device_id, []).append(stored_reading(value_row))
    return [DeviceSnapshot(row.id, tuple(values.get(row.id, ())), _twin_of(row, gateway_twins)) for row in own]


class SnapshotMethods:
    """Latest values, twins, devices and gateways of many ids at once."""

    async def snapshots(self: _Registry, entity_ids: Sequence[str]) -> dict[str, DeviceSnapshot]:
        """The latest values and twin of each gateway or device among ``entity_ids`` (unknown ids are absent).

        Three queries per :data:`CHUNK` ids, however many devices, readings or gateways there are.
        """
        found: dict[str, DeviceSnapshot] = {}
        if not entity_ids:
            return found
        async with reading(self.engine) as conn:
            for ids in _chunks(entity_ids):
                found.update((snapshot.entity_id, snapshot) for snapshot in await _snapshot_chunk(conn, ids))
        return found

    async def devices_of(self: _Registry, device_ids: Sequence[str]) -> dict[str, Device]:
        """The devices among ``device_ids`` (gateway and unknown ids are absent), by id."""
        return await _by_id(self.engine, device_ids, inventory.devices_by_id)

    async def gateways_of(self: _Registry, gateway_ids: Sequence[str]) -> dict[str, Gateway]:
        """The gateways among ``gateway_ids`` (device and unknown ids are absent), by id."""
        return await _by_id(self.engine, gateway_ids, inventory.gateways_by_id)


async def _by_id(
    engine: AsyncEngine, ids: Sequence[str], read: Callable[[AsyncConnection, Sequence[str]], Awaitable[list[_T]]]
) -> dict[str, _T]:
    found: dict[str, _T] = {}
    if not ids:
        return found
    async with reading(engine) as conn:
        for part in _chunks(ids):
            found.update((item.id, item) for item in await read(conn, part))
    return found
