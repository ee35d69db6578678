"""Listings of organisations, gateways and devices: filters, a keyset cursor on the id, and the total.

A page is ordered by id; ``next_cursor`` is the last id on the page, so pages stay stable while entities are added.
Label filters match entities that carry every given ``key=value``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry.errors import InvalidInput
from device_registry.inventory import (
    DEVICE_COLUMNS,
    DEVICE_FROM,
    GATEWAY_COLUMNS,
    device_from_row,
    gateway_from_row,
    labels_of,
)
from device_registry.lifecycle import State
from device_registry.models import Device, Gateway, Organisation, Page
from device_registry.schema import devices, entities, entity_labels, organisations

MAX_PAGE: Final = 1000


def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be 1 to {MAX_PAGE}, not {limit!r}")
    return limit


def _label_filters(labels: Mapping[str, str] | None) -> list[sa.ColumnElement[bool]]:
    return [
        sa.exists().where(
            entity_labels.c.entity_id == entities.c.id, entity_labels.c.key == key, entity_labels.c.value == value
        )
        for key, value in (labels or {}).items()
    ]


async def _page_of_ids(
    conn: AsyncConnection,
    id_column: sa.ColumnElement[str],
    from_clause: sa.FromClause,
    filters: list[sa.ColumnElement[bool]],
    after: str | None,
    limit: int,
) -> tuple[list[str], int, str | None]:
    total = await conn.scalar(sa.select(sa.func.count()).select_from(from_clause).where(*filters))
    stmt = sa.select(id_column).select_from(from_clause).where(*filters).order_by(id_column).limit(limit + 1)
    if after is not None:
        stmt = stmt.where(id_column > after)
    ids = list((await conn.scalars(stmt)).all())
    more = len(ids) > limit
    ids = ids[:limit]
    return ids, int(total or 0), ids[-1] if more else None


async def list_organisations(conn: AsyncConnection, *, after: str | None, limit: int) -> Page[Organisation]:
    ids, total, cursor = await _page_of_ids(conn, organisations.c.id, organisations, [], after, _check_limit(limit))
    rows = (await conn.execute(sa.select(organisations).where(organisations.c.id.in_(ids)))).all()
    by_id = {row.id: Organisation(id=row.id, name=row.name, created_at=row.created_at) for row in rows}
    return Page(items=tuple(by_id[i] for i in ids), total=total, next_cursor=cursor)


async def list_gateways(
    conn: AsyncConnection,
    *,
    organisation_id: str | None,
    state: State | None,
    labels: Mapping[str, str] | None,
    after: str | None,
    limit: int,
) -> Page[Gateway]:
    filters = [entities.c.role == "gateway", *_label_filters(labels)]
    if organisation_id is not None:
        filters.append(entities.c.organisation_id == organisation_id)
    if state is not None:
        filters.append(entities.c.state == State(state).value)
    ids, total, cursor = await _page_of_ids(conn, entities.c.id, entities, filters, after, _check_limit(limit))
    rows = (await conn.execute(sa.select(*GATEWAY_COLUMNS).where(entities.c.id.in_(ids)))).all()
    labels_by_id = await labels_of(conn, ids)
    by_id = {row.id: gateway_from_row(row, labels_by_id.get(row.id, {})) for row in rows}
    return Page(items=tuple(by_id[i] for i in ids), total=total, next_cursor=cursor)


async def list_devices(
    conn: AsyncConnection,
    *,
    organisation_id: str | None,
    kind: str | None,
    state: State | None,
    gateway_id: str | None,
    labels: Mapping[str, str] | None,
    after: str | None,
    limit: int,
) -> Page[Device]:
    filters = _label_filters(labels)
    if organisation_id is not None:
        filters.append(entities.c.organisation_id == organisation_id)
    if kind is not None:
        filters.append(devices.c.kind == kind)
    if state is not None:
        filters.append(entities.c.state == State(state).value)
    if gateway_id is not None:
        filters.append(devices.c.gateway_id == gateway_id)
    ids, total, cursor = await _page_of_ids(conn, entities.c.id, DEVICE_FROM, filters, after, _check_limit(limit))
    stmt = sa.select(*DEVICE_COLUMNS).select_from(DEVICE_FROM).where(entities.c.id.in_(ids))
    rows = (await conn.execute(stmt)).all()
    labels_by_id = await labels_of(conn, ids)
    by_id = {row.id: device_from_row(row, labels_by_id.get(row.id, {})) for row in rows}
    return Page(items=tuple(by_id[i] for i in ids), total=total, next_cursor=cursor)
