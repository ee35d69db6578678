"""Watch-tag privacy rules: consent scopes, zones, pseudonyms, and entities with no tag id (the counting from stored
readings is tested in tests/test_northbound_crowd_counts.py)."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_agent.northbound.entities import Entity, to_key_values, to_ngsi_ld, to_ngsi_v2
from cloud_agent.northbound.mapping import contexts_for
from cloud_agent.northbound.privacy import (
    HOUR,
    SCOPES,
    Pseudonymiser,
    TagShare,
    crowd_entity,
    share_scopes,
    tag_entity,
    tag_urn,
    zone_of,
    zone_urn,
)
from device_registry.lifecycle import WATCH_TAG, State
from device_registry.models import Device, Location
from tests.test_northbound_mapping import GATEWAY, URN, check_all, device

SECRET = b"deployment-secret-kakogawa-2026"
H0 = 1_795_305_600  # an hour start
LOC = Location(34.75, 134.84)


def tag(ident: str = "tag-0001", *, consent: bool | None = True, share: str | None = None) -> Device:
    labels = {"share": share} if share is not None else {}
    return dataclasses.replace(device("watch_tag", "watch-tag-v1", ident), labels=labels, consent=consent)


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
def test_share_scopes(share: str | None, consent: bool | None, state: State, scopes: set[str]) -> None:
    assert share_scopes(WATCH_TAG, consent, state, share) == frozenset(scopes)


def test_crowd_entity_is_an_hourly_count_of_a_zone() -> None:
    (crowd,) = entities = [crowd_entity("station-east", H0, 5, LOC)]
    check_all(entities)
    assert crowd.type == "CrowdFlowObserved"
    assert crowd.id == zone_urn("station-east", H0)
    assert crowd.attrs["peopleCount"].value == 5
    assert crowd.attrs["name"].value == "station-east"
    assert crowd.attrs["dateObserved"].value == "2026-11-22T00:00:00Z/2026-11-22T01:00:00Z"
    assert crowd.attrs["location"].value == {"type": "Point", "coordinates": [134.84, 34.75]}
    assert "location" not in crowd_entity("station-east", H0, 5).attrs  # a zone without a located gateway


def test_zone_is_the_gateways_label_else_its_id() -> None:
    assert zone_of(GATEWAY.id, GATEWAY) == "station-east"
    assert zone_of("gw-other", None) == "gw-other"
    plain = dataclasses.replace(GATEWAY, labels={})
    assert zone_of(GATEWAY.id, plain) == GATEWAY.id


def test_tag_entity_carries_only_what_its_scopes_chose() -> None:
    pseudonym = Pseudonymiser(SECRET).pseudonym("tag-0001")
    full = tag_entity(pseudonym, TagShare("station-east", H0 + 10, SCOPES, LOC, 80.0, H0 + 5))
    zone = tag_entity(pseudonym, TagShare("station-east", H0 + 10, frozenset({"zone"}), None, None))
    check_all([full])
    check_all([zone])
    assert full.id == zone.id == tag_urn(pseudonym) == f"urn:ngsi-ld:Device:tag-{pseudonym}"
    assert full.attrs["areaServed"].value == "station-east"
    assert full.attrs["location"].value == {"type": "Point", "coordinates": [134.84, 34.75]}
    assert full.attrs["batteryLevel"].value == pytest.approx(0.8)
    assert full.attrs["batteryLevel"].observed_at == H0 + 5
    assert set(zone.attrs) == {"controlledProperty", "deviceCategory", "areaServed", "dateLastValueReported"}
    assert "tag-0001" not in everything([full, zone])


def test_pseudonyms_depend_on_the_deployment_secret() -> None:
    a, b = Pseudonymiser(SECRET), Pseudonymiser(SECRET + b"x")
    assert a.pseudonym("tag-0001") == a.pseudonym("tag-0001")
    assert a.pseudonym("tag-0001") != b.pseudonym("tag-0001")
    assert a.pseudonym("tag-0001") != a.pseudonym("tag-0002")
    assert len(a.pseudonym("tag-0001")) == 20
    assert "deployment" not in repr(a)
    with pytest.raises(ValueError, match="at least"):
        Pseudonymiser(b"short")


def test_japanese_zone_names_make_ascii_urns() -> None:
    urn = zone_urn("加古川駅東口", H0)
    assert urn.isascii()
    assert URN.match(urn)
    assert urn.endswith(":20261122T00Z")
    check_all([crowd_entity("加古川駅東口", H0, 1)])


# --- property ------------------------------------------------------------------------------------------------------


ZONE_PART = re.compile(r"^[A-Za-z0-9\-._~%]+$")
"""Percent-encoded: RFC 3986 unreserved characters and escapes only (nothing a broker refuses in an id)."""


@given(zone=st.text(min_size=1, max_size=20), hour=st.integers(min_value=0, max_value=24 * 365 * 30))
def test_zone_urns_are_ascii_and_give_the_zone_and_hour_back(zone: str, hour: int) -> None:
    start = H0 + hour * HOUR
    urn = zone_urn(zone, start)
    prefix, part, stamp = urn.rsplit(":", 2)
    assert prefix == "urn:ngsi-ld:CrowdFlowObserved"
    assert ZONE_PART.match(part)
    assert unquote(part) == zone  # distinct zones, distinct ids
    assert datetime.strptime(stamp, "%Y%m%dT%HZ").replace(tzinfo=UTC).timestamp() == start
