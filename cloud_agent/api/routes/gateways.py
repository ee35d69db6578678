"""Gateways: list with filters, register, show one (with presence and certificates), completeness of its uplink."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from cloud_agent.api.auth import EVERYONE, MANAGERS, STAFF, require_role
from cloud_agent.api.routes.params import After, Labels, Limit, parse_labels
from cloud_agent.api.schemas.common import ERROR_RESPONSES, Page
from cloud_agent.api.schemas.inventory import (
    CertificateOut,
    CompletenessOut,
    GatewayCreate,
    GatewayDetail,
    GatewayOut,
    PresenceOut,
)
from cloud_agent.runtime import AgentRuntime
from device_registry.lifecycle import State
from device_registry.models import ApiPrincipal


def router(runtime: AgentRuntime) -> APIRouter:
    registry = runtime.registry
    routes = APIRouter(prefix="/v1/gateways", tags=["gateways"], responses=ERROR_RESPONSES)

    @routes.get("", summary="List gateways")
    async def list_gateways(
        _: Annotated[ApiPrincipal, Depends(require_role(*EVERYONE))],
        organisation: str | None = None,
        state: State | None = None,
        label: Labels = None,
        after: After = None,
        limit: Limit = 100,
    ) -> Page[GatewayOut]:
        page = await registry.list_gateways(
            organisation=organisation, state=state, labels=parse_labels(label), after=after, limit=limit
        )
        return Page(items=[GatewayOut.of(g) for g in page.items], total=page.total, next=page.next_cursor)

    @routes.post("", status_code=status.HTTP_201_CREATED, summary="Register a gateway")
    async def create_gateway(
        body: GatewayCreate, principal: Annotated[ApiPrincipal, Depends(require_role(*MANAGERS))]
    ) -> GatewayOut:
        created = await registry.create_gateway(
            body.id,
            body.organisation,
            actor=principal.name,
            hardware_serial=body.hardware_serial,
            owner=body.owner,
            location=None if body.location is None else body.location.to_location(),
            labels=body.labels,
        )
        return GatewayOut.of(created)

    @routes.get("/{gateway_id}", summary="Get a gateway with its presence and certificates")
    async def get_gateway(
        gateway_id: str, _: Annotated[ApiPrincipal, Depends(require_role(*EVERYONE))]
    ) -> GatewayDetail:
        gateway = await registry.get_gateway(gateway_id)
        presence = await registry.get_presence(gateway_id)
        certificates = await registry.certificates(gateway_id)
        return GatewayDetail(
            **GatewayOut.of(gateway).model_dump(),
            presence=None if presence is None else PresenceOut.of(presence),
            certificates=[CertificateOut.of(c) for c in certificates],
        )

    @routes.get("/{gateway_id}/completeness", summary="What arrived from a gateway, and what is missing")
    async def get_completeness(
        gateway_id: str, _: Annotated[ApiPrincipal, Depends(require_role(*STAFF))]
    ) -> CompletenessOut:
        return CompletenessOut.of(await registry.completeness(gateway_id))

    return routes
