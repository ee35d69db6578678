"""Devices: list with filters, register, show one, bind to a gateway, record consent, replace broken hardware."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status

from cloud_agent.api.auth import EVERYONE, MANAGERS, require_role
from cloud_agent.api.routes.effects import deliver_desired, revoke_identity
from cloud_agent.api.routes.params import After, Labels, Limit, parse_labels
from cloud_agent.api.schemas.common import ERROR_RESPONSES, Page
from cloud_agent.api.schemas.inventory import (
    BindRequest,
    ConsentRequest,
    DeviceCreate,
    DeviceOut,
    HardwareReplacementOut,
    HardwareReplacementRequest,
)
from cloud_agent.runtime import AgentRuntime
from device_registry.lifecycle import State
from device_registry.models import ApiPrincipal


def router(runtime: AgentRuntime) -> APIRouter:
    registry = runtime.registry
    routes = APIRouter(prefix="/v1/devices", tags=["devices"], responses=ERROR_RESPONSES)

    @routes.get("", summary="List devices")
    async def list_devices(
        _: Annotated[ApiPrincipal, Depends(require_role(*EVERYONE))],
        organisation: str | None = None,
        kind: str | None = None,
        state: State | None = None,
        gateway: str | None = None,
        label: Labels = None,
        after: After = None,
        limit: Limit = 100,
    ) -> Page[DeviceOut]:
        page = await registry.list_devices(
            organisation=organisation,
            kind=kind,
            state=state,
            gateway=gateway,
            labels=parse_labels(label),
            after=after,
            limit=limit,
        )
        return Page(items=[DeviceOut.of(d) for d in page.items], total=page.total, next=page.next_cursor)

    @routes.post("", status_code=status.HTTP_201_CREATED, summary="Register a device (bound at once with gateway)")
    async def create_device(
        body: DeviceCreate, principal: Annotated[ApiPrincipal, Depends(require_role(*MANAGERS))]
    ) -> DeviceOut:
        created = await registry.create_device(
            body.id,
            body.organisation,
            body.kind,
            actor=principal.name,
            profile=body.profile,
            hardware_serial=body.hardware_serial,
            owner=body.owner,
            location=None if body.location is None else body.location.to_location(),
            labels=body.labels,
            gateway_id=body.gateway,
            consent=body.consent,
            retention=body.retention,
        )
        return DeviceOut.of(created)

    @routes.get("/{device_id}", summary="Get a device")
    async def get_device(device_id: str, _: Annotated[ApiPrincipal, Depends(require_role(*EVERYONE))]) -> DeviceOut:
        return DeviceOut.of(await registry.get_device(device_id))

    @routes.put("/{device_id}/gateway", summary="Bind a device to the gateway that may report for it")
    async def bind_device(
        device_id: str, body: BindRequest, principal: Annotated[ApiPrincipal, Depends(require_role(*MANAGERS))]
    ) -> DeviceOut:
        before = await registry.get_device(device_id)
        bound = await registry.bind_device(device_id, body.gateway, actor=principal.name, reason=body.reason)
        if before.gateway_id is not None and before.gateway_id != bound.gateway_id:  # its desired state moved along
            await deliver_desired(runtime, bound.gateway_id)
        return DeviceOut.of(bound)

    @routes.put("/{device_id}/consent", summary="Record that consent for a watch tag was given or withdrawn")
    async def set_consent(
        device_id: str, body: ConsentRequest, principal: Annotated[ApiPrincipal, Depends(require_role(*MANAGERS))]
    ) -> DeviceOut:
        return DeviceOut.of(
            await registry.set_consent(device_id, body.consent, actor=principal.name, reason=body.reason)
        )

    @routes.post(
        "/{device_id}/hardware-replacements",
        status_code=status.HTTP_201_CREATED,
        summary="Replace broken hardware: same device and history, old certificates revoked",
    )
    async def replace_hardware(
        device_id: str,
        body: HardwareReplacementRequest,
        principal: Annotated[ApiPrincipal, Depends(require_role(*MANAGERS))],
    ) -> HardwareReplacementOut:
        await registry.get_device(device_id)
        replaced = await registry.replace_hardware(device_id, body.hardware_serial, principal.name, body.reason)
        if replaced.revoked_serials:
            await revoke_identity(runtime, device_id, "superseded")
        return HardwareReplacementOut.of(replaced)

    return routes
