"""Outbox rows to serialized City OS entity updates: the CPU-heavy half of the northbound feed.

:class:`OutboxMapper` takes the pending rows of the registry's ``northbound_outbox`` after a given row id, reads
their readings back, groups each message's readings by device and observed time, maps each group with
:func:`~cloud_agent.northbound.mapping.entities_for` (so every sample reaches the City OS, not only the newest of a
message) and serializes the entities for the configured broker. Watch-tag sightings map to nothing here except an
SOS, which leaves as an ``Alert`` without anything of the tag (:func:`~cloud_agent.northbound.alerts.tag_alerts`).
Devices, gateways and twins are cached for ``cache_s`` seconds.

It only reads: what was delivered is settled by the source (:mod:`cloud_agent.northbound.registry_source`). So it can
run in the agent's event loop or, by default, in a worker process of its own (:mod:`.mapping_worker`), which gives
the mapping a second core and leaves the agent's loop to ingest and push.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from cloud_agent.northbound.alerts import tag_alerts
from cloud_agent.northbound.entities import Entity, to_ngsi_ld, to_ngsi_v2
from cloud_agent.northbound.mapping import contexts_for, entities_for
from cloud_agent.northbound.queue import Document
from device_registry import WATCH_TAG, Device, Gateway, NotFound, Registry, StoredReading
from kakehashi.wire import JSONObject

BrokerKind = Literal["ngsi-ld", "ngsi-v2"]
Serializer = Callable[[Entity], dict[str, Any]]


def serialize_ngsi_ld(entity: Entity) -> dict[str, Any]:
    """An entity as an NGSI-LD normalized document with its ``@context``."""
    return dict(to_ngsi_ld(entity, contexts_for(entity.type)))


def serialize_ngsi_v2(entity: Entity) -> dict[str, Any]:
    """An entity as an NGSI v2 normalized document."""
    return dict(to_ngsi_v2(entity))


SERIALIZERS: Final[dict[str, Serializer]] = {"ngsi-ld": serialize_ngsi_ld, "ngsi-v2": serialize_ngsi_v2}


@dataclass(frozen=True, slots=True)
class MappedRow:
    """One outbox row and the entity documents its message becomes (none: settled at once)."""

    row_id: int
    documents: list[Document]
    refused: int
    """Readings of unknown devices in the message (nothing of them is sent)."""


class RowMapper(Protocol):
    """Maps the pending outbox rows after a row id (see :class:`OutboxMapper`)."""

    async def map_after(self, after: int, limit: int) -> list[MappedRow]: ...

    async def close(self) -> None: ...


class OutboxMapper:
    """Maps pending outbox rows in this process (:class:`RowMapper`)."""

    def __init__(self, registry: Registry, kind: BrokerKind, *, cache_s: float = 30.0) -> None:
        self._registry = registry
        self._serialize = SERIALIZERS[kind]
        self._cache_s = cache_s
        self._entities: dict[str, tuple[float, Device | Gateway | None]] = {}
        self._settings: dict[str, tuple[float, JSONObject]] = {}

    async def map_after(self, after: int, limit: int) -> list[MappedRow]:
        """The pending rows after row id ``after`` (at most ``limit``), in row order, each with its documents."""
        rows = await self._registry.northbound_pending(limit=limit, after=after)
        if not rows:
            return []
        readings = await self._registry.northbound_readings(rows)
        mapped: list[MappedRow] = []
        for row in rows:
            documents, refused = await self._documents(readings[(row.gateway_id, row.seq)])
            mapped.append(MappedRow(row.id, documents, refused))
            await asyncio.sleep(0)  # mapping is CPU work: in the agent's loop, let other tasks run in between
        return mapped

    async def close(self) -> None:
        """Nothing to release: the registry belongs to the caller."""

    async def _documents(self, readings: Sequence[StoredReading]) -> tuple[list[Document], int]:
        groups: dict[tuple[str, float], list[StoredReading]] = {}
        for reading in readings:
            groups.setdefault((reading.device_id, reading.observed_at), []).append(reading)
        documents: list[Document] = []
        refused = 0
        for (device_id, _observed), group in sorted(groups.items(), key=lambda item: item[0][1]):
            device = await self._entity(device_id)
            if device is None:
                refused += len(group)
                continue
            gateway = await self._entity(group[0].gateway_id)
            seen_by = gateway if isinstance(gateway, Gateway) else None
            if isinstance(device, Device) and device.kind == WATCH_TAG:  # counted from the store; an SOS leaves
                documents.extend(self._serialize(alert) for alert in tag_alerts(device, group, seen_by))
                continue
            settings = await self._twin_settings(device_id)
            for entity in entities_for(device, group, gateway=seen_by, settings=settings):
                documents.append(self._serialize(entity))
        return documents, refused

    async def _entity(self, entity_id: str) -> Device | Gateway | None:
        cached = self._entities.get(entity_id)
        if cached is not None and time.monotonic() - cached[0] < self._cache_s:
            return cached[1]
        found: Device | Gateway | None
        try:
            found = await self._registry.get_device(entity_id)
        except NotFound:
            try:
                found = await self._registry.get_gateway(entity_id)
            except NotFound:
                found = None
        self._entities[entity_id] = (time.monotonic(), found)
        return found

    async def _twin_settings(self, entity_id: str) -> JSONObject:
        cached = self._settings.get(entity_id)
        if cached is not None and time.monotonic() - cached[0] < self._cache_s:
            return cached[1]
        try:
            twin = await self._registry.get_twin(entity_id)
            settings: JSONObject = {**twin.desired, **twin.reported}
        except NotFound:
            settings = {}
        self._settings[entity_id] = (time.monotonic(), settings)
        return settings
