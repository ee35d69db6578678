"""Commands: what a client sends to create, confirm or cancel one, and a command with its whole history as answered."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from cloud_agent.api.schemas.common import Request
from device_registry.models import Command, CommandState, CommandStep
from hw.catalog import CommandSpec, ParamSpec

_WAITING = (CommandState.AWAITING_CONFIRMATION, CommandState.QUEUED)


class PreconditionIn(Request):
    reported_version: int = Field(
        ge=0, description="Run only if the gateway's reported twin version is still this one (compare-and-set)."
    )


class CommandCreate(Request):
    name: str = Field(description="A command the device's hardware profile declares.", examples=["open"])
    params: dict[str, Any] = Field(
        default_factory=dict, description='The command\'s parameters, e.g. {"value": "flood"}.', examples=[{}]
    )
    ttl_s: float = Field(
        default=300, description="Time to live in seconds (at most 7 days): the deadline is now + ttl."
    )
    idempotency_key: str = Field(
        min_length=1,
        max_length=128,
        description="Repeating a request with the same key returns the same command instead of a second one.",
        examples=["open-valve-0003-2026-04-01"],
    )
    precondition: PreconditionIn | None = None


class CancelRequest(Request):
    reason: str = Field(min_length=1, max_length=1024, description="Why (kept in the history and audit log).")


class CommandStepOut(BaseModel):
    seq: int
    at: datetime
    state: CommandState
    actor: str = Field(description="A person (API token name), the gateway id, or system (sending, expiry).")
    reason: str | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, step: CommandStep) -> CommandStepOut:
        return cls(
            seq=step.seq, at=step.at, state=step.state, actor=step.actor, reason=step.reason, detail=dict(step.detail)
        )


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_text(command: Command) -> str:
    """One line for people: the state and, while it waits, until when ("pending until T")."""
    if command.state is CommandState.AWAITING_CONFIRMATION:
        return f"awaiting confirmation by a second person: pending until {_iso(command.deadline)}"
    if command.state is CommandState.QUEUED:
        return f"queued for gateway {command.gateway_id}: pending until {_iso(command.deadline)}"
    if command.state in (CommandState.SENT, CommandState.DELIVERED):
        return f"{command.state} to gateway {command.gateway_id}: deadline {_iso(command.deadline)}"
    return f"{command.state}: {command.reason}" if command.reason else str(command.state)


class CommandOut(BaseModel):
    id: str
    device: str
    gateway: str
    name: str
    params: dict[str, Any]
    state: CommandState
    status: str = Field(description='The state in words, e.g. "queued for gateway gw-0001: pending until <time>".')
    final: bool = Field(description="True once succeeded, failed, expired or cancelled: it never changes again.")
    deadline: float = Field(description="Epoch seconds; past it the command expires and is never executed.")
    pending_until: datetime | None = Field(description="The deadline, while the command waits (awaiting or queued).")
    idempotency_key: str
    precondition: PreconditionIn | None
    requires_confirmation: bool
    requested_by: str
    confirmed_by: str | None
    created_at: datetime
    updated_at: datetime
    reason: str | None = Field(description="Why it failed, expired or was cancelled.")
    result: dict[str, Any] | None = Field(description="What the device answered, when it did.")
    history: list[CommandStepOut] | None = Field(
        default=None, description="Every state it entered, oldest first (on single-command answers)."
    )

    @classmethod
    def of(cls, command: Command, history: Sequence[CommandStep] | None = None) -> CommandOut:
        version = command.precondition_version
        return cls(
            id=command.id,
            device=command.device_id,
            gateway=command.gateway_id,
            name=command.name,
            params=dict(command.params),
            state=command.state,
            status=status_text(command),
            final=command.state.is_final,
            deadline=command.deadline,
            pending_until=datetime.fromtimestamp(command.deadline, UTC) if command.state in _WAITING else None,
            idempotency_key=command.idempotency_key,
            precondition=None if version is None else PreconditionIn(reported_version=version),
            requires_confirmation=command.requires_confirmation,
            requested_by=command.requested_by,
            confirmed_by=command.confirmed_by,
            created_at=command.created_at,
            updated_at=command.updated_at,
            reason=command.reason,
            result=None if command.result is None else dict(command.result),
            history=None if history is None else [CommandStepOut.of(step) for step in history],
        )


class ParamSpecOut(BaseModel):
    name: str
    type: str = Field(description="bool, int, number or choice.")
    minimum: float | None
    maximum: float | None
    choices: list[str]
    required: bool
    default: Any = Field(description="Used when the parameter is left out (not required).")
    description: str

    @classmethod
    def of(cls, spec: ParamSpec) -> ParamSpecOut:
        return cls(
            name=spec.name,
            type=spec.type,
            minimum=spec.minimum,
            maximum=spec.maximum,
            choices=list(spec.choices),
            required=spec.required,
            default=spec.default,
            description=spec.description,
        )


class CommandSpecOut(BaseModel):
    name: str
    profile: str
    description: str
    confirm: bool = Field(description="A second person must confirm it before it is sent.")
    params: list[ParamSpecOut]

    @classmethod
    def of(cls, spec: CommandSpec) -> CommandSpecOut:
        return cls(
            name=spec.name,
            profile=spec.profile,
            description=spec.description,
            confirm=spec.confirm,
            params=[ParamSpecOut.of(p) for p in spec.params.values()],
        )
