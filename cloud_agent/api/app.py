"""The HTTPS API of the cloud agent as one FastAPI app: routers, bearer authentication, errors, OpenAPI.

:func:`create_app` is handed the running agent (:class:`~cloud_agent.runtime.AgentRuntime`) and mounts every router
under ``/v1``, including the enrollment and CSV-import routers (``enrollment_routes``, ``import_routes``).
The OpenAPI document is at ``/openapi.json`` and browsable at ``/docs``. Serve the app with
:func:`cloud_agent.api.server.serve_api`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from fastapi import APIRouter, FastAPI

from cloud_agent.api import enrollment_routes, import_routes
from cloud_agent.api.access_log import AccessLog
from cloud_agent.api.auth import DEFAULT_CACHE_S, Authenticator, install_authenticator
from cloud_agent.api.errors import ErrorCounts, install_error_handlers
from cloud_agent.api.guard import UnexpectedErrorGuard
from cloud_agent.api.routes import (
    agent,
    api_tokens,
    audit,
    commands,
    devices,
    enrollment_tokens,
    gateways,
    lifecycle,
    lookup,
    organisations,
    readings,
    twin,
)
from cloud_agent.runtime import AgentRuntime
from kakehashi import __version__


def _context_source_router(runtime: AgentRuntime) -> APIRouter:
    """The read-only NGSI-LD context source at ``/ngsi-ld/v1`` (imported here: it builds on this package's auth)."""
    from cloud_agent.northbound import context_source

    return context_source.router(runtime)


ROUTERS: Final[tuple[Callable[[AgentRuntime], APIRouter], ...]] = (
    agent.router,
    organisations.router,
    gateways.router,
    devices.router,
    lookup.router,
    lifecycle.router,
    twin.router,
    commands.router,
    readings.router,
    enrollment_tokens.router,
    audit.router,
    api_tokens.router,
    enrollment_routes.router,
    import_routes.router,
    _context_source_router,
)

DESCRIPTION: Final = """\
Registry queries, lifecycle actions, twins, commands, readings, enrollment tokens, audit and API tokens of the
Kakehashi fleet.

Send an API token as `Authorization: Bearer kh_...`. Roles: **admin** (everything, including API tokens),
**asset-manager** (register and change gateways and devices, lifecycle, desired state, commands, enrollment tokens,
bulk import), **viewer** (read everything except API tokens), **city-os** (read gateways, devices, latest values and
history). Every error answers `{"error": "<reason code>", "detail": "<what is wrong and how to fix it>"}`.
"""


def create_app(runtime: AgentRuntime, *, auth_cache_s: float = DEFAULT_CACHE_S) -> FastAPI:
    """The API app over ``runtime``; a token's positive check is reused for ``auth_cache_s`` seconds at most."""
    app = FastAPI(
        title="Kakehashi cloud agent API",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    install_authenticator(app, Authenticator(runtime.registry, cache_s=auth_cache_s))
    install_error_handlers(app, ErrorCounts())
    app.add_middleware(UnexpectedErrorGuard)
    app.add_middleware(AccessLog)
    for make_router in ROUTERS:
        app.include_router(make_router(runtime))
    return app
