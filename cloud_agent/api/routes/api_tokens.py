"""API tokens (administrators only): list, create (the secret is shown once), revoke (effective at once here)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status

from cloud_agent.api.auth import ADMINS, authenticator_of, require_role
from cloud_agent.api.schemas.access import ApiTokenCreate, ApiTokenCreated, ApiTokenList, ApiTokenOut, RevokeRequest
from cloud_agent.api.schemas.common import ERROR_RESPONSES
from cloud_agent.runtime import AgentRuntime
from device_registry.models import ApiPrincipal

Admin = Annotated[ApiPrincipal, Depends(require_role(*ADMINS))]


def router(runtime: AgentRuntime) -> APIRouter:
    registry = runtime.registry
    routes = APIRouter(prefix="/v1/api-tokens", tags=["api tokens"], responses=ERROR_RESPONSES)

    @routes.get("", summary="List API tokens (never their secrets)")
    async def list_tokens(_: Admin) -> ApiTokenList:
        return ApiTokenList(items=[ApiTokenOut.of(t) for t in await registry.list_api_tokens()])

    @routes.post("", status_code=status.HTTP_201_CREATED, summary="Create an API token (the secret is shown once)")
    async def create_token(body: ApiTokenCreate, principal: Admin) -> ApiTokenCreated:
        ttl = None if body.ttl_s is None else timedelta(seconds=body.ttl_s)
        secret, token = await registry.create_api_token(body.name, body.role, actor=principal.name, ttl=ttl)
        return ApiTokenCreated(**ApiTokenOut.of(token).model_dump(), token=secret)

    @routes.post("/{name}/revoke", summary="Revoke an API token")
    async def revoke_token(name: str, body: RevokeRequest, principal: Admin, request: Request) -> ApiTokenOut:
        revoked = await registry.revoke_api_token(name, actor=principal.name, reason=body.reason)
        authenticator_of(request.app).forget(name)
        return ApiTokenOut.of(revoked)

    return routes
