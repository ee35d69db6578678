"""Twins of gateways and devices: read desired and reported state; change desired state by merge patch.

``PATCH /v1/{gateways|devices}/{id}/twin/desired {delta}`` commits a versioned delta for the gateway that carries
the entity, then asks the agent to deliver it (at once when the gateway is online, else when it reconnects).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from cloud_agent.api.auth import MANAGERS, STAFF, require_role
from cloud_agent.api.routes.effects import deliver_desired
from cloud_agent.api.routes.entities import Collection, find, gateway_of
from cloud_agent.api.schemas.common import ERROR_RESPONSES
from cloud_agent.api.schemas.state import DesiredOut, DesiredPatch, TwinOut
from cloud_agent.runtime import AgentRuntime
from device_registry.models import ApiPrincipal


def _add_routes(routes: APIRouter, runtime: AgentRuntime, collection: Collection) -> None:
    registry = runtime.registry
    noun = collection.noun

    @routes.get(
        f"/v1/{collection}/{{entity_id}}/twin",
        tags=[str(collection)],
        summary=f"Get a {noun}'s twin (desired and reported state)",
        name=f"{noun}_twin",
        operation_id=f"{noun}_twin",
    )
    async def get_twin(entity_id: str, _: Annotated[ApiPrincipal, Depends(require_role(*STAFF))]) -> TwinOut:
        await find(registry, collection, entity_id)
        return TwinOut.of(await registry.get_twin(entity_id))

    @routes.patch(
        f"/v1/{collection}/{{entity_id}}/twin/desired",
        tags=[str(collection)],
        summary=f"Change a {noun}'s desired state (JSON Merge Patch)",
        name=f"{noun}_desired",
        operation_id=f"{noun}_desired",
    )
    async def patch_desired(
        entity_id: str, body: DesiredPatch, principal: Annotated[ApiPrincipal, Depends(require_role(*MANAGERS))]
    ) -> DesiredOut:
        await find(registry, collection, entity_id)
        version = await registry.set_desired(entity_id, body.delta, principal.name)
        gateway = await gateway_of(registry, collection, entity_id)
        await deliver_desired(runtime, gateway)
        return DesiredOut(entity=entity_id, gateway=gateway, version=version)


def router(runtime: AgentRuntime) -> APIRouter:
    routes = APIRouter(responses=ERROR_RESPONSES)
    for collection in Collection:
        _add_routes(routes, runtime, collection)
    return routes
