"""The context source's entities, built on demand from the registry with the northbound mapping.

Entities are never stored for the context source: each request pages through the registry (gateways, then devices,
:data:`REGISTRY_PAGE` at a time, in id order) and builds each one's entities with
:func:`cloud_agent.northbound.mapping.entities_for` from its latest values, its gateway's presence and location and
its twin's settings. What the mapping does not emit is never served: watch tags yield nothing (their sightings leave
only as the privacy module's aggregates).

Reads are set-based: a listing page costs a fixed number of queries whatever its size -- the gateways its devices
are bound to that are not known yet (:meth:`~device_registry.Registry.gateways_of`), their presence
(:meth:`~device_registry.Registry.presence_of`), and the latest values and twins of the whole page
(:meth:`~device_registry.Registry.snapshots`) -- so a walk of the fleet costs a handful of queries per
:data:`REGISTRY_PAGE` devices rather than two per device.

A type filter narrows the walk before any reading is fetched: the model family of a gateway or device
(:func:`~cloud_agent.northbound.mapping.family_of`) says which entity types it can produce (:data:`TYPES_BY_FAMILY`),
and only those that can produce a wanted type have their latest values read; a page with none of them costs only
its listing. An entity id (``urn:ngsi-ld:<type>:<registry id>[:<quantity>]``) goes straight to its gateway or device,
the ids of one request read together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Final

from cloud_agent.northbound.entities import Entity
from cloud_agent.northbound.mapping import Family, entities_for, family_of
from device_registry import Registry
from device_registry.models import Device, Gateway

__all__ = ["ENTITY_TYPES", "REGISTRY_PAGE", "TYPES_BY_FAMILY", "EntitySource", "registry_id_of"]

REGISTRY_PAGE: Final = 200
"""Gateways or devices read from the registry per listing query."""

_COMMON: Final = frozenset({"Device", "DeviceMeasurement", "Alert"})
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


class EntitySource:
    """Builds the served entities from ``registry``, page by page."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    @staticmethod
    def _wanted(item: Device | Gateway, types: Collection[str] | None) -> bool:
        produced = TYPES_BY_FAMILY[family_of(item)]
        return bool(produced) and (types is None or not produced.isdisjoint(types))

    async def _batch(
        self, items: Sequence[Device | Gateway], types: Collection[str] | None, gateways: dict[str, Gateway | None]
    ) -> list[Entity]:
        """The entities of ``items`` (of ``types`` when given), in their order, from a fixed number of queries."""
        chosen = [item for item in items if self._wanted(item, types)]
        if not chosen:
            return []
        owners = [item.id if isinstance(item, Gateway) else item.gateway_id for item in chosen]
        bound = {item.gateway_id for item in chosen if isinstance(item, Device) and item.gateway_id is not None}
        unknown = sorted(bound - gateways.keys())
        if unknown:
            found = await self._registry.gateways_of(unknown)
            gateways.update((gateway_id, found.get(gateway_id)) for gateway_id in unknown)
        presence = await self._registry.presence_of([owner for owner in owners if owner is not None])
        snapshots = await self._registry.snapshots([item.id for item in chosen])
        built: list[Entity] = []
        for item, owner in zip(chosen, owners, strict=True):
            snapshot = snapshots.get(item.id)
            entities = entities_for(
                item,
                snapshot.latest if snapshot is not None else (),
                presence.get(owner) if owner is not None else None,
                gateway=gateways[item.gateway_id] if isinstance(item, Device) and item.gateway_id else None,
                settings=snapshot.settings if snapshot is not None else None,
            )
            built.extend(entity for entity in entities if types is None or entity.type in types)
        return built

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
                for entity in await self._batch(gateway_page.items, types, gateways):
                    yield entity
                cursor = gateway_page.next_cursor
                if cursor is None:
                    break
        cursor = None
        while True:
            device_page = await self._registry.list_devices(after=cursor, limit=REGISTRY_PAGE)
            for entity in await self._batch(device_page.items, types, gateways):
                yield entity
            cursor = device_page.next_cursor
            if cursor is None:
                break

    async def by_ids(self, entity_ids: Collection[str]) -> list[Entity]:
        """The served entities with these ids (unknown ids are left out), in the order of ``entity_ids``."""
        wanted = list(dict.fromkeys(entity_ids))
        registry_ids = list(dict.fromkeys(rid for rid in map(registry_id_of, wanted) if rid is not None))
        found: dict[str, Entity] = {}
        gateways: dict[str, Gateway | None] = {}
        for start in range(0, len(registry_ids), REGISTRY_PAGE):
            part = registry_ids[start : start + REGISTRY_PAGE]
            known: dict[str, Device | Gateway] = {**await self._registry.devices_of(part)}
            rest = [registry_id for registry_id in part if registry_id not in known]
            known.update(await self._registry.gateways_of(rest) if rest else {})
            items = [known[registry_id] for registry_id in part if registry_id in known]
            found.update((entity.id, entity) for entity in await self._batch(items, None, gateways))
        return [found[entity_id] for entity_id in wanted if entity_id in found]
