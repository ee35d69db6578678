"""Lifecycle transitions of gateways and devices: ``POST /v1/{gateways|devices}/{id}/lifecycle {to, reason}``.

Illegal transitions answer 409 with the reason, the current and the asked state. Decommissioning revokes the
entity's certificates in the registry; the agent then revokes them at the CA and republishes the CRL.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from cloud_agent.api.auth import MANAGERS, require_role
from cloud_agent.api.routes.effects import revoke_identity
from cloud_agent.api.routes.entities import Collection, find
from cloud_agent.api.schemas.common import ERROR_RESPONSES
from cloud_agent.api.schemas.state import TransitionOut, TransitionRequest
from cloud_agent.runtime import AgentRuntime
from device_registry.models import ApiPrincipal


def _add_route(routes: APIRouter, runtime: AgentRuntime, collection: Collection) -> None:
    registry = runtime.registry

    @routes.post(
        f"/v1/{collection}/{{entity_id}}/lifecycle",
        tags=[str(collection)],
        summary=f"Move a {collection.noun} to another lifecycle state",
        name=f"{collection.noun}_transition",
        operation_id=f"{collection.noun}_transition",
    )
    async def transition(
        entity_id: str,
        body: TransitionRequest,
        principal: Annotated[ApiPrincipal, Depends(require_role(*MANAGERS))],
    ) -> TransitionOut:
        await find(registry, collection, entity_id)
        done = await registry.transition(entity_id, body.to, principal.name, body.reason)
        if done.revoked_serials:
            await revoke_identity(runtime, entity_id, "cessation_of_operation")
        return TransitionOut.of(done)


def router(runtime: AgentRuntime) -> APIRouter:
    routes = APIRouter(responses=ERROR_RESPONSES)
    for collection in Collection:
        _add_route(routes, runtime, collection)
    return routes
