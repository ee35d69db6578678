"""The context source's pieces without a registry: the q language, geo-queries, Accept and Link handling."""

from __future__ import annotations

from typing import Any

import pytest

from cloud_agent.northbound import geo, ngsi_ld_query
from cloud_agent.northbound.context_source_errors import NgsiLdError
from cloud_agent.northbound.context_source_request import check_link, negotiate, vocabulary

ENTITY: dict[str, Any] = {
    "id": "urn:ngsi-ld:FloodMonitoring:wl-0001",
    "type": "FloodMonitoring",
    "currentLevel": {"type": "Property", "value": 2.7, "observedAt": "2027-01-15T08:00:00Z", "unitCode": "MTR"},
    "stage": {"type": "Property", "value": 3, "reliability": {"type": "Property", "value": 0.9}},
    "name": {"type": "Property", "value": "Kako (north); bridge|east"},
    "tags": {"type": "Property", "value": ["river", "gauge"]},
    "address": {"type": "Property", "value": {"addressLocality": "Kakogawa", "postal": {"code": "675"}}},
    "seen": {"type": "Property", "value": {"@type": "DateTime", "@value": "2027-01-15T08:00:00Z"}},
    "online": {"type": "Property", "value": True},
    "refDevice": {"type": "Relationship", "object": "urn:ngsi-ld:Device:wl-0001"},
    "speed": [
        {"type": "Property", "value": 10, "datasetId": "urn:a"},
        {"type": "Property", "value": 30, "datasetId": "urn:b"},
    ],
}

MATCHES = [
    ("currentLevel>2.5;stage==3", True),
    ("currentLevel>2.5;stage==4", False),
    ("stage==4|currentLevel>2.5", True),
    ("stage==4;currentLevel>2.5|online==true", True),  # ';' binds tighter than '|'
    ("stage==4;(currentLevel>2.5|online==true)", False),
    ('name=="Kako (north); bridge|east"', True),
    ('name=="Kako \\"north\\""', False),
    ("name=~bridge\\|east", True),
    ("name=~(?i)^KAKO", True),
    ("name!~=^Kako", False),
    ('tags=="gauge"', True),
    ('tags!="gauge"', False),
    ('address[addressLocality]=="Kakogawa"', True),
    ('address[postal.code]=="675"', True),
    ('address[postal][code]=="676"', False),
    ("stage.reliability>=0.9", True),
    ("currentLevel.observedAt<2027-01-16", True),
    ('currentLevel.unitCode=="MTR"', True),
    ("seen>=2027-01-15T09:00:00+09:00", True),
    ("seen>2027-01-15T08:00:00Z", False),
    ("refDevice==urn:ngsi-ld:Device:wl-0001,urn:ngsi-ld:Device:wl-0002", True),
    ("speed>20", True),
    ("speed==10..20", True),
    ("speed<5", False),
    ('stage>"2"', False),  # a string never orders against a number
    ("online>0", False),
    ("online==1", False),
    ("!missing;stage", True),
    ("missing==1|!stage", False),
    ("stage==1..2,3", None),
]


@pytest.mark.parametrize(("q", "expected"), MATCHES, ids=[case[0] for case in MATCHES])
def test_q_matches(q: str, expected: bool | None) -> None:
    if expected is None:
        with pytest.raises(ngsi_ld_query.QueryError):
            ngsi_ld_query.parse(q)
        return
    assert ngsi_ld_query.matches(ngsi_ld_query.parse(q), ENTITY) is expected


BAD = [
    ("", "empty"),
    ("stage>", "expected a value"),
    ("stage==kako", "double quotes"),
    ("(stage==1", "')'"),
    ("stage==1)", "the end"),
    ("stage>1,2", "value list or range"),
    ("online>true", "true and false"),
    ('name=="open', "not closed"),
    ("name=~(", "does not compile"),
    ("a..b==1", "empty step"),
    ("stage==1;", "attribute name"),
    ("address[==1", "']'"),
    ("stage==1.." + "2" * 5, None),
]


@pytest.mark.parametrize(("q", "fragment"), BAD, ids=[case[0] or "empty" for case in BAD])
def test_q_errors_say_what_is_wrong(q: str, fragment: str | None) -> None:
    if fragment is None:
        ngsi_ld_query.parse(q)
        return
    with pytest.raises(ngsi_ld_query.QueryError) as refused:
        ngsi_ld_query.parse(q)
    assert fragment in str(refused.value)


def test_q_limits_and_iri_names() -> None:
    with pytest.raises(ngsi_ld_query.QueryError, match="at most"):
        ngsi_ld_query.parse("stage==1;" * 1000 + "stage==1")
    with pytest.raises(ngsi_ld_query.QueryError, match="longer than"):
        ngsi_ld_query.parse("name=~" + "a" * 300)
    short = vocabulary().short
    query = ngsi_ld_query.parse("https://smartdatamodels.org/dataModel.Environment/currentLevel>2", short)
    assert ngsi_ld_query.attribute_names(query) == {"currentLevel"}
    assert ngsi_ld_query.matches(query, ENTITY)


def test_geo_relations() -> None:
    square = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[4, 4], [6, 4], [6, 6], [4, 6], [4, 4]]]

    def at(lon: float, lat: float) -> dict[str, Any]:
        return {"location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}}

    within = geo.parse_geoquery("within", "Polygon", str(square))
    assert within is not None
    assert [within.matches(at(*p)) for p in [(1, 1), (5, 5), (4, 5), (10, 5), (11, 5)]] == [
        True,
        False,  # in the hole
        True,  # on the hole's edge
        True,  # on the outer edge
        False,
    ]
    assert not within.matches({"location": {"type": "GeoProperty", "value": {"type": "LineString"}}})
    assert not within.matches({})
    # one degree of latitude is about 111.2 km on the mean sphere
    assert geo.distance_m((135.0, 34.0), (135.0, 35.0)) == pytest.approx(111_195, rel=1e-4)
    near = geo.parse_geoquery("near;maxDistance==111200;minDistance==111000", "Point", "[135.0,34.0]")
    assert near is not None
    assert near.matches(at(135.0, 35.0))
    assert not near.matches(at(135.0, 34.5))
    keyed = geo.parse_geoquery("equals", "Point", "[135.0,34.0]", "observationSpace")
    assert keyed is not None
    assert keyed.matches({"observationSpace": {"type": "Point", "coordinates": [135.0, 34.0]}})
    for georel, geometry, coordinates in [
        ("near", "Point", "[1,2]"),
        ("near;maxDistance==-1", "Point", "[1,2]"),
        ("near;radius==5", "Point", "[1,2]"),
        ("within", "Point", "[1,2]"),
        ("within", "Polygon", "[[[0,0],[1,0],[0,0]]]"),
        ("within", "Polygon", "[[[0,0],[1,0],[1,1],[0,2]]]"),
        ("near;maxDistance==1", "Point", "[200,2]"),
        ("near;maxDistance==1", "Point", "not json"),
        ("sideways", "Point", "[1,2]"),
        ("within", "Circle", "[1,2]"),
    ]:
        with pytest.raises(geo.GeoError):
            geo.parse_geoquery(georel, geometry, coordinates)
    for georel, geometry in [("near;maxDistance==1", "Polygon"), ("within", "MultiPolygon"), ("overlaps", "Point")]:
        with pytest.raises(geo.GeoUnsupported):
            geo.parse_geoquery(georel, geometry, "[[[0,0],[1,0],[1,1],[0,0]]]")
    with pytest.raises(geo.GeoError, match="together"):
        geo.parse_geoquery("within", None, None)
    assert geo.parse_geoquery(None, None, None) is None


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        (None, "application/json"),
        ("application/json", "application/json"),
        ("application/ld+json", "application/ld+json"),
        ("*/*", "application/json"),
        ("application/*;q=0.8, application/ld+json", "application/ld+json"),
        ("text/html, application/ld+json;q=0.1", "application/ld+json"),
        ("text/html", None),
        ("application/ld+json;q=0", None),
        ("application/geo+json", None),
    ],
)
def test_accept(accept: str | None, media: str | None) -> None:
    if media is None:
        with pytest.raises(NgsiLdError) as refused:
            negotiate(accept)
        assert refused.value.status == 406
    else:
        assert negotiate(accept) == media


def test_link_header() -> None:
    rel = 'rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    assert check_link(None) is None
    assert check_link('<https://example.org/next>; rel="next"') is None
    assert check_link(f"<https://example.org/ctx.jsonld>; {rel}") == "https://example.org/ctx.jsonld"
    for bad in [f"<ctx.jsonld>; {rel}", f"<https://a/c>; {rel}, <https://b/c>; {rel}"]:
        with pytest.raises(NgsiLdError) as refused:
            check_link(bad)
        assert (refused.value.kind, refused.value.status) == ("BadRequestData", 400)


def test_openapi_documents_the_ngsi_ld_routes() -> None:
    from cloud_agent.api import create_app
    from cloud_agent.runtime import AgentRuntime

    app = create_app(AgentRuntime(registry=None, actions=None))  # type: ignore[arg-type]
    paths = app.openapi()["paths"]
    query = {parameter["name"] for parameter in paths["/ngsi-ld/v1/entities"]["get"]["parameters"]}
    assert {"type", "q", "georel", "limit", "offset", "count", "options"} <= query
    assert "/ngsi-ld/v1/entities/{entity_id}" in paths
