"""Retention: each device's own period (watch tags), the default for the rest; decommissioned history kept till then."""

from __future__ import annotations

from datetime import timedelta

from device_registry import DEFAULT_RETENTION, Registry, State, StoredReading
from tests.postgres import FakeClock, bound_device, organisation, provisioned_gateway, reading, watch_tag
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture

DAY = 86_400.0


async def test_history_is_purged_by_each_devices_retention(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    start = clock.now.timestamp()
    await bound_device(registry, "wl-0001", gateway)
    await bound_device(registry, "wl-0002", gateway)
    await organisation(registry)
    await registry.create_device(
        "em-0001", "kakogawa", "energy_meter", actor="admin", gateway_id=gateway, retention=timedelta(days=7)
    )
    await watch_tag(registry, "tag-0001", consent=True, retention=timedelta(days=30))
    devices = ("wl-0001", "wl-0002", "em-0001", "tag-0001")
    for day in (0, 10, 100):
        at = start + day * DAY
        await registry.ingest_readings(gateway, [(day + 1, at, [reading(d, float(day), at=at) for d in devices])])
    await registry.transition("wl-0002", State.DECOMMISSIONED, "admin", "river works ended")

    def days(stored: list[StoredReading]) -> list[float | str | bool | bytes]:
        return [r.value for r in stored]

    first = await registry.purge_history(clock.advance(timedelta(days=101)))
    assert days(await registry.history("tag-0001")) == [100.0]
    assert days(await registry.history("em-0001")) == [100.0]
    assert days(await registry.history("wl-0001")) == [0.0, 10.0, 100.0]
    assert days(await registry.history("wl-0002")) == [0.0, 10.0, 100.0]  # decommissioned: kept until retention
    assert (first.readings, first.latest, first.messages) == (4, 0, 0)
    assert [r.value for r in await registry.latest("em-0001")] == [100.0]

    await registry.purge_history(clock.advance(timedelta(days=30)))  # day 131: the tag's last sighting expires
    assert await registry.latest("tag-0001") == []
    assert await registry.latest("em-0001") == []
    entry = (await registry.audit(action="retention.purged"))[-1]
    assert (entry.actor, entry.detail["readings"], entry.detail["latest"]) == ("system", 2, 2)

    clock.advance(DEFAULT_RETENTION - timedelta(days=131) + timedelta(days=11))  # day 411: days 0 and 10 expire
    purged = await registry.purge_history()
    assert days(await registry.history("wl-0001")) == [100.0]
    assert days(await registry.history("wl-0002")) == [100.0]
    assert (await registry.get_device("wl-0002")).state is State.DECOMMISSIONED
    assert (purged.readings, purged.messages) == (4, 2)


async def test_pruned_messages_still_count_as_seen(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0001", gateway)
    start = clock.now.timestamp()
    await registry.ingest_readings(gateway, [(seq, start, [reading("wl-0001")]) for seq in (1, 2, 4)])
    later = start + 500 * DAY
    await registry.ingest_readings(gateway, [(6, later, [reading("wl-0001", at=later)])])
    await registry.record_gap(gateway, 3, 3, 1, "disk_budget")
    result = await registry.purge_history(clock.advance(timedelta(days=401)))
    assert result.messages == 3
    seen = await registry.completeness(gateway)
    assert (seen.floor, seen.highest_seq, seen.received, seen.reported_gaps) == (4, 6, 1, ())
    assert [(r.first, r.last) for r in seen.missing] == [(5, 5)]
    replay = await registry.ingest_readings(gateway, [(2, later, [reading("wl-0001")])])
    assert (replay.messages, replay.duplicates, replay.stored) == (0, 1, 0)
