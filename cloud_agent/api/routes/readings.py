"""Readings: the latest value of each quantity and the history of a device (or a gateway's own readings)."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Depends, Query

from cloud_agent.api.auth import EVERYONE, require_role
from cloud_agent.api.routes.entities import Collection, find
from cloud_agent.api.schemas.common import ERROR_RESPONSES
from cloud_agent.api.schemas.state import ReadingOut, Readings
from cloud_agent.runtime import AgentRuntime
from device_registry.models import ApiPrincipal

MAX_HISTORY: Final = 10_000


def _add_routes(routes: APIRouter, runtime: AgentRuntime, collection: Collection) -> None:
    registry = runtime.registry
    noun = collection.noun

    @routes.get(
        f"/v1/{collection}/{{entity_id}}/latest",
        tags=[str(collection)],
        summary=f"The newest reading of each quantity of a {noun}",
        name=f"{noun}_latest",
        operation_id=f"{noun}_latest",
    )
    async def latest(entity_id: str, _: Annotated[ApiPrincipal, Depends(require_role(*EVERYONE))]) -> Readings:
        await find(registry, collection, entity_id)
        return Readings(items=[ReadingOut.of(r) for r in await registry.latest(entity_id)])

    @routes.get(
        f"/v1/{collection}/{{entity_id}}/history",
        tags=[str(collection)],
        summary=f"Readings of a {noun}, oldest first",
        name=f"{noun}_history",
        operation_id=f"{noun}_history",
    )
    async def history(
        entity_id: str,
        _: Annotated[ApiPrincipal, Depends(require_role(*EVERYONE))],
        quantity: str | None = None,
        since: Annotated[float | None, Query(description="Observed at or after (epoch seconds).")] = None,
        until: Annotated[float | None, Query(description="Observed before (epoch seconds).")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_HISTORY)] = 1000,
    ) -> Readings:
        await find(registry, collection, entity_id)
        found = await registry.history(entity_id, quantity=quantity, since=since, until=until, limit=limit)
        return Readings(items=[ReadingOut.of(r) for r in found], more=len(found) == limit)


def router(runtime: AgentRuntime) -> APIRouter:
    routes = APIRouter(responses=ERROR_RESPONSES)
    for collection in Collection:
        _add_routes(routes, runtime, collection)
    return routes
