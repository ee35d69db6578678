"""The audit log: who did what to which entity, when and why; filtered, oldest first, paged by entry id."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Query

from cloud_agent.api.auth import STAFF, require_role
from cloud_agent.api.schemas.access import AuditEntryOut, AuditPage
from cloud_agent.api.schemas.common import ERROR_RESPONSES
from cloud_agent.runtime import AgentRuntime
from device_registry.models import ApiPrincipal

MAX_AUDIT: Final = 10_000


def router(runtime: AgentRuntime) -> APIRouter:
    registry = runtime.registry
    routes = APIRouter(prefix="/v1/audit", tags=["audit"], responses=ERROR_RESPONSES)

    @routes.get("", summary="Query the audit log")
    async def query_audit(
        _: Annotated[ApiPrincipal, Depends(require_role(*STAFF))],
        entity: Annotated[str | None, Query(description="Gateway or device id.")] = None,
        actor: Annotated[str | None, Query(description="Who acted: a token name, a gateway id or system.")] = None,
        action: Annotated[str | None, Query(description="e.g. lifecycle.transition, twin.desired.")] = None,
        since: Annotated[
            datetime | None, Query(description="ISO 8601 time with a zone, e.g. 2026-04-01T00:00Z.")
        ] = None,
        after: Annotated[int | None, Query(ge=0, description="Cursor: the `next` of the previous page.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_AUDIT)] = 100,
    ) -> AuditPage:
        entries = await registry.audit(entity=entity, actor=actor, action=action, since=since, after=after, limit=limit)
        return AuditPage(
            items=[AuditEntryOut.of(e) for e in entries], next=entries[-1].id if len(entries) == limit else None
        )

    return routes
