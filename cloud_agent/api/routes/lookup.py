"""``GET /v1/entities/{id}``: whether an id names a gateway or a device (they share one id namespace).

Clients that take an id alone (``kakehashi device suspend ID``) ask here once, then use the collection's routes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from cloud_agent.api.auth import EVERYONE, require_role
from cloud_agent.api.schemas.common import ERROR_RESPONSES
from cloud_agent.runtime import AgentRuntime
from device_registry.errors import NotFound
from device_registry.models import ApiPrincipal


class EntityRef(BaseModel):
    id: str
    role: Literal["gateway", "device"]
    collection: Literal["gateways", "devices"]


def router(runtime: AgentRuntime) -> APIRouter:
    registry = runtime.registry
    routes = APIRouter(prefix="/v1/entities", tags=["entities"], responses=ERROR_RESPONSES)

    @routes.get("/{entity_id}", summary="Whether an id is a gateway or a device")
    async def find_entity(entity_id: str, _: Annotated[ApiPrincipal, Depends(require_role(*EVERYONE))]) -> EntityRef:
        try:
            await registry.get_device(entity_id)
        except NotFound:
            try:
                await registry.get_gateway(entity_id)
            except NotFound:
                raise NotFound(f"there is no gateway or device with id {entity_id!r}") from None
            return EntityRef(id=entity_id, role="gateway", collection="gateways")
        return EntityRef(id=entity_id, role="device", collection="devices")

    return routes
