"""Organisations (cities, utilities, operators): list and create."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from cloud_agent.api.auth import ADMINS, STAFF, require_role
from cloud_agent.api.routes.params import After, Limit
from cloud_agent.api.schemas.common import ERROR_RESPONSES, Page
from cloud_agent.api.schemas.inventory import OrganisationCreate, OrganisationOut
from cloud_agent.runtime import AgentRuntime
from device_registry.models import ApiPrincipal


def router(runtime: AgentRuntime) -> APIRouter:
    registry = runtime.registry
    routes = APIRouter(prefix="/v1/organisations", tags=["organisations"], responses=ERROR_RESPONSES)

    @routes.get("", summary="List organisations")
    async def list_organisations(
        _: Annotated[ApiPrincipal, Depends(require_role(*STAFF))], after: After = None, limit: Limit = 100
    ) -> Page[OrganisationOut]:
        page = await registry.list_organisations(after=after, limit=limit)
        return Page(items=[OrganisationOut.of(o) for o in page.items], total=page.total, next=page.next_cursor)

    @routes.post("", status_code=status.HTTP_201_CREATED, summary="Create an organisation")
    async def create_organisation(
        body: OrganisationCreate, principal: Annotated[ApiPrincipal, Depends(require_role(*ADMINS))]
    ) -> OrganisationOut:
        return OrganisationOut.of(await registry.create_organisation(body.id, body.name, actor=principal.name))

    @routes.get("/{organisation_id}", summary="Get an organisation")
    async def get_organisation(
        organisation_id: Annotated[str, Path()], _: Annotated[ApiPrincipal, Depends(require_role(*STAFF))]
    ) -> OrganisationOut:
        return OrganisationOut.of(await registry.get_organisation(organisation_id))

    return routes
