"""Commands to devices: create (validated against the device's hardware profile), confirm, cancel, list, show.

``POST /v1/devices/{id}/commands`` checks the command and its parameters with the catalogue (:mod:`hw.catalog`),
holds it for a second person when the profile says so, queues it in the registry, and asks the agent to send what
can be sent now (:meth:`~cloud_agent.runtime.AgentActions.commands_changed`). A failure of that request is logged:
the command stays queued and goes out when the agent next dispatches for the gateway. Only asset managers and
admins change commands; viewers may read them.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, status

from cloud_agent.api.auth import MANAGERS, STAFF, require_role
from cloud_agent.api.refusals import ApiRefusal
from cloud_agent.api.routes.params import After, Limit
from cloud_agent.api.schemas.commands import CancelRequest, CommandCreate, CommandOut, CommandSpecOut
from cloud_agent.api.schemas.common import ERROR_RESPONSES, Page
from cloud_agent.runtime import AgentRuntime
from device_registry import Registry
from device_registry.command_rules import MAX_TTL
from device_registry.models import ApiPrincipal, Command, CommandState
from hw.catalog import CatalogError, commands_for, validate_command
from kakehashi.log import get_logger

log = get_logger(__name__)


async def _dispatch(runtime: AgentRuntime, command: Command) -> None:
    """Ask the agent to send what can be sent now to the command's gateway (a failure is logged, not answered)."""
    try:
        await runtime.actions.commands_changed(command.gateway_id)
    except Exception as exc:
        log.exception("api_command_dispatch_failed", gateway=command.gateway_id, error=type(exc).__name__)


async def _with_history(registry: Registry, command: Command) -> CommandOut:
    return CommandOut.of(command, await registry.command_history(command.id))


def router(runtime: AgentRuntime) -> APIRouter:
    registry = runtime.registry
    routes = APIRouter(tags=["commands"], responses=ERROR_RESPONSES)

    @routes.post(
        "/v1/devices/{device_id}/commands",
        status_code=status.HTTP_201_CREATED,
        summary="Send a command to a device (the same idempotency key answers the same command)",
    )
    async def create_command(
        device_id: str, body: CommandCreate, principal: Annotated[ApiPrincipal, Depends(require_role(*MANAGERS))]
    ) -> CommandOut:
        device = await registry.get_device(device_id)
        try:
            params = validate_command(device.kind, device.profile, body.name, body.params)
        except CatalogError as exc:
            raise ApiRefusal(str(exc), reason=exc.reason, status=400) from None
        spec = commands_for(device.kind, device.profile)[body.name]
        if not (math.isfinite(body.ttl_s) and 0 < body.ttl_s <= MAX_TTL.total_seconds()):
            raise ApiRefusal(
                f"ttl_s {body.ttl_s:g} must be above 0 and at most {MAX_TTL.total_seconds():g} seconds (7 days)",
                reason="bad_ttl",
                status=400,
            )
        made = await registry.create_command(
            device_id,
            body.name,
            params,
            actor=principal.name,
            ttl=timedelta(seconds=body.ttl_s),
            idempotency_key=body.idempotency_key,
            precondition_version=None if body.precondition is None else body.precondition.reported_version,
            requires_confirmation=spec.confirm,
        )
        if made.state is CommandState.QUEUED:
            await _dispatch(runtime, made)
        return await _with_history(registry, made)

    @routes.get("/v1/devices/{device_id}/commands", summary="List a device's commands, oldest first")
    async def device_commands(
        device_id: str,
        _: Annotated[ApiPrincipal, Depends(require_role(*STAFF))],
        state: CommandState | None = None,
        after: After = None,
        limit: Limit = 100,
    ) -> Page[CommandOut]:
        await registry.get_device(device_id)
        page = await registry.list_commands(device=device_id, state=state, after=after, limit=limit)
        return Page(items=[CommandOut.of(c) for c in page.items], total=page.total, next=page.next_cursor)

    @routes.get("/v1/devices/{device_id}/command-catalogue", summary="The commands a device's hardware profile takes")
    async def device_catalogue(
        device_id: str, _: Annotated[ApiPrincipal, Depends(require_role(*STAFF))]
    ) -> list[CommandSpecOut]:
        device = await registry.get_device(device_id)
        return [CommandSpecOut.of(spec) for spec in commands_for(device.kind, device.profile).values()]

    @routes.get("/v1/commands", summary="List commands, oldest first, by state, gateway or device")
    async def list_commands(
        _: Annotated[ApiPrincipal, Depends(require_role(*STAFF))],
        state: CommandState | None = None,
        gateway: str | None = None,
        device: str | None = None,
        after: After = None,
        limit: Limit = 100,
    ) -> Page[CommandOut]:
        page = await registry.list_commands(device=device, gateway=gateway, state=state, after=after, limit=limit)
        return Page(items=[CommandOut.of(c) for c in page.items], total=page.total, next=page.next_cursor)

    @routes.get("/v1/commands/{command_id}", summary="Get a command with its whole history")
    async def get_command(command_id: str, _: Annotated[ApiPrincipal, Depends(require_role(*STAFF))]) -> CommandOut:
        return await _with_history(registry, await registry.get_command(command_id))

    @routes.post("/v1/commands/{command_id}/confirm", summary="Confirm a command as the second person")
    async def confirm_command(
        command_id: str, principal: Annotated[ApiPrincipal, Depends(require_role(*MANAGERS))]
    ) -> CommandOut:
        confirmed = await registry.confirm_command(command_id, actor=principal.name)
        await _dispatch(runtime, confirmed)
        return await _with_history(registry, confirmed)

    @routes.post("/v1/commands/{command_id}/cancel", summary="Cancel a command not yet delivered")
    async def cancel_command(
        command_id: str, body: CancelRequest, principal: Annotated[ApiPrincipal, Depends(require_role(*MANAGERS))]
    ) -> CommandOut:
        cancelled = await registry.cancel_command(command_id, actor=principal.name, reason=body.reason)
        await _dispatch(runtime, cancelled)
        return await _with_history(registry, cancelled)

    return routes
