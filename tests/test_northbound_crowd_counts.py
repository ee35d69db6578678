"""Crowd counts from the registry's stored watch-tag readings (SQLite and PostgreSQL): distinct tags per zone and
hour, the same after a restart and never lower, a tag without consent not counted, late sightings corrected,
k-anonymity, consent scopes, and no tag id in any entity and a pseudonymised Device for exactly the sharing tags
(hypothesis, over real SQLite)."""

from __future__ import annotations

import itertools
import tempfile
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_agent.northbound.crowd_counts import StoredCrowdCounts
from cloud_agent.northbound.entities import Entity
from cloud_agent.northbound.privacy import HOUR, Pseudonymiser, hour_of, tag_urn, zone_urn
from device_registry import WATCH_TAG, Location, Registry, State
from device_registry.schema import entity_labels
from kakehashi import wire
from tests.postgres import FakeClock, organisation
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture
from tests.test_northbound_mapping import check_all
from tests.test_northbound_privacy import everything

SECRET = b"deployment-secret-kakogawa-2026"
H0 = 1_795_305_600  # 2026-11-22T00:00Z, an hour start
EAST = Location(34.75, 134.84)
_seqs = itertools.count(1)
_serials = itertools.count(0x7000)
NOT_AFTER = datetime(2036, 1, 1, tzinfo=UTC)


async def city(registry: Registry) -> None:
    """Two gateways in zone station-east (the first without a position), one without a zone label."""
    await organisation(registry)
    for gateway_id, location, labels in (
        ("gw-east-a", None, {"zone": "station-east"}),
        ("gw-east-b", EAST, {"zone": "station-east"}),
        ("gw-school", Location(34.76, 134.85), {}),
    ):
        await registry.create_gateway(gateway_id, "kakogawa", actor="admin", location=location, labels=labels)
        await registry.record_certificate(gateway_id, format(next(_serials), "x"), NOT_AFTER, actor="pki")


async def tag(
    registry: Registry, tag_id: str, *, share: str | None = None, retention: timedelta = timedelta(days=30)
) -> str:
    """A consented watch tag (provisioned; its first stored reading makes it active)."""
    labels = {"share": share} if share is not None else None
    await registry.create_device(
        tag_id, "kakogawa", WATCH_TAG, actor="admin", consent=True, retention=retention, labels=labels
    )
    await registry.transition(tag_id, State.PROVISIONED, "admin", "consent form signed")
    return tag_id


async def seen(
    registry: Registry, tag_id: str, gateway_id: str, at: float, *, received: float | None = None, battery: float = 0
) -> None:
    """The tag seen by the gateway at ``at`` (received ``received``, default a second later)."""
    values = [wire.Reading(tag_id, "rssi", -70.0, "dBm", at, wire.ClockQuality.SYNCED)]
    if battery:
        values.append(wire.Reading(tag_id, "battery", battery, "%", at, wire.ClockQuality.SYNCED))
    await registry.ingest_readings(gateway_id, [(next(_seqs), received or at + 1, values)])


async def set_label(registry: Registry, entity_id: str, key: str, value: str | None) -> None:
    async with registry.engine.begin() as conn:
        await conn.execute(
            entity_labels.delete().where(entity_labels.c.entity_id == entity_id, entity_labels.c.key == key)
        )
        if value is not None:
            await conn.execute(entity_labels.insert().values(entity_id=entity_id, key=key, value=value))


def counts_of(entities: list[Entity]) -> dict[str, int]:
    out: dict[str, int] = {}
    for entity in entities:
        if entity.type == "CrowdFlowObserved":
            value = entity.attrs["peopleCount"].value
            assert isinstance(value, int)
            out[entity.id] = value
    return out


async def test_distinct_counts_per_zone_and_hour_the_same_after_a_restart(registry: Registry) -> None:
    await city(registry)
    for n in range(4):
        await tag(registry, f"tag-kako-{n}")
    await seen(registry, "tag-kako-0", "gw-east-a", H0 + 10)
    await seen(registry, "tag-kako-0", "gw-east-b", H0 + 20)  # the same person again, same zone: still one
    await seen(registry, "tag-kako-1", "gw-east-b", H0 + 30)
    await seen(registry, "tag-kako-2", "gw-school", H0 + 40)  # no zone label: the gateway's id is the zone
    await seen(registry, "tag-kako-3", "gw-east-a", H0 + HOUR + 5)
    now = H0 + HOUR + 600
    first = StoredCrowdCounts(registry, SECRET)
    entities = await first.due(now)
    check_all(entities)
    expected = {
        zone_urn("station-east", H0): 2,
        zone_urn("gw-school", H0): 1,
        zone_urn("station-east", H0 + HOUR): 1,
    }
    assert counts_of(entities) == expected
    east = next(e for e in entities if e.id == zone_urn("station-east", H0))
    assert east.attrs["location"].value == {"type": "Point", "coordinates": [134.84, 34.75]}  # first located gateway
    assert await first.due(now + 60) == []  # nothing changed
    assert "tag-kako" not in everything(entities)

    restarted = StoredCrowdCounts(registry, SECRET)  # nothing in memory: the same counts from storage
    assert counts_of(await restarted.due(now + 120)) == expected
    await seen(registry, "tag-kako-1", "gw-east-a", H0 + HOUR + 700)
    assert counts_of(await restarted.due(now + 180)) == {zone_urn("station-east", H0 + HOUR): 2}


async def test_a_tag_without_consent_is_not_even_counted(registry: Registry) -> None:
    await city(registry)
    await tag(registry, "tag-kako-0")
    await registry.create_device(
        "tag-kako-no",
        "kakogawa",
        WATCH_TAG,
        actor="admin",
        consent=False,
        retention=timedelta(days=30),
        labels={"share": "location,battery"},
    )
    await seen(registry, "tag-kako-0", "gw-school", H0 + 10)
    await seen(registry, "tag-kako-no", "gw-school", H0 + 20, battery=80)  # refused by the registry: not stored
    entities = await StoredCrowdCounts(registry, SECRET).due(H0 + 600)
    assert [e.type for e in entities] == ["CrowdFlowObserved"]
    assert counts_of(entities) == {zone_urn("gw-school", H0): 1}


async def test_late_sightings_correct_their_hour_at_the_next_sweep(registry: Registry) -> None:
    await city(registry)
    for n in range(3):
        await tag(registry, f"tag-kako-{n}")
    await seen(registry, "tag-kako-0", "gw-east-a", H0 + 10)
    now = H0 + 5 * HOUR
    crowd = StoredCrowdCounts(registry, SECRET, sweep_s=300, recent_hours=2)
    assert counts_of(await crowd.due(now)) == {zone_urn("station-east", H0): 1}
    await seen(registry, "tag-kako-1", "gw-east-b", H0 + 20, received=now + 10)  # replayed five hours late
    await seen(registry, "tag-kako-2", "gw-east-a", now - HOUR + 5)  # the previous hour: a recent hour
    assert counts_of(await crowd.due(now + 60)) == {zone_urn("station-east", now - HOUR): 1}
    assert counts_of(await crowd.due(now + 301)) == {zone_urn("station-east", H0): 2}  # the sweep: corrected
    assert await crowd.due(now + 302) == []


async def test_small_zone_hours_are_held_back_until_enough_tags(registry: Registry) -> None:
    await city(registry)
    for n in range(3):
        await tag(registry, f"tag-kako-{n}")
    crowd = StoredCrowdCounts(registry, SECRET, min_count=3)
    await seen(registry, "tag-kako-0", "gw-school", H0 + 1)
    await seen(registry, "tag-kako-1", "gw-school", H0 + 2)
    assert await crowd.due(H0 + 100) == []
    assert crowd.held_back == 1
    await seen(registry, "tag-kako-2", "gw-school", H0 + 3)
    assert counts_of(await crowd.due(H0 + 200)) == {zone_urn("gw-school", H0): 3}
    with pytest.raises(ValueError, match="min_count"):
        StoredCrowdCounts(registry, SECRET, min_count=0)


async def test_hours_past_the_window_or_a_tags_retention_are_not_recounted(registry: Registry) -> None:
    await city(registry)
    await tag(registry, "tag-kako-0", retention=timedelta(hours=3))
    await seen(registry, "tag-kako-0", "gw-school", H0 + 10)
    await seen(registry, "tag-kako-0", "gw-school", H0 + 2 * HOUR + 10)
    entities = await StoredCrowdCounts(registry, SECRET).due(H0 + 4 * HOUR)
    assert counts_of(entities) == {zone_urn("gw-school", H0 + 2 * HOUR): 1}  # H0 may have lost readings already
    entities = await StoredCrowdCounts(registry, SECRET, keep_hours=1).due(H0 + 2 * HOUR + 50)
    assert counts_of(entities) == {zone_urn("gw-school", H0 + 2 * HOUR): 1}


async def test_consented_tags_share_only_their_scopes_under_a_pseudonym(registry: Registry, clock: FakeClock) -> None:
    await city(registry)
    await tag(registry, "tag-kako-loc", share="location,battery")
    await tag(registry, "tag-kako-zone", share="zone")
    await tag(registry, "tag-kako-none")
    await seen(registry, "tag-kako-loc", "gw-east-b", H0 + 10, battery=80)
    await seen(registry, "tag-kako-zone", "gw-east-a", H0 + 20, battery=50)
    await seen(registry, "tag-kako-none", "gw-east-a", H0 + 30)
    crowd = StoredCrowdCounts(registry, SECRET)
    entities = await crowd.due(H0 + 600)
    check_all(entities)
    pseudonyms = Pseudonymiser(SECRET)
    devices = {e.id: e for e in entities if e.type == "Device"}
    loc, zone = tag_urn(pseudonyms.pseudonym("tag-kako-loc")), tag_urn(pseudonyms.pseudonym("tag-kako-zone"))
    assert set(devices) == {loc, zone}
    assert devices[loc].attrs["areaServed"].value == "station-east"
    assert devices[loc].attrs["location"].value == {"type": "Point", "coordinates": [134.84, 34.75]}
    assert devices[loc].attrs["batteryLevel"].value == pytest.approx(0.8)
    assert set(devices[zone].attrs) == {"controlledProperty", "deviceCategory", "areaServed", "dateLastValueReported"}
    assert counts_of(entities) == {zone_urn("station-east", H0): 3}
    assert "tag-kako" not in everything(entities)

    assert await crowd.due(H0 + 700) == []  # unchanged: not sent again
    await seen(registry, "tag-kako-zone", "gw-school", H0 + 800)
    moved = [e for e in await crowd.due(H0 + 900) if e.type == "Device"]
    assert [(e.id, e.attrs["areaServed"].value) for e in moved] == [(zone, "gw-school")]

    await registry.set_consent("tag-kako-loc", False, actor="admin", reason="withdrawn")
    await registry.transition("tag-kako-zone", State.SUSPENDED, "admin", "lost")
    assert [e for e in await crowd.due(H0 + 1000) if e.type == "Device"] == []
    assert [e for e in await crowd.due(H0 + 26 * HOUR) if e.type == "Device"] == []


async def test_a_tag_not_seen_for_the_retention_period_is_no_longer_sent(registry: Registry) -> None:
    await city(registry)
    await tag(registry, "tag-kako-0", share="zone")
    await seen(registry, "tag-kako-0", "gw-school", H0 + 10)
    assert [e.type for e in await StoredCrowdCounts(registry, SECRET, tag_retention_s=HOUR).due(H0 + 600)] == [
        "CrowdFlowObserved",
        "Device",
    ]
    later = await StoredCrowdCounts(registry, SECRET, tag_retention_s=HOUR).due(H0 + HOUR + 11)
    assert [e.type for e in later] == ["CrowdFlowObserved"]


async def test_a_removed_share_label_stops_the_device(registry: Registry) -> None:
    await city(registry)
    await tag(registry, "tag-kako-0", share="location")
    await seen(registry, "tag-kako-0", "gw-school", H0 + 10)
    crowd = StoredCrowdCounts(registry, SECRET)
    assert any(e.type == "Device" for e in await crowd.due(H0 + 60))
    await set_label(registry, "tag-kako-0", "share", None)
    assert await crowd.due(H0 + 120) == []
    await set_label(registry, "tag-kako-0", "share", "zone")  # consent to share again: sent again
    assert [e.type for e in await crowd.due(H0 + 180)] == ["Device"]


# --- property: real SQLite, random sightings ---------------------------------------------------------------------

GATEWAYS = {"gw-east-a": "station-east", "gw-east-b": "station-east", "gw-school": "gw-school"}
TAGS = [f"tag-{name}" for name in ("kuro", "shiro", "midori", "momo", "sora", "umi")]  # no hex digit after "tag-"
sightings = st.lists(
    st.tuples(
        st.sampled_from(TAGS),
        st.sampled_from(sorted(GATEWAYS)),
        st.integers(min_value=0, max_value=4 * HOUR - 1),
        st.sampled_from([0, 5 * HOUR]),  # received at once, or replayed late
    ),
    max_size=25,
)


@settings(max_examples=20, deadline=None)
@given(
    first=sightings,
    second=sightings,
    shares=st.lists(st.sampled_from([None, "zone", "location,battery"]), min_size=6, max_size=6),
)
async def test_counts_are_the_distinct_tags_and_no_tag_id_ever_leaves(
    first: list[tuple[str, str, int, int]], second: list[tuple[str, str, int, int]], shares: list[str | None]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        registry = await Registry.open(f"sqlite+aiosqlite:///{Path(tmp) / 'r.db'}", clock=FakeClock())
        try:
            await city(registry)
            for tag_id, share in zip(TAGS, shares, strict=True):
                await tag(registry, tag_id, share=share)
            now = H0 + 5 * HOUR + 30
            crowd = StoredCrowdCounts(registry, SECRET, sweep_s=1)
            emitted: dict[str, int] = {}
            entities: list[Entity] = []
            for step, batch in enumerate((first, second)):
                for tag_id, gateway_id, offset, late in batch:
                    await seen(registry, tag_id, gateway_id, H0 + offset, received=H0 + offset + late + 1, battery=50)
                out = await crowd.due(now + 10 * step)
                for entity_id, count in counts_of(out).items():
                    assert count > emitted.get(entity_id, 0)  # a zone-hour's count only ever rises
                emitted.update(counts_of(out))
                entities.extend(out)
            expected: dict[str, set[str]] = defaultdict(set)
            for tag_id, gateway_id, offset, _ in first + second:
                expected[zone_urn(GATEWAYS[gateway_id], hour_of(H0 + offset))].add(tag_id)
            assert emitted == {urn: len(tags) for urn, tags in expected.items()}
            check_all(list({e.id: e for e in entities}.values()))
            text = everything(entities)
            assert not any(tag_id in text for tag_id in TAGS)
            seen_tags = {tag_id for tag_id, *_ in first + second}
            sharing = {tag_id for tag_id, share in zip(TAGS, shares, strict=True) if share is not None}
            devices = {e.id for e in entities if e.type == "Device"}
            assert devices == {tag_urn(Pseudonymiser(SECRET).pseudonym(t)) for t in seen_tags & sharing}
            restarted = await StoredCrowdCounts(registry, SECRET).due(now + 60)
            assert counts_of(restarted) == emitted
        finally:
            await registry.close()
