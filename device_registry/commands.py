"""Commands in storage: create, look up, move through the lifecycle, list; every move is a step and an audit entry.

Runs in the caller's transaction. A command's row is read with ``FOR UPDATE`` (PostgreSQL) before it moves, and the
update is conditional on the state read, so two agents (or an ack racing a cancel) cannot both move one command.
Rules are in :mod:`device_registry.command_rules`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry import audit
from device_registry.command_rules import check_move
from device_registry.database import insert_for
from device_registry.errors import InvalidInput, NotFound
from device_registry.lifecycle import ACCEPTS_TRAFFIC
from device_registry.models import Command, CommandState, CommandStep, Page
from device_registry.schema import command_steps, commands, entities, presence
from kakehashi.wire import JSONObject

MAX_PAGE: Final = 1000
_BUSY: Final = (CommandState.SENT.value, CommandState.DELIVERED.value)
_WHY: Final = frozenset({CommandState.FAILED, CommandState.EXPIRED, CommandState.CANCELLED})
"""States whose step reason is also the command's ``reason`` (why it did not succeed)."""
_MAY_RECEIVE: Final = tuple(state.value for state in ACCEPTS_TRAFFIC)
_OPEN: Final = tuple(state.value for state in CommandState if not state.is_final)


def _command(row: Any) -> Command:
    return Command(
        id=row.id,
        device_id=row.device_id,
        gateway_id=row.gateway_id,
        name=row.name,
        params=dict(row.params),
        state=CommandState(row.state),
        idempotency_key=row.idempotency_key,
        deadline=float(row.deadline),
        precondition_version=None if row.precondition_version is None else int(row.precondition_version),
        requires_confirmation=bool(row.requires_confirmation),
        requested_by=row.requested_by,
        confirmed_by=row.confirmed_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        reason=row.reason,
        result=None if row.result is None else dict(row.result),
    )


@dataclass(frozen=True, slots=True)
class NewCommand:
    """What :func:`insert` stores (already validated)."""

    id: str
    device_id: str
    gateway_id: str
    name: str
    params: JSONObject
    state: CommandState
    idempotency_key: str
    deadline: float
    precondition_version: int | None
    requires_confirmation: bool
    requested_by: str


async def insert(conn: AsyncConnection, new: NewCommand, *, now: datetime) -> bool:
    """Store ``new`` unless its (device, idempotency key) exists; True if stored (then step 1 and audit follow)."""
    values = {
        "id": new.id,
        "device_id": new.device_id,
        "gateway_id": new.gateway_id,
        "name": new.name,
        "params": new.params,
        "state": new.state.value,
        "idempotency_key": new.idempotency_key,
        "deadline": new.deadline,
        "precondition_version": new.precondition_version,
        "requires_confirmation": new.requires_confirmation,
        "requested_by": new.requested_by,
        "created_at": now,
        "updated_at": now,
    }
    stmt = (
        insert_for(conn)(commands)
        .values(values)
        .on_conflict_do_nothing(index_elements=[commands.c.device_id, commands.c.idempotency_key])
        .returning(commands.c.id)
    )
    if (await conn.execute(stmt)).first() is None:
        return False
    detail: JSONObject = {
        "device": new.device_id,
        "gateway": new.gateway_id,
        "name": new.name,
        "params": new.params,
        "deadline": new.deadline,
        "idempotency_key": new.idempotency_key,
        "precondition_version": new.precondition_version,
    }
    why = "waits for a second person to confirm it" if new.requires_confirmation else "queued for its gateway"
    await _record(
        conn,
        new.id,
        new.device_id,
        1,
        new.state,
        actor=new.requested_by,
        reason=f"requested: {why}",
        detail=detail,
        now=now,
    )
    return True


async def by_key(conn: AsyncConnection, device_id: str, idempotency_key: str) -> Command | None:
    stmt = sa.select(commands).where(commands.c.device_id == device_id, commands.c.idempotency_key == idempotency_key)
    row = (await conn.execute(stmt)).first()
    return None if row is None else _command(row)


async def get(conn: AsyncConnection, command_id: str, *, lock: bool = False) -> Command:
    stmt = sa.select(commands).where(commands.c.id == command_id)
    row = (await conn.execute(stmt.with_for_update() if lock else stmt)).first()
    if row is None:
        raise NotFound(f"there is no command with id {command_id!r}")
    return _command(row)


async def get_many(conn: AsyncConnection, command_ids: Collection[str]) -> dict[str, Command]:
    """The commands among ``command_ids`` that exist, locked in id order (so concurrent callers lock in one order)."""
    if not command_ids:
        return {}
    stmt = sa.select(commands).where(commands.c.id.in_(sorted(command_ids))).order_by(commands.c.id).with_for_update()
    return {row.id: _command(row) for row in (await conn.execute(stmt)).all()}


async def _next_seq(conn: AsyncConnection, command_id: str) -> int:
    found = await conn.scalar(
        sa.select(sa.func.max(command_steps.c.seq)).where(command_steps.c.command_id == command_id)
    )
    return int(found or 0) + 1


async def _record(
    conn: AsyncConnection,
    command_id: str,
    device_id: str,
    seq: int,
    state: CommandState,
    *,
    actor: str,
    reason: str | None,
    detail: JSONObject,
    now: datetime,
) -> None:
    await conn.execute(
        command_steps.insert().values(
            command_id=command_id, seq=seq, at=now, state=state.value, actor=actor, reason=reason, detail=detail
        )
    )
    await audit.append(
        conn,
        at=now,
        actor=actor,
        action=f"command.{state.value}",
        entity_id=device_id,
        reason=reason or f"command {command_id} {state.value}",
        detail={"command": command_id, **detail},
    )


async def move(
    conn: AsyncConnection,
    current: Command,
    target: CommandState,
    *,
    actor: str,
    reason: str | None,
    now: datetime,
    detail: JSONObject | None = None,
    result: JSONObject | None = None,
    confirmed_by: str | None = None,
) -> Command:
    """Move ``current`` (read with a lock) to ``target`` or raise ``CommandRefused``; recorded and audited."""
    check_move(current.id, current.state, target)
    moved = dataclasses.replace(
        current,
        state=target,
        updated_at=now,
        reason=reason if reason is not None and target in _WHY else current.reason,
        result=current.result if result is None else result,
        confirmed_by=current.confirmed_by if confirmed_by is None else confirmed_by,
    )
    changed = await conn.execute(
        commands.update()
        .where(commands.c.id == current.id, commands.c.state == current.state.value)
        .values(
            state=target.value,
            updated_at=now,
            reason=moved.reason,
            result=moved.result,
            confirmed_by=moved.confirmed_by,
        )
    )
    if changed.rowcount != 1:  # moved by another transaction between our read and this update (SQLite: impossible)
        return await get(conn, current.id)
    step = await _next_seq(conn, current.id)
    await _record(
        conn, current.id, current.device_id, step, target, actor=actor, reason=reason, detail=detail or {}, now=now
    )
    return moved


async def history(conn: AsyncConnection, command_id: str) -> list[CommandStep]:
    await get(conn, command_id)
    stmt = sa.select(command_steps).where(command_steps.c.command_id == command_id).order_by(command_steps.c.seq)
    return [
        CommandStep(
            command_id=row.command_id,
            seq=int(row.seq),
            at=row.at,
            state=CommandState(row.state),
            actor=row.actor,
            reason=row.reason,
            detail=dict(row.detail),
        )
        for row in (await conn.execute(stmt)).all()
    ]


async def to_send(conn: AsyncConnection, gateway_id: str, *, now: float, online_only: bool = False) -> list[Command]:
    """Queued commands of ``gateway_id`` before their deadline, the oldest per device, for devices that are
    provisioned or active and have nothing in flight (no command sent or delivered); oldest first. With
    ``online_only`` nothing unless the gateway is online (its presence), in the same query."""
    busy = sa.select(commands.c.device_id).where(commands.c.state.in_(_BUSY))
    device_ok = sa.exists().where(entities.c.id == commands.c.device_id, entities.c.state.in_(_MAY_RECEIVE))
    conditions = [
        commands.c.gateway_id == gateway_id,
        commands.c.state == CommandState.QUEUED.value,
        commands.c.deadline > now,
        commands.c.device_id.not_in(busy),
        device_ok,
    ]
    if online_only:
        conditions.append(
            sa.exists().where(presence.c.gateway_id == commands.c.gateway_id, presence.c.online.is_(True))
        )
    stmt = sa.select(commands).where(*conditions).order_by(commands.c.created_at, commands.c.id)
    chosen: dict[str, Command] = {}
    for row in (await conn.execute(stmt)).all():
        chosen.setdefault(row.device_id, _command(row))
    return list(chosen.values())


async def overdue(conn: AsyncConnection, *, now: float) -> list[Command]:
    """Non-final commands whose deadline has passed, locked, oldest first."""
    stmt = (
        sa.select(commands)
        .where(commands.c.state.in_(_OPEN), commands.c.deadline <= now)
        .order_by(commands.c.id)
        .with_for_update()
    )
    return [_command(row) for row in (await conn.execute(stmt)).all()]


async def listing(
    conn: AsyncConnection,
    *,
    device_id: str | None,
    gateway_id: str | None,
    state: CommandState | None,
    after: str | None,
    limit: int,
) -> Page[Command]:
    """Commands matching every filter, in id (creation) order, paged by id."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be 1 to {MAX_PAGE}, not {limit!r}")
    filters: list[sa.ColumnElement[bool]] = []
    if device_id is not None:
        filters.append(commands.c.device_id == device_id)
    if gateway_id is not None:
        filters.append(commands.c.gateway_id == gateway_id)
    if state is not None:
        filters.append(commands.c.state == CommandState(state).value)
    total = await conn.scalar(sa.select(sa.func.count()).select_from(commands).where(*filters))
    stmt = sa.select(commands).where(*filters).order_by(commands.c.id).limit(limit + 1)
    if after is not None:
        stmt = stmt.where(commands.c.id > after)
    rows = (await conn.execute(stmt)).all()
    items = tuple(_command(row) for row in rows[:limit])
    return Page(items=items, total=int(total or 0), next_cursor=items[-1].id if len(rows) > limit else None)
