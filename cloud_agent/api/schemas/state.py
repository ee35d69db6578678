"""Lifecycle transitions, twins and readings: the state of gateways and devices as the API shows and changes it."""

from __future__ import annotations

import base64
from typing import Any

from pydantic import BaseModel, Field

from cloud_agent.api.schemas.common import Request
from device_registry.lifecycle import State
from device_registry.models import StoredReading, Transition, Twin


class TransitionRequest(Request):
    to: State = Field(description="The state to enter: provisioned, active, suspended or decommissioned.")
    reason: str = Field(min_length=1, description="Why (kept in the audit log).", examples=["valve leaking"])


class TransitionOut(BaseModel):
    entity: str
    role: str
    from_state: State
    to_state: State
    revoked_serials: list[str] = Field(description="Certificates revoked by the transition (decommissioning).")

    @classmethod
    def of(cls, transition: Transition) -> TransitionOut:
        return cls(
            entity=transition.entity_id,
            role=transition.role,
            from_state=transition.from_state,
            to_state=transition.to_state,
            revoked_serials=list(transition.revoked_serials),
        )


class TwinOut(BaseModel):
    entity: str
    desired: dict[str, Any]
    desired_version: int = Field(description="Gateway version of the last desired change.")
    reported: dict[str, Any]
    reported_version: int

    @classmethod
    def of(cls, twin: Twin) -> TwinOut:
        return cls(
            entity=twin.entity_id,
            desired=dict(twin.desired),
            desired_version=twin.desired_version,
            reported=dict(twin.reported),
            reported_version=twin.reported_version,
        )


class DesiredPatch(Request):
    delta: dict[str, Any] = Field(
        description="JSON Merge Patch (RFC 7396) of the desired document: null removes a key.",
        examples=[{"poll_interval_s": 30}],
    )


class DesiredOut(BaseModel):
    entity: str
    gateway: str | None = Field(description="The gateway the delta is delivered to.")
    version: int = Field(description="The gateway version the change takes.")


class ReadingOut(BaseModel):
    device: str
    quantity: str
    value: float | bool | str | None = Field(description="Number, text or flag; null for binary data (see data).")
    data: str | None = Field(default=None, description="Binary values, base64.")
    unit: str | None
    observed_at: float = Field(description="Epoch seconds, the device's clock.")
    received_at: float = Field(description="Epoch seconds, the agent's clock.")
    clock: str = Field(description="Quality of the observing clock.")
    gateway: str
    seq: int

    @classmethod
    def of(cls, stored: StoredReading) -> ReadingOut:
        value = stored.value
        return cls(
            device=stored.device_id,
            quantity=stored.quantity,
            value=None if isinstance(value, bytes) else value,
            data=base64.b64encode(value).decode() if isinstance(value, bytes) else None,
            unit=stored.unit,
            observed_at=stored.observed_at,
            received_at=stored.received_at,
            clock=stored.clock.value,
            gateway=stored.gateway_id,
            seq=stored.seq,
        )


class Readings(BaseModel):
    items: list[ReadingOut]
    more: bool = Field(default=False, description="True when the limit cut the answer short: ask again with since.")
