"""The context source's cost in SQL statements (a benchmark that times nothing): it must not grow with the fleet.

The same walks -- every entity (what ``count=true`` does), one type, a list of entity ids -- run over 50 and then
500 devices, counting the statements the registry's engine sends. Within one listing page
(:data:`~cloud_agent.northbound.context_source_entities.REGISTRY_PAGE` raised above the fleet) the counts are equal;
at the default page size they grow by a fixed number per page, never per device. A type no device can produce reads
only the listing. SQLite only: the statements do not depend on the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from pathlib import Path

import pytest

from cloud_agent.northbound import context_source_entities
from cloud_agent.northbound.context_source_entities import ENTITY_TYPES, EntitySource
from cloud_agent.northbound.entities import Entity
from device_registry import Registry
from device_registry.models import Location
from tests.postgres import ORG, FakeClock, organisation, provisioned_gateway, reading
from tests.test_registry_snapshots import statements

KINDS = (("water_level", "level"), ("thermometer", "temperature"), ("water_meter", "volume"))
PER_PAGE = 12
"""Statements per listing page at most: the listing (4), its gateways (2), their presence (1), snapshots (3)."""


@pytest.fixture(name="registry")
async def registry_fixture(tmp_path: Path) -> AsyncIterator[Registry]:
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", synchronous="NORMAL")
    try:
        yield registry
    finally:
        await registry.close()


async def grow(registry: Registry, gateways: list[str], first: int, count: int) -> None:
    """Devices ``first`` .. ``first + count - 1``: gauges, thermometers, water meters, each with a reading."""
    for n in range(first, first + count):
        kind, _ = KINDS[n % len(KINDS)]
        gateway = gateways[n % len(gateways)]
        where = Location(34.7 + n / 10_000, 134.8)
        await registry.create_device(f"d-{n:04d}", ORG, kind, actor="t", gateway_id=gateway, location=where)
    for g, gateway in enumerate(gateways):
        batch = [
            reading(f"d-{n:04d}", float(n % 5), quantity=KINDS[n % len(KINDS)][1])
            for n in range(first, first + count)
            if n % len(gateways) == g
        ]
        await registry.ingest_readings(gateway, [(first + 1, 1.8e9, batch)])
    if first == 0:
        await registry.set_desired("d-0000", {"levels": {"warning": 2.0}}, actor="t")


async def walk(source: EntitySource, registry: Registry, devices: int) -> dict[str, tuple[int, int]]:
    """(statements, entities) of each walk."""
    ids = [f"urn:ngsi-ld:Device:d-{n:04d}" for n in range(devices)]
    walks: dict[str, tuple[Collection[str] | None, list[str] | None]] = {
        "everything": (None, None),
        "one type": ({"WaterObserved"}, None),
        "all types": (ENTITY_TYPES, None),
        "by id": (None, ids),
    }
    found: dict[str, tuple[int, int]] = {}
    for name, (types, wanted) in walks.items():
        with statements(registry.engine) as sent:
            entities: list[Entity] = (
                await source.by_ids(wanted) if wanted else [entity async for entity in source.scan(types)]
            )
        found[name] = (len(sent), len(entities))
    return found


async def test_statements_do_not_grow_with_the_fleet(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    await organisation(registry)
    gateways = [await provisioned_gateway(registry, clock, f"gw-{g:04d}") for g in range(3)]
    source = EntitySource(registry)

    await grow(registry, gateways, 0, 50)
    default_small = await walk(source, registry, 50)
    monkeypatch.setattr(context_source_entities, "REGISTRY_PAGE", 1000)
    one_page_small = await walk(source, registry, 50)
    await grow(registry, gateways, 50, 450)
    one_page_large = await walk(source, registry, 500)
    monkeypatch.undo()
    default_large = await walk(source, registry, 500)

    # the same entities whatever the page size; ten times the devices, ten times the entities
    assert one_page_small == {name: (one_page_small[name][0], n) for name, (_, n) in default_small.items()}
    assert {name: n for name, (_, n) in default_large.items()} == {name: n for name, (_, n) in one_page_large.items()}
    assert default_large["by id"][1] == 500
    assert default_large["one type"][1] == 167  # one gauge in three
    assert default_large["everything"][1] > 1000
    # one listing page: exactly the same statements for 50 and 500 devices
    assert {name: sent for name, (sent, _) in one_page_large.items()} == {
        name: sent for name, (sent, _) in one_page_small.items()
    }
    # default pages: a fixed number per page of devices (three pages for 500), where one per device would be 1000+
    pages = -(-500 // context_source_entities.REGISTRY_PAGE) + 1  # and the gateways' page
    for name, (sent, _) in default_large.items():
        assert sent <= PER_PAGE * pages, (name, sent)


async def test_a_type_no_device_produces_reads_only_the_listing(registry: Registry) -> None:
    await organisation(registry)
    gateways = [await provisioned_gateway(registry, FakeClock(), "gw-0000")]
    await grow(registry, gateways, 0, 30)
    with statements(registry.engine) as sent:
        found = [entity async for entity in EntitySource(registry).scan({"ThreePhaseAcMeasurement"})]
    assert found == []
    assert sent
    assert not [statement for statement in sent if "latest" in statement or "twins" in statement]
