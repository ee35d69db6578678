"""Watch-tag privacy: hourly crowd counts with no tag id, consented pseudonyms only, counts conserved, retention."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_agent.northbound.entities import Entity, to_key_values, to_ngsi_ld, to_ngsi_v2
from cloud_agent.northbound.mapping import contexts_for
from cloud_agent.northbound.privacy import (
    HOUR,
    CrowdAggregator,
    Pseudonymiser,
    Sighting,
    consent_scopes,
    crowd_entities,
    hour_of,
    sightings_from,
    zone_of,
    zone_urn,
)
from device_registry.lifecycle import State
from device_registry.models import Device, Location, StoredReading
from kakehashi.wire import ClockQuality
from tests.test_northbound_mapping import GATEWAY, URN, check_all, device

SECRET = b"deployment-secret-kakogawa-2026"
H0 = 1_795_305_600  # an hour start
LOC = Location(34.75, 134.84)


def tag(ident: str = "tag-0001", *, consent: bool | None = True, share: str | None = None) -> Device:
    labels = {"share": share} if share is not None else {}
    return dataclasses.replace(device("watch_tag", "watch-tag-v1", ident, **labels), consent=consent)


def tag_reading(quantity: str, value: float, unit: str | None, at: float, ident: str = "tag-0001") -> StoredReading:
    return StoredReading(ident, quantity, value, unit, at, at + 1, ClockQuality.SYNCED, GATEWAY.id, 7)


def everything(entities: list[Entity]) -> str:
    """Every serialisation of the entities, as one text to search for leaks."""
    out = []
    for entity in entities:
        out.append(json.dumps(to_ngsi_ld(entity, contexts_for(entity.type)), ensure_ascii=False))
        out.append(json.dumps(to_ngsi_v2(entity), ensure_ascii=False))
        out.append(json.dumps(to_key_values(entity), ensure_ascii=False))
    return "\n".join(out)


@pytest.mark.parametrize(
    ("share", "consent", "state", "scopes"),
    [
        (None, True, State.ACTIVE, frozenset()),
        ("zone", True, State.ACTIVE, {"zone"}),
        ("location", True, State.ACTIVE, {"zone", "location"}),
        ("zone, battery", True, State.ACTIVE, {"zone", "battery"}),
        ("battery", True, State.ACTIVE, frozenset()),  # battery alone: nothing to attach it to
        ("location,telepathy", True, State.ACTIVE, {"zone", "location"}),
        ("location", False, State.ACTIVE, frozenset()),
        ("location", None, State.ACTIVE, frozenset()),
        ("location", True, State.SUSPENDED, frozenset()),
    ],
)
def test_consent_scopes(share: str | None, consent: bool | None, state: State, scopes: set[str]) -> None:
    t = dataclasses.replace(tag(share=share, consent=consent), state=state)
    assert consent_scopes(t) == frozenset(scopes)


def test_default_is_an_hourly_count_per_zone_without_any_tag_id() -> None:
    agg = CrowdAggregator(SECRET)
    for n in range(5):
        for t in sightings_from(
            tag(f"tag-000{n}"), [tag_reading("rssi", -70.0, "dBm", H0 + 60 * n, f"tag-000{n}")], GATEWAY
        ):
            agg.add(t)
    agg.add(Sighting("tag-0001", "station-east", H0 + 900))  # the same tag again: still one person
    entities = agg.flush(H0)
    check_all(entities)
    (crowd,) = entities
    assert crowd.type == "CrowdFlowObserved"
    assert crowd.id == zone_urn("station-east", H0)
    assert crowd.attrs["peopleCount"].value == 5
    assert crowd.attrs["dateObserved"].value == "2026-11-22T00:00:00Z/2026-11-22T01:00:00Z"
    assert crowd.attrs["location"].value == {"type": "Point", "coordinates": [134.84, 34.75]}
    text = everything(list(entities))
    assert "tag-000" not in text
    assert Pseudonymiser(SECRET).pseudonym("tag-0001") not in text


def test_zone_is_the_gateways_label_else_its_id() -> None:
    assert zone_of(GATEWAY.id, GATEWAY) == "station-east"
    assert zone_of("gw-other", None) == "gw-other"
    plain = dataclasses.replace(GATEWAY, labels={})
    assert zone_of(GATEWAY.id, plain) == GATEWAY.id


def test_consented_location_goes_out_pseudonymised() -> None:
    t = tag(share="location,battery")
    readings = [tag_reading("rssi", -70.0, "dBm", H0 + 10), tag_reading("battery", 80.0, "%", H0 + 10)]
    entities = crowd_entities(CrowdAggregator(SECRET), sightings_from(t, readings, GATEWAY), H0 + 3599)
    check_all(entities)
    by_type = {e.type: e for e in entities}
    dev = by_type["Device"]
    pseudonym = Pseudonymiser(SECRET).pseudonym("tag-0001")
    assert dev.id == f"urn:ngsi-ld:Device:tag-{pseudonym}"
    assert len(pseudonym) == 20
    assert dev.attrs["areaServed"].value == "station-east"
    assert dev.attrs["location"].value == {"type": "Point", "coordinates": [134.84, 34.75]}
    assert dev.attrs["batteryLevel"].value == pytest.approx(0.8)
    assert "tag-0001" not in everything(list(entities))
    assert by_type["CrowdFlowObserved"].attrs["peopleCount"].value == 1


def test_zone_scope_sends_no_location_or_battery() -> None:
    t = tag(share="zone")
    readings = [tag_reading("battery", 80.0, "%", H0 + 10)]
    entities = crowd_entities(CrowdAggregator(SECRET), sightings_from(t, readings, GATEWAY), H0)
    dev = next(e for e in entities if e.type == "Device")
    assert set(dev.attrs) == {"controlledProperty", "deviceCategory", "areaServed", "dateLastValueReported"}


def test_unconsented_tag_is_not_even_counted() -> None:
    assert sightings_from(tag(consent=False), [tag_reading("rssi", -70.0, "dBm", H0)], GATEWAY) == []


def test_pseudonyms_depend_on_the_deployment_secret() -> None:
    a, b = Pseudonymiser(SECRET), Pseudonymiser(SECRET + b"x")
    assert a.pseudonym("tag-0001") == a.pseudonym("tag-0001")
    assert a.pseudonym("tag-0001") != b.pseudonym("tag-0001")
    assert "deployment" not in repr(a)
    with pytest.raises(ValueError, match="at least"):
        Pseudonymiser(b"short")


def test_late_sighting_reissues_the_hour_with_the_full_count_and_old_ones_are_refused() -> None:
    agg = CrowdAggregator(SECRET, keep_hours=2)
    agg.add(Sighting("tag-a", "z", H0 + 5))
    (first,) = agg.flush(H0)
    assert first.attrs["peopleCount"].value == 1
    assert agg.flush(H0) == []  # nothing changed
    agg.add(Sighting("tag-b", "z", H0 + 7))
    (again,) = agg.flush(H0 + HOUR)
    assert again.id == first.id
    assert again.attrs["peopleCount"].value == 2
    agg.flush(H0 + 5 * HOUR)
    assert agg.counts() == {}
    assert agg.add(Sighting("tag-c", "z", H0 + 9)) is False
    assert agg.refused_late == 1


def test_japanese_zone_names_make_ascii_urns() -> None:
    urn = zone_urn("加古川駅東口", H0)
    assert urn.isascii()
    assert URN.match(urn)
    assert urn.endswith(":20261122T00Z")
    check_all(crowd_entities(CrowdAggregator(SECRET), [Sighting("tag-1", "加古川駅東口", H0)], H0))


# --- properties ----------------------------------------------------------------------------------------------------

# tag ids from letters that are not hex digits: no pseudonym or timestamp can contain one by chance
tag_ids = st.from_regex(r"tag-[g-z]{6,10}", fullmatch=True)
sightings = st.lists(
    st.builds(
        Sighting,
        tag_id=tag_ids,
        zone=st.sampled_from(["station-east", "school-gate", "加古川", "gw-kakogawa-0012"]),
        observed_at=st.floats(min_value=H0, max_value=H0 + 5 * HOUR - 0.001),
        scopes=st.sampled_from([frozenset(), frozenset({"zone"}), frozenset({"zone", "location", "battery"})]),
        location=st.sampled_from([None, LOC]),
        battery=st.sampled_from([None, 0.0, 55.5, 100.0]),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(items=sightings, flush_points=st.lists(st.integers(min_value=0, max_value=5), max_size=4))
def test_aggregator_never_emits_a_tag_id_and_conserves_counts(items: list[Sighting], flush_points: list[int]) -> None:
    agg = CrowdAggregator(SECRET)
    emitted: dict[str, int] = {}
    entities: list[Entity] = []

    def collect(out: list[Entity]) -> None:
        entities.extend(out)
        for entity in out:
            if entity.type == "CrowdFlowObserved":
                count = entity.attrs["peopleCount"].value
                assert isinstance(count, int)
                emitted[entity.id] = count

    parts = len(flush_points) + 1
    for i, point in enumerate(flush_points):  # some sightings, then an early flush, in any order
        for sighting in items[i::parts]:
            agg.add(sighting)
        collect(agg.flush(H0 + point * HOUR))
    for sighting in items:  # adding a sighting again changes no count
        agg.add(sighting)
    collect(agg.flush(H0 + 5 * HOUR))
    check_all(list({e.id: e for e in entities}.values()))
    text = everything(list(entities))
    for sighting in items:
        assert sighting.tag_id not in text
    expected: dict[str, set[str]] = defaultdict(set)
    for sighting in items:
        expected[zone_urn(sighting.zone, hour_of(sighting.observed_at))].add(sighting.tag_id)
    assert emitted == {key: len(tags) for key, tags in expected.items()}
    assert agg.refused_late == 0
    shared_tags = {s.tag_id for s in items if s.scopes}
    devices = {e.id for e in entities if e.type == "Device"}
    assert devices == {f"urn:ngsi-ld:Device:tag-{Pseudonymiser(SECRET).pseudonym(t)}" for t in shared_tags}


def test_min_count_holds_back_small_zone_hours_until_enough_tags() -> None:
    agg = CrowdAggregator(SECRET, min_count=3)
    agg.add(Sighting("tag-a", "quiet-park", H0 + 1))
    agg.add(Sighting("tag-b", "quiet-park", H0 + 2))
    assert agg.flush(H0) == []
    agg.add(Sighting("tag-c", "quiet-park", H0 + 3))
    (crowd,) = agg.flush(H0)
    assert crowd.attrs["peopleCount"].value == 3
    with pytest.raises(ValueError, match="min_count"):
        CrowdAggregator(SECRET, min_count=0)
