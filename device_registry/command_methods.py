"""The registry's command methods (mixed into :class:`~device_registry.Registry`): one method, one transaction.

An asset manager creates a command (confirmed by a second person when its profile says so); the agent asks which
commands it may send to a gateway now, marks them sent, and applies the gateway's acknowledgements; a periodic call
expires what passed its deadline. Every move is a :class:`~device_registry.models.CommandStep` and an audit entry
``command.<state>``. See ``docs/actuation.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from device_registry import audit, commands, inventory, traffic, validation
from device_registry.command_rules import (
    ACK_STATES,
    ACKABLE,
    CANCELLABLE,
    TRANSITIONS,
    check_idempotency_key,
    check_name,
    check_ttl,
    new_command_id,
)
from device_registry.database import reading, writing
from device_registry.errors import CommandRefused, InvalidInput, TrafficRefused
from device_registry.lifecycle import ACCEPTS_TRAFFIC
from device_registry.models import Command, CommandState, CommandStep, Page
from kakehashi import wire
from kakehashi.wire import JSONObject, JSONValue

MAX_IGNORED_LISTED: Final = 20
"""Most ignored command ids named in one ``command.acks_ignored`` audit entry."""


class _Registry(Protocol):
    engine: AsyncEngine

    def _now(self) -> datetime: ...


def _same_request(existing: Command, name: str, params: JSONObject, precondition_version: int | None) -> Command:
    if (existing.name, existing.params, existing.precondition_version) != (name, params, precondition_version):
        raise CommandRefused(
            f"idempotency key {existing.idempotency_key!r} of device {existing.device_id} was used for command "
            f"{existing.id} ({existing.name} {existing.params}): use a new key for a different command",
            reason="idempotency_conflict",
        )
    return existing


def _precondition(version: int | None) -> int | None:
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise InvalidInput(
            f"precondition version must be a whole number from 0 (a reported twin version), not {version!r}"
        )
    return version


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


class CommandMethods:
    """Commands: create, confirm, cancel, send, acknowledge, expire, read."""

    async def create_command(
        self: _Registry,
        device_id: str,
        name: str,
        params: JSONObject,
        *,
        actor: str,
        ttl: timedelta,
        idempotency_key: str,
        precondition_version: int | None = None,
        requires_confirmation: bool = False,
    ) -> Command:
        """Queue a command for a provisioned or active device bound to a gateway (or hold it for confirmation).

        The same ``(device, idempotency_key)`` returns the existing command unchanged; with another name, params or
        precondition it is refused (``idempotency_conflict``).
        """
        check_name(name)
        validation.document(params, "command params")
        audit.check_actor(actor)
        ttl_s = check_ttl(ttl)
        check_idempotency_key(idempotency_key)
        _precondition(precondition_version)
        now = self._now()
        async with writing(self.engine) as conn:
            device = await inventory.entity(conn, device_id, lock=True, role="device")
            existing = await commands.by_key(conn, device_id, idempotency_key)
            if existing is not None:
                return _same_request(existing, name, params, precondition_version)
            if device.state not in ACCEPTS_TRAFFIC:
                raise CommandRefused(
                    f"device {device_id} is {device.state}: commands go only to provisioned or active devices",
                    reason="device_inactive",
                )
            if device.gateway_id is None:
                raise CommandRefused(
                    f"device {device_id} is bound to no gateway, so nothing can carry a command to it: bind it first",
                    reason="device_unbound",
                )
            gateway = await inventory.entity(conn, device.gateway_id, role="gateway")
            if gateway.state not in ACCEPTS_TRAFFIC:
                raise CommandRefused(
                    f"gateway {gateway.id} of device {device_id} is {gateway.state}: it takes no commands",
                    reason="gateway_inactive",
                )
            new = commands.NewCommand(
                id=new_command_id(now),
                device_id=device_id,
                gateway_id=gateway.id,
                name=name,
                params=params,
                state=CommandState.AWAITING_CONFIRMATION if requires_confirmation else CommandState.QUEUED,
                idempotency_key=idempotency_key,
                deadline=now.timestamp() + ttl_s,
                precondition_version=precondition_version,
                requires_confirmation=requires_confirmation,
                requested_by=actor,
            )
            if not await commands.insert(conn, new, now=now):  # a concurrent request with the same key won
                raced = await commands.by_key(conn, device_id, idempotency_key)
                assert raced is not None
                return _same_request(raced, name, params, precondition_version)
            return await commands.get(conn, new.id)

    async def confirm_command(self: _Registry, command_id: str, *, actor: str) -> Command:
        """A second person confirms a command awaiting confirmation; it is then queued.

        Refused for the person who requested it (``confirmation_by_requester``), for a command in another state
        (``illegal_transition``), past its deadline (``command_expired``: it is expired now) or for a device that is
        no longer provisioned or active (``device_inactive``).
        """
        audit.check_actor(actor)
        now = self._now()
        refusal: CommandRefused | None = None
        async with writing(self.engine) as conn:
            current = await commands.get(conn, command_id, lock=True)
            if current.state is not CommandState.AWAITING_CONFIRMATION:
                raise CommandRefused(
                    f"command {command_id} is {current.state}, not awaiting confirmation: nothing to confirm",
                    reason="illegal_transition",
                )
            if actor == current.requested_by:
                raise CommandRefused(
                    f"command {command_id} was requested by {actor}: another person must confirm it",
                    reason="confirmation_by_requester",
                    http_status=403,
                )
            if current.deadline <= now.timestamp():
                done = await commands.move(
                    conn,
                    current,
                    CommandState.EXPIRED,
                    actor=audit.SYSTEM,
                    reason=f"deadline {_iso(current.deadline)} passed before it was confirmed",
                    now=now,
                )
                refusal = CommandRefused(
                    f"command {command_id} expired at {_iso(current.deadline)} before it was confirmed: "
                    "create it again",
                    reason="command_expired",
                )
            else:
                device = await inventory.entity(conn, current.device_id)
                if device.state not in ACCEPTS_TRAFFIC:
                    raise CommandRefused(
                        f"device {device.id} is {device.state}: the command cannot be confirmed",
                        reason="device_inactive",
                    )
                done = await commands.move(
                    conn,
                    current,
                    CommandState.QUEUED,
                    actor=actor,
                    reason=f"confirmed by {actor}",
                    now=now,
                    confirmed_by=actor,
                )
        if refusal is not None:
            raise refusal
        return done

    async def cancel_command(self: _Registry, command_id: str, *, actor: str, reason: str) -> Command:
        """Cancel a command awaiting confirmation, queued or sent (a sent one may still reach the gateway: its
        acknowledgements are then ignored and audited). A delivered or final command cannot be cancelled."""
        audit.check_actor(actor)
        audit.check_reason(reason)
        now = self._now()
        async with writing(self.engine) as conn:
            current = await commands.get(conn, command_id, lock=True)
            if current.state not in CANCELLABLE:
                why = (
                    "the gateway is already executing it"
                    if current.state is CommandState.DELIVERED
                    else "it is final and never changes again"
                )
                raise CommandRefused(
                    f"command {command_id} is {current.state}: it cannot be cancelled ({why})",
                    reason="illegal_transition",
                )
            return await commands.move(conn, current, CommandState.CANCELLED, actor=actor, reason=reason, now=now)

    async def get_command(self: _Registry, command_id: str) -> Command:
        async with reading(self.engine) as conn:
            return await commands.get(conn, command_id)

    async def command_history(self: _Registry, command_id: str) -> list[CommandStep]:
        """Every state the command entered, oldest first (step 1 is its creation)."""
        async with reading(self.engine) as conn:
            return await commands.history(conn, command_id)

    async def list_commands(
        self: _Registry,
        *,
        device: str | None = None,
        gateway: str | None = None,
        state: CommandState | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> Page[Command]:
        """Commands in creation (id) order; page with ``after`` = the previous page's ``next_cursor``."""
        async with reading(self.engine) as conn:
            return await commands.listing(
                conn, device_id=device, gateway_id=gateway, state=state, after=after, limit=limit
            )

    async def commands_to_send(
        self: _Registry, gateway_id: str, *, now: float | None = None, online_only: bool = False
    ) -> list[Command]:
        """What the agent may send to ``gateway_id`` now: queued commands before their deadline, at most one per
        device and none for a device with a command sent or delivered (per-device serialisation), oldest first.
        Devices that are not provisioned or active get nothing (their commands wait, then expire). With
        ``online_only``, nothing while the gateway is not online (one query instead of a presence read first)."""
        at = self._now().timestamp() if now is None else float(now)
        async with reading(self.engine) as conn:
            await inventory.entity(conn, gateway_id, role="gateway")
            return await commands.to_send(conn, gateway_id, now=at, online_only=online_only)

    async def mark_sent(self: _Registry, command_id: str) -> Command:
        """queued → sent (actor ``system``), or queued → expired if its deadline has passed (then do not send it).
        A command already past queued is returned as it is; one awaiting confirmation is refused."""
        now = self._now()
        async with writing(self.engine) as conn:
            current = await commands.get(conn, command_id, lock=True)
            if current.state is CommandState.AWAITING_CONFIRMATION:
                raise CommandRefused(
                    f"command {command_id} awaits confirmation by a second person: it must not be sent",
                    reason="illegal_transition",
                )
            if current.state is not CommandState.QUEUED:
                return current
            if current.deadline <= now.timestamp():
                return await commands.move(
                    conn,
                    current,
                    CommandState.EXPIRED,
                    actor=audit.SYSTEM,
                    reason=f"deadline {_iso(current.deadline)} passed before it could be sent",
                    now=now,
                )
            return await commands.move(
                conn,
                current,
                CommandState.SENT,
                actor=audit.SYSTEM,
                reason=f"sent to gateway {current.gateway_id}",
                now=now,
            )

    async def apply_acks(
        self: _Registry,
        gateway_id: str,
        seq: int,
        acks: Sequence[wire.CommandAck],
        *,
        received_at: float | None = None,
    ) -> list[Command]:
        """Apply one acks message exactly once (deduplicated by ``(gateway, seq)``, channel ``acks``); returns the
        commands it changed. Acks for unknown commands, other gateways' commands or commands already final (with a
        different outcome) change nothing and are counted in one ``command.acks_ignored`` audit entry."""
        validation.sequence_number(seq, "seq")
        now = self._now()
        at = now.timestamp() if received_at is None else float(received_at)
        async with writing(self.engine) as conn:
            admission = await traffic.admit(conn, gateway_id, now=now)
            if not admission.accepted:
                raise TrafficRefused(f"gateway {gateway_id} is {admission.gateway.state}: its acks are refused")
            if not await traffic.claim_one(conn, admission.gateway, seq, at, "acks"):
                return []
            changed: dict[str, Command] = {}
            ignored: list[JSONValue] = []
            found = await commands.get_many(conn, {ack.command_id for ack in acks})
            for ack in acks:
                current = found.get(ack.command_id)
                if current is None:
                    ignored.append({"command": ack.command_id, "status": ack.status.value, "why": "unknown"})
                    continue
                if current.gateway_id != gateway_id:
                    ignored.append({"command": ack.command_id, "status": ack.status.value, "why": "other_gateway"})
                    continue
                target = ACK_STATES[ack.status]
                if current.state not in ACKABLE or target not in TRANSITIONS[current.state]:
                    if current.state.is_final and target is not current.state:
                        ignored.append(
                            {"command": ack.command_id, "status": ack.status.value, "why": current.state.value}
                        )
                    continue
                reason = ack.reason
                if ack.status is wire.AckStatus.REJECTED:
                    reason = f"rejected by the gateway: {ack.reason or 'no reason given'}"
                detail: JSONObject = {"ack": ack.status.value, "gateway_at": ack.at, "seq": seq}
                found[current.id] = changed[current.id] = await commands.move(
                    conn, current, target, actor=gateway_id, reason=reason, now=now, detail=detail, result=ack.result
                )
            if ignored:
                await audit.append(
                    conn,
                    at=now,
                    actor=gateway_id,
                    action="command.acks_ignored",
                    entity_id=gateway_id,
                    reason=f"{len(ignored)} acknowledgement(s) of message {seq} changed no command",
                    detail={"seq": seq, "count": len(ignored), "acks": ignored[:MAX_IGNORED_LISTED]},
                )
            return list(changed.values())

    async def expire_commands(self: _Registry, *, now: float | None = None) -> list[Command]:
        """Every command that is not final and whose deadline is at or before ``now`` becomes expired (actor
        ``system``); returns them."""
        moment = self._now()
        at = moment.timestamp() if now is None else float(now)
        async with writing(self.engine) as conn:
            expired = []
            for current in await commands.overdue(conn, now=at):
                expired.append(
                    await commands.move(
                        conn,
                        current,
                        CommandState.EXPIRED,
                        actor=audit.SYSTEM,
                        reason=f"deadline {_iso(current.deadline)} passed while {current.state}",
                        now=moment,
                    )
                )
            return expired
