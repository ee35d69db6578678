"""The northbound outbox: every stored readings message queued in its ingest transaction, read back, delivered,
retried or dead-lettered; nothing queued without the northbound, nothing queued twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event

from device_registry import Registry
from tests.postgres import FakeClock, bound_device, provisioned_gateway, reading
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture

T0 = 1.8e9


def _northbound(registry: Registry, clock: FakeClock) -> Registry:
    return Registry(registry.engine, clock=clock, northbound=True)


async def test_stored_messages_are_queued_once_in_order_and_read_back(registry: Registry, clock: FakeClock) -> None:
    feed = _northbound(registry, clock)
    gw = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0001", gw)
    batch = [(seq, T0 + seq, [reading("wl-0001", float(seq), at=T0 + seq), reading("wl-0002", 1.0)]) for seq in (1, 2)]
    await feed.ingest_readings(gw, batch)
    await feed.ingest_readings(gw, batch)  # redelivered: stored once, queued once
    await feed.ingest_readings(gw, [(3, T0, [reading("wl-0002", 1.0)])])  # nothing stored (unbound): nothing queued
    pending = await feed.northbound_pending(now=clock.now.timestamp() + 1)
    assert [(item.gateway_id, item.seq) for item in pending] == [(gw, 1), (gw, 2)]
    back = await feed.northbound_readings(pending)
    assert [(r.device_id, r.value) for r in back[(gw, 1)]] == [("wl-0001", 1.0)]
    depth = await feed.northbound_depth()
    assert (depth.pending, depth.dead) == (2, 0)


async def test_delivered_retry_and_dead_letter(registry: Registry, clock: FakeClock) -> None:
    feed = _northbound(registry, clock)
    gw = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0001", gw)
    await feed.ingest_many([(gw, [(seq, T0, [reading("wl-0001", float(seq))]) for seq in (1, 2, 3)])])
    now = clock.now.timestamp()
    first, second, third = await feed.northbound_pending(now=now)
    await feed.northbound_delivered([first.id])
    await feed.northbound_retry([second.id], not_before=now + 60, reason="503 from the broker")
    await feed.northbound_dead([third.id], reason="400 BadRequestData: unitCode")
    assert await feed.northbound_pending(now=now) == []
    later = await feed.northbound_pending(now=now + 61)
    assert [(item.seq, item.attempts) for item in later] == [(2, 1)]
    depth = await feed.northbound_depth()
    assert (depth.pending, depth.dead) == (1, 1)


async def test_nothing_is_queued_without_the_northbound(registry: Registry, clock: FakeClock) -> None:
    gw = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0001", gw)
    await registry.ingest_readings(gw, [(1, T0, [reading("wl-0001", 1.0)])])
    assert (await registry.northbound_depth()).pending == 0


async def test_ids_keep_rising_after_the_outbox_empties(registry: Registry, clock: FakeClock) -> None:
    feed = _northbound(registry, clock)
    gw = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0001", gw)
    await feed.ingest_readings(gw, [(1, T0, [reading("wl-0001", 1.0)])])
    (first,) = await feed.northbound_pending(now=clock.now.timestamp())
    await feed.northbound_delivered([first.id])
    await feed.ingest_readings(gw, [(2, T0, [reading("wl-0001", 2.0)])])
    (second,) = await feed.northbound_pending(now=clock.now.timestamp(), after=first.id)
    assert second.id > first.id


async def test_the_next_pending_messages_are_an_index_range_not_a_sort_of_the_backlog(tmp_path: Path) -> None:
    """After a long City OS outage the backlog is large: finding the next rows must not read and sort all of it."""
    clock = FakeClock()
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", clock=clock, northbound=True)
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "FROM northbound_outbox" in statement and statement.lstrip().startswith("SELECT"):
            seen.append((statement, parameters))

    try:
        gw = await provisioned_gateway(registry, clock)
        await bound_device(registry, "wl-0001", gw)
        await registry.ingest_many([(gw, [(seq, T0, [reading("wl-0001", float(seq))]) for seq in range(1, 50)])])
        event.listen(registry.engine.sync_engine, "before_cursor_execute", capture)
        assert len(await registry.northbound_pending(limit=10, after=3, now=clock.now.timestamp())) == 10
        event.remove(registry.engine.sync_engine, "before_cursor_execute", capture)
        ((statement, parameters),) = seen
        async with registry.engine.connect() as conn:
            plan = " | ".join(
                str(row[-1]) for row in await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            )
        assert "USING INDEX ix_northbound_outbox_state_id (state=? AND id>?)" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    finally:
        await registry.close()
