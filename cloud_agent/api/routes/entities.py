"""The two collections that share one id namespace and one lifecycle: ``/v1/gateways`` and ``/v1/devices``.

Routes that work on both (lifecycle, twin, latest values) are generated once per collection; each first checks
that the id names an entity of that collection, so ``/v1/gateways/<a device id>/...`` answers 404.
"""

from __future__ import annotations

import enum

from device_registry import Registry
from device_registry.models import Device, Gateway


class Collection(enum.StrEnum):
    GATEWAYS = "gateways"
    DEVICES = "devices"

    @property
    def noun(self) -> str:
        return "gateway" if self is Collection.GATEWAYS else "device"


async def find(registry: Registry, collection: Collection, entity_id: str) -> Gateway | Device:
    """The gateway or device ``entity_id`` of ``collection``; ``NotFound`` (404) otherwise."""
    if collection is Collection.GATEWAYS:
        return await registry.get_gateway(entity_id)
    return await registry.get_device(entity_id)


async def gateway_of(registry: Registry, collection: Collection, entity_id: str) -> str | None:
    """The gateway that carries ``entity_id``'s desired state: itself, or the gateway a device is bound to."""
    if collection is Collection.GATEWAYS:
        return entity_id
    return (await registry.get_device(entity_id)).gateway_id
