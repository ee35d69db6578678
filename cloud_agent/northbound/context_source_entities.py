"""The context source's entities, built on demand from the registry with the northbound mapping.

Entities are never stored for the context source: each request pages through the registry (gateways, then devices,
:data:`REGISTRY_PAGE` at a time, in id order) and builds each one's entities with
:func:`cloud_agent.northbound.mapping.entities_for` from its latest values, its gateway's presence and location and
its twin's settings. What the mapping does not emit is never served: watch tags yield nothing (their sightings leave
only as the privacy module's aggregates).

A type filter narrows the walk before any reading is fetched: the model family of a gateway or device
(:func:`~cloud_agent.northbound.mapping.family_of`) says which entity types it can produce (:data:`TYPES_BY_FAMILY`),
and only those that can produce a wanted type have their latest values read. An entity id
(``urn:ngsi-ld:<type>:<registry id>[:<quantity>]``) goes straight to its gateway or device.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Final

from cloud_agent.northbound.entities import Entity
from cloud_agent.northbound.mapping import Family, entities_for, family_of
from device_registry import Registry
from device_registry.errors import NotFound
from device_registry.models import Device, Gateway, Presence

__all__ = ["ENTITY_TYPES", "REGISTRY_PAGE", "TYPES_BY_FAMILY", "EntitySource", "registry_id_of"]

REGISTRY_PAGE: Final = 200
"""Gateways or devices read from the registry per listing query."""

_COMMON: Final = frozenset({"Device", "DeviceMeasurement"})
TYPES_BY_FAMILY: Final[Mapping[Family, frozenset[str]]] = {
    Family.GATEWAY: _COMMON,
    Family.GENERIC: _COMMON,
    Family.WATER_LEVEL: _COMMON | {"WaterObserved", "FloodMonitoring"},
    Family.WATER_METER: _COMMON | {"WaterConsumptionObserved"},
    Family.SINGLE_PHASE: _COMMON | {"ACMeasurement"},
    Family.THREE_PHASE: _COMMON | {"ThreePhaseAcMeasurement"},
    Family.WATCH_TAG: frozenset(),
}
"""The entity types the mapping can build for a gateway or device of each family."""
ENTITY_TYPES: Final = frozenset().union(*TYPES_BY_FAMILY.values())
"""Every entity type the context source serves."""
_URN_PREFIX: Final = "urn:ngsi-ld:"


def registry_id_of(entity_id: str) -> str | None:
    """The gateway or device id inside an entity id the mapping builds, or None when it cannot be one of ours."""
    if not entity_id.startswith(_URN_PREFIX):
        return None
    parts = entity_id[len(_URN_PREFIX) :].split(":")
    if len(parts) < 2 or parts[0] not in ENTITY_TYPES or not parts[1]:
        return None
    return parts[1]


def _settings(reported: Mapping[str, object], desired: Mapping[str, object]) -> Mapping[str, object] | None:
    chosen = reported or desired
    return chosen or None


class EntitySource:
    """Builds the served entities from ``registry``, page by page."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def _build(
        self, item: Device | Gateway, presence: Presence | None, gateways: dict[str, Gateway | None]
    ) -> list[Entity]:
        gateway: Gateway | None = None
        if isinstance(item, Device) and item.gateway_id is not None:
            if item.gateway_id not in gateways:
                try:
                    gateways[item.gateway_id] = await self._registry.get_gateway(item.gateway_id)
                except NotFound:
                    gateways[item.gateway_id] = None
            gateway = gateways[item.gateway_id]
        latest = await self._registry.latest(item.id)
        twin = await self._registry.get_twin(item.id)
        settings = _settings(twin.reported, twin.desired)
        return entities_for(item, latest, presence, gateway=gateway, settings=settings)

    @staticmethod
    def _wanted(item: Device | Gateway, types: Collection[str] | None) -> bool:
        produced = TYPES_BY_FAMILY[family_of(item)]
        return bool(produced) and (types is None or not produced.isdisjoint(types))

    async def _page(
        self, items: Sequence[Device | Gateway], types: Collection[str] | None, gateways: dict[str, Gateway | None]
    ) -> AsyncIterator[Entity]:
        chosen = [item for item in items if self._wanted(item, types)]
        if not chosen:
            return
        gateway_ids = {item.id if isinstance(item, Gateway) else item.gateway_id for item in chosen}
        presence = await self._registry.presence_of([gid for gid in gateway_ids if gid is not None])
        for item in chosen:
            owner = item.id if isinstance(item, Gateway) else item.gateway_id
            for entity in await self._build(item, presence.get(owner) if owner else None, gateways):
                if types is None or entity.type in types:
                    yield entity

    async def scan(self, types: Collection[str] | None = None) -> AsyncIterator[Entity]:
        """Every served entity (of ``types`` when given): gateways' then devices', each in registry id order."""
        if types is not None and ENTITY_TYPES.isdisjoint(types):
            return
        gateways: dict[str, Gateway | None] = {}
        cursor: str | None = None
        if types is None or not _COMMON.isdisjoint(types):
            while True:
                gateway_page = await self._registry.list_gateways(after=cursor, limit=REGISTRY_PAGE)
                gateways.update((gateway.id, gateway) for gateway in gateway_page.items)
                async for entity in self._page(gateway_page.items, types, gateways):
                    yield entity
                cursor = gateway_page.next_cursor
                if cursor is None:
                    break
        cursor = None
        while True:
            device_page = await self._registry.list_devices(after=cursor, limit=REGISTRY_PAGE)
            async for entity in self._page(device_page.items, types, gateways):
                yield entity
            cursor = device_page.next_cursor
            if cursor is None:
                break

    async def by_ids(self, entity_ids: Collection[str]) -> list[Entity]:
        """The served entities with these ids (unknown ids are left out), in the order of ``entity_ids``."""
        wanted = list(dict.fromkeys(entity_ids))
        found: dict[str, Entity] = {}
        gateways: dict[str, Gateway | None] = {}
        done: set[str] = set()
        for entity_id in wanted:
            registry_id = registry_id_of(entity_id)
            if registry_id is None or registry_id in done:
                continue
            done.add(registry_id)
            item: Device | Gateway
            try:
                item = await self._registry.get_device(registry_id)
            except NotFound:
                try:
                    item = await self._registry.get_gateway(registry_id)
                except NotFound:
                    continue
            if not TYPES_BY_FAMILY[family_of(item)]:
                continue  # a watch tag: nothing of it is served, so nothing of it is read
            owner = item.id if isinstance(item, Gateway) else item.gateway_id
            presence = await self._registry.presence_of([owner]) if owner is not None else {}
            for entity in await self._build(item, presence.get(owner) if owner else None, gateways):
                found[entity.id] = entity
        return [found[entity_id] for entity_id in wanted if entity_id in found]
