"""The agent itself: health (no token needed, for load balancers and probes) and metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from cloud_agent.api.auth import STAFF, require_role
from cloud_agent.api.errors import error_counts_of, error_response
from cloud_agent.api.schemas.access import Health
from cloud_agent.api.schemas.common import ERROR_RESPONSES, ErrorBody
from cloud_agent.runtime import AgentRuntime
from device_registry.models import ApiPrincipal
from kakehashi.log import get_logger

log = get_logger(__name__)


def router(runtime: AgentRuntime) -> APIRouter:
    registry = runtime.registry
    routes = APIRouter(prefix="/v1/agent", tags=["agent"])

    @routes.get(
        "/health",
        summary="200 when the agent and its registry answer (no token needed)",
        responses={503: {"model": ErrorBody, "description": "The registry does not answer"}},
        response_model=Health,
    )
    async def health(request: Request) -> Health | JSONResponse:
        try:
            await registry.list_organisations(limit=1)
        except Exception as exc:
            log.warning("api_health_failed", error=type(exc).__name__, detail=str(exc))
            return error_response(
                request,
                503,
                "unavailable",
                f"the registry does not answer ({type(exc).__name__}: {exc}): check the database",
            )
        return Health(status="ok")

    @routes.get("/metrics", summary="Counters of the running agent and of the API's errors", responses=ERROR_RESPONSES)
    async def metrics(request: Request, _: Annotated[ApiPrincipal, Depends(require_role(*STAFF))]) -> dict[str, Any]:
        counts = error_counts_of(request.app)
        doc: dict[str, Any] = dict(runtime.metrics())
        doc["api_errors"] = counts.snapshot()
        doc["api_errors_total"] = counts.total
        return doc

    return routes
