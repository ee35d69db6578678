"""Set-based reads (``Registry.snapshots``, ``devices_of``, ``gateways_of``) on SQLite and PostgreSQL.

Each snapshot equals what the one-device methods answer (:meth:`Registry.latest`, :meth:`Registry.get_twin`) for
gateways, bound and unbound devices, devices without readings or without a twin row; unknown ids are left out; the
``IN`` lists are chunked (checked with a tiny chunk, so that a gateway and its devices fall in different chunks);
and the statements per call do not depend on how many devices or readings there are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from device_registry import Registry, snapshot_methods
from device_registry.database import writing
from device_registry.models import Location
from device_registry.schema import twins
from device_registry.snapshot_methods import DeviceSnapshot
from tests.postgres import ORG, FakeClock, bound_device, organisation, provisioned_gateway, reading
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture

AT = 1.8e9


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL statements ``engine`` sends to the database inside the block."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def build(registry: Registry, clock: FakeClock) -> None:
    """gw-0001 with settings of its own, reporting settings for wl-0001 (and a non-object for wl-0002); wl-0001
    with readings and desired settings; wl-0002 bound, silent, with desired settings; th-0001 unbound, with nothing;
    gw-0002 silent with no devices."""
    gateway = await provisioned_gateway(registry, clock, "gw-0001")
    await provisioned_gateway(registry, clock, "gw-0002")
    await bound_device(registry, "wl-0001", gateway)
    await bound_device(registry, "wl-0002", gateway)
    await registry.create_device("th-0001", ORG, "thermometer", actor="admin", location=Location(34.7, 134.8))
    await registry.set_desired("wl-0001", {"levels": {"warning": 2.0}}, actor="admin")
    await registry.set_desired("wl-0002", {"interval_s": 60}, actor="admin")
    version = await registry.set_desired(gateway, {"firmware": "1.2"}, actor="admin")
    await registry.merge_reported(
        gateway, version, {"firmware": "1.1", "devices": {"wl-0001": {"levels": {"warning": 2.5}}, "wl-0002": 7}}
    )
    batch = [
        reading("wl-0001", 1.5, at=AT),
        reading("wl-0001", 3.0, quantity="battery", at=AT),
        reading("wl-0001", 1.7, at=AT + 60),
        reading(gateway, 41.0, quantity="cpu_temperature", at=AT),
    ]
    await registry.ingest_readings(gateway, [(1, AT + 61, batch)])


IDS = ("gw-0001", "gw-0002", "wl-0001", "wl-0002", "th-0001")


async def check_equals_one_by_one(registry: Registry, found: dict[str, DeviceSnapshot]) -> None:
    assert sorted(found) == sorted(IDS)
    for entity_id in IDS:
        snapshot = found[entity_id]
        assert snapshot.entity_id == entity_id
        assert list(snapshot.latest) == await registry.latest(entity_id)
        assert snapshot.twin == await registry.get_twin(entity_id)


async def test_snapshots_equal_the_one_device_reads(registry: Registry, clock: FakeClock) -> None:
    await build(registry, clock)
    found = await registry.snapshots([*IDS, "nope-0001", "wl-0001", "gw-0001"])
    await check_equals_one_by_one(registry, found)
    wl1, wl2, th1, gw1, gw2 = (found[i] for i in ("wl-0001", "wl-0002", "th-0001", "gw-0001", "gw-0002"))
    assert [(r.quantity, r.value) for r in wl1.latest] == [("battery", 3.0), ("level", 1.7)]
    assert [r.quantity for r in gw1.latest] == ["cpu_temperature"]
    assert wl2.latest == th1.latest == gw2.latest == ()
    # settings: what the gateway reported when it reported any, else what is desired, else nothing
    assert wl1.settings == {"levels": {"warning": 2.5}}
    assert wl2.settings == {"interval_s": 60}  # its reported part is not an object: what is desired
    assert th1.settings is None  # unbound: nothing reported, nothing desired
    assert gw1.settings == {"firmware": "1.1", "devices": {"wl-0001": {"levels": {"warning": 2.5}}, "wl-0002": 7}}
    assert gw2.settings is None


async def test_unknown_empty_and_no_twin(registry: Registry, clock: FakeClock) -> None:
    assert await registry.snapshots([]) == {}
    assert await registry.snapshots(["nope-0001"]) == {}
    await build(registry, clock)
    async with writing(registry.engine) as conn:
        await conn.execute(twins.delete().where(twins.c.entity_id.in_(["wl-0001", "gw-0002"])))
    found = await registry.snapshots(["wl-0001", "gw-0002"])
    assert (found["wl-0001"].twin, found["wl-0001"].settings) == (None, None)
    assert [r.value for r in found["wl-0001"].latest] == [3.0, 1.7]  # its latest values are still there
    assert found["gw-0002"].twin is None


async def test_chunks_split_gateways_from_their_devices(
    registry: Registry, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await build(registry, clock)
    monkeypatch.setattr(snapshot_methods, "CHUNK", 2)
    with statements(registry.engine) as sent:
        found = await registry.snapshots(["wl-0001", "wl-0002", "th-0001", "gw-0001", "gw-0002"])
    await check_equals_one_by_one(registry, found)
    selects = [s for s in sent if s.lstrip().upper().startswith("SELECT")]
    # three per chunk at most: the entities with their own twins, the twins of their gateways, their latest values
    # (the chunk of th-0001, unbound, and gw-0001, a gateway, and the chunk of gw-0002 need no gateway twins)
    assert len(selects) == 3 + 2 + 2


async def test_statements_do_not_grow_with_devices_or_readings(registry: Registry, clock: FakeClock) -> None:
    gateways = [await provisioned_gateway(registry, clock, f"gw-{g:04d}") for g in range(3)]

    async def add(first: int, count: int) -> list[str]:
        ids = [f"wl-{n:04d}" for n in range(first, first + count)]
        for n, device in enumerate(ids):
            await bound_device(registry, device, gateways[n % 3])
        for g, gateway in enumerate(gateways):
            mine = ids[g::3]
            batch = [reading(d, float(k), quantity=q) for k, d in enumerate(mine) for q in ("level", "battery")]
            await registry.ingest_readings(gateway, [(first + 1, AT, batch)])
        return ids

    few = await add(0, 10)
    with statements(registry.engine) as sent_few:
        found_few = await registry.snapshots(few)
    many = few + await add(10, 140)
    with statements(registry.engine) as sent_many:
        found_many = await registry.snapshots(many)
    assert len(found_few) == 10
    assert len(found_many) == 150
    assert all(len(snapshot.latest) == 2 for snapshot in found_many.values())
    assert len(sent_many) == len(sent_few)


async def test_devices_of_and_gateways_of(registry: Registry, clock: FakeClock) -> None:
    await build(registry, clock)
    await organisation(registry)
    await registry.create_device("em-0001", ORG, "energy_meter", actor="admin", labels={"site": "hall"})
    devices = await registry.devices_of(["wl-0002", "gw-0001", "em-0001", "nope-0001", "wl-0002"])
    assert sorted(devices) == ["em-0001", "wl-0002"]
    assert devices["em-0001"] == await registry.get_device("em-0001")
    assert devices["em-0001"].labels == {"site": "hall"}
    gateways = await registry.gateways_of(["wl-0001", "gw-0002", "gw-0001", "nope-0001"])
    assert sorted(gateways) == ["gw-0001", "gw-0002"]
    assert gateways["gw-0001"] == await registry.get_gateway("gw-0001")
    assert await registry.devices_of([]) == {}
    assert await registry.gateways_of([]) == {}
