"""Enrollment tokens, API tokens and the audit log: who may act, and what was done by whom."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from cloud_agent.api.schemas.common import Request
from device_registry.models import ApiRole, ApiToken, AuditEntry


class EnrollmentTokenRequest(Request):
    ttl_s: int = Field(default=86_400, ge=1, le=30 * 86_400, description="Lifetime in seconds (at most 30 days).")


class EnrollmentTokenOut(BaseModel):
    gateway: str
    token: str = Field(description="Shown once: give it to the technician who enrolls the gateway.")
    ttl_s: int


class ApiTokenOut(BaseModel):
    name: str
    role: ApiRole
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, token: ApiToken) -> ApiTokenOut:
        return cls(
            name=token.name,
            role=token.role,
            created_by=token.created_by,
            created_at=token.created_at,
            expires_at=token.expires_at,
            revoked_at=token.revoked_at,
        )


class ApiTokenList(BaseModel):
    items: list[ApiTokenOut]


class ApiTokenCreate(Request):
    name: str = Field(description="The person or system holding it: every change it makes is attributed to it.")
    role: ApiRole
    ttl_s: int | None = Field(default=None, ge=1, description="Lifetime in seconds; null: until revoked.")


class ApiTokenCreated(ApiTokenOut):
    token: str = Field(description="The secret, shown once: send it as 'Authorization: Bearer <token>'.")


class RevokeRequest(Request):
    reason: str = Field(min_length=1, examples=["laptop lost"])


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    entity: str | None
    reason: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditEntryOut:
        return cls(
            id=entry.id,
            at=entry.at,
            actor=entry.actor,
            action=entry.action,
            entity=entry.entity_id,
            reason=entry.reason,
            detail=dict(entry.detail),
        )


class AuditPage(BaseModel):
    items: list[AuditEntryOut] = Field(description="Oldest first.")
    next: int | None = Field(description="Pass as after for the next page; null when this page was the last.")


class Health(BaseModel):
    status: str = Field(examples=["ok"])
