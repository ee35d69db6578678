"""One-time enrollment tokens: an asset manager creates one for a registered gateway; it is shown once."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, status

from cloud_agent.api.auth import MANAGERS, require_role
from cloud_agent.api.schemas.access import EnrollmentTokenOut, EnrollmentTokenRequest
from cloud_agent.api.schemas.common import ERROR_RESPONSES
from cloud_agent.runtime import AgentRuntime
from device_registry.models import ApiPrincipal


def router(runtime: AgentRuntime) -> APIRouter:
    registry = runtime.registry
    routes = APIRouter(tags=["gateways"], responses=ERROR_RESPONSES)

    @routes.post(
        "/v1/gateways/{gateway_id}/enrollment-tokens",
        status_code=status.HTTP_201_CREATED,
        summary="Create a one-time enrollment token for a gateway (shown once)",
    )
    async def create_enrollment_token(
        gateway_id: str,
        principal: Annotated[ApiPrincipal, Depends(require_role(*MANAGERS))],
        body: EnrollmentTokenRequest | None = None,
    ) -> EnrollmentTokenOut:
        request = body or EnrollmentTokenRequest()
        token = await registry.create_enrollment_token(
            gateway_id, actor=principal.name, ttl=timedelta(seconds=request.ttl_s)
        )
        return EnrollmentTokenOut(gateway=gateway_id, token=token, ttl_s=request.ttl_s)

    return routes
