"""The agent's read-only NGSI-LD context source (/ngsi-ld/v1) over a real registry, on SQLite and PostgreSQL.

Answers are checked against the shapes of ETSI GS CIM 009: normalized entities, the JSON-LD context Link header or
``@context`` in an ``application/ld+json`` body, ProblemDetails with the NGSI-LD error types and statuses, the
``NGSILD-Results-Count`` header; q-language and geo filters; roles; watch tags never appear.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from cloud_agent.northbound.context_source_entities import ENTITY_TYPES
from cloud_agent.northbound.mapping import CORE_CONTEXT, contexts_for
from device_registry import ApiRole, Registry
from device_registry.models import Location
from kakehashi import wire
from tests.postgres import FakeClock, organisation, reading, watch_tag
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture
from tests.test_api_helpers import Api
from tests.test_api_helpers import actions_fixture as actions_fixture
from tests.test_api_helpers import api_fixture as api_fixture

BASE = "/ngsi-ld/v1"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
CITY = ApiRole.CITY_OS
KAKO = (134.8400, 34.7560)
"""(longitude, latitude) of wl-0001 on the Kako river."""
AT = 1.8e9


async def build_city(registry: Registry, clock: FakeClock) -> None:
    """A gateway with two water-level gauges, an energy meter, a thermometer and a consented watch tag."""
    org = await organisation(registry)
    await registry.create_gateway("gw-0001", org, actor="admin", location=Location(34.7500, 134.8300))
    await registry.record_certificate("gw-0001", "a1", clock.now.replace(year=2030), actor="pki")

    async def device(device_id: str, kind: str, where: tuple[float, float] | None, profile: str | None = None) -> None:
        location = Location(where[1], where[0]) if where else None
        await registry.create_device(
            device_id, org, kind, actor="admin", gateway_id="gw-0001", location=location, profile=profile
        )

    await device("wl-0001", "water_level", KAKO)
    await device("wl-0002", "water_level", (134.9000, 34.8000))
    await device("em-0001", "energy_meter", (134.8310, 34.7510), profile="sdm120")
    await device("th-0001", "thermometer", None)
    await watch_tag(registry, "tag-0001", consent=True)
    await registry.bind_device("tag-0001", "gw-0001", actor="admin", reason="test")
    readings = [
        reading("wl-0001", 2.7, at=AT),
        reading("wl-0002", 0.4, at=AT + 60),
        reading("th-0001", 21.5, quantity="temperature", at=AT),
        reading("tag-0001", -67.0, quantity="rssi", at=AT),
    ]
    readings.append(wire.Reading("em-0001", "voltage", 101.5, "V", AT, wire.ClockQuality.SYNCED))
    result = await registry.ingest_readings("gw-0001", [(1, AT + 1, readings)])
    assert result.stored >= 4, result


@pytest.fixture(name="city")
async def city_fixture(api: Api) -> Api:
    await build_city(api.registry, api.clock)
    return api


def problem_of(response: httpx.Response, status: int, kind: str | None) -> dict[str, Any]:
    """The answer is ProblemDetails with ``status`` and the NGSI-LD error type ``kind`` (None: about:blank)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"type", "title", "status", "detail"}, body
    assert body["type"] == (ERRORS + kind if kind else "about:blank"), body
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


def ids_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [entity["id"] for entity in response.json()]


async def test_retrieve_normalized_with_context_link(city: Api) -> None:
    response = await city.call("GET", f"{BASE}/entities/urn:ngsi-ld:WaterObserved:wl-0001", CITY)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    entity = response.json()
    assert "@context" not in entity
    assert (entity["id"], entity["type"]) == ("urn:ngsi-ld:WaterObserved:wl-0001", "WaterObserved")
    assert entity["height"] == {
        "type": "Property",
        "value": 2.7,
        "observedAt": "2027-01-15T08:00:00Z",
        "unitCode": "MTR",
    }
    assert entity["location"] == {"type": "GeoProperty", "value": {"type": "Point", "coordinates": list(KAKO)}}
    assert entity["refDevice"] == {"type": "Relationship", "object": "urn:ngsi-ld:Device:wl-0001"}
    link = response.headers["link"]
    assert 'rel="http://www.w3.org/ns/json-ld#context"' in link
    assert 'type="application/ld+json"' in link
    url = link[link.index("<") + 1 : link.index(">")]
    context = await city.client.get(url)  # public: JSON-LD processors fetch it without a token
    assert context.status_code == 200
    assert context.headers["content-type"] == "application/ld+json"
    assert context.json()["@context"][-1] == CORE_CONTEXT
    assert set(contexts_for("WaterObserved")) <= set(context.json()["@context"])


async def test_ld_json_carries_context_in_body(city: Api) -> None:
    headers = {"Accept": "application/ld+json"}
    response = await city.call("GET", f"{BASE}/entities/urn:ngsi-ld:Device:wl-0001", CITY, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/ld+json"
    assert "link" not in response.headers
    assert response.json()["@context"] == contexts_for("Device")
    listed = await city.call("GET", f"{BASE}/entities", CITY, params={"type": "Device"}, headers=headers)
    assert all(entity["@context"] == contexts_for("Device") for entity in listed.json())
    preferred = {"Accept": "application/json;q=0.5, application/ld+json;q=0.9"}
    chosen = await city.call("GET", f"{BASE}/entities/urn:ngsi-ld:Device:wl-0001", CITY, headers=preferred)
    assert chosen.headers["content-type"] == "application/ld+json"
    anything = await city.call("GET", f"{BASE}/entities/urn:ngsi-ld:Device:wl-0001", CITY, headers={"Accept": "*/*"})
    assert anything.headers["content-type"] == "application/json"


async def test_key_values_and_attrs_projection(city: Api) -> None:
    path = f"{BASE}/entities/urn:ngsi-ld:FloodMonitoring:wl-0001"
    simplified = (await city.call("GET", path, CITY, params={"options": "keyValues"})).json()
    assert (simplified["currentLevel"], simplified["stage"], simplified["floodLevelStatus"]) == (2.7, 3, "caution")
    assert simplified["location"] == {"type": "Point", "coordinates": list(KAKO)}
    assert (await city.call("GET", path, CITY, params={"format": "simplified"})).json() == simplified
    projected = (await city.call("GET", path, CITY, params={"attrs": "currentLevel,stage"})).json()
    assert set(projected) == {"id", "type", "currentLevel", "stage"}
    assert projected["stage"]["type"] == "Property"
    listed = await city.call("GET", f"{BASE}/entities", CITY, params={"attrs": "height", "options": "keyValues"})
    assert sorted(ids_of(listed)) == ["urn:ngsi-ld:WaterObserved:wl-0001", "urn:ngsi-ld:WaterObserved:wl-0002"]
    assert all(set(entity) == {"id", "type", "height"} for entity in listed.json())
    missing = await city.call("GET", path, CITY, params={"attrs": "height"})
    problem_of(missing, 404, "ResourceNotFound")


Q_CASES = [
    ("currentLevel>2", ["wl-0001"]),
    ("currentLevel>2.7", []),
    ("currentLevel>=2.7", ["wl-0001"]),
    ("stage==0,3", ["wl-0001", "wl-0002"]),
    ("currentLevel==0..1", ["wl-0002"]),
    ("currentLevel!=0.4", ["wl-0001"]),
    ('floodLevelStatus=="caution"', ["wl-0001"]),
    ("floodLevelStatus=~^(norm|caut)", ["wl-0001", "wl-0002"]),
    ('floodLevelStatus!~="caution"', ["wl-0002"]),
    ("(stage==3|stage==0);currentLevel<1", ["wl-0002"]),
    ("stage==3|currentLevel<1", ["wl-0001", "wl-0002"]),
    ("refDevice==urn:ngsi-ld:Device:wl-0001", ["wl-0001"]),
    ("currentLevel.observedAt>2027-01-15T08:00:30Z", ["wl-0002"]),
    ("observationDateTime<2027-01-15T08:00:30Z", ["wl-0001"]),
    ('currentLevel.unitCode=="MTR";stage>1', ["wl-0001"]),
    ("https://smartdatamodels.org/dataModel.Environment/currentLevel<1", ["wl-0002"]),
    ("!currentLevel", []),
    ("stationID", ["wl-0001", "wl-0002"]),
    ('stationID=="3"|stage>"2"', []),
]


async def test_q_language(city: Api) -> None:
    for q, expected in Q_CASES:
        response = await city.call("GET", f"{BASE}/entities", CITY, params={"type": "FloodMonitoring", "q": q})
        assert sorted(ids_of(response)) == [f"urn:ngsi-ld:FloodMonitoring:{device}" for device in expected], q


async def test_type_iri_id_list_and_id_pattern(city: Api) -> None:
    iri = "https://smartdatamodels.org/dataModel.Environment/FloodMonitoring"
    assert len(ids_of(await city.call("GET", f"{BASE}/entities", CITY, params={"type": iri}))) == 2
    wanted = "urn:ngsi-ld:Device:wl-0002,urn:ngsi-ld:ACMeasurement:em-0001,urn:ngsi-ld:Device:nope"
    by_id = await city.call("GET", f"{BASE}/entities", CITY, params={"id": wanted})
    assert ids_of(by_id) == ["urn:ngsi-ld:Device:wl-0002", "urn:ngsi-ld:ACMeasurement:em-0001"]
    pattern = await city.call("GET", f"{BASE}/entities", CITY, params={"type": "Device", "idPattern": "wl-000[12]$"})
    assert ids_of(pattern) == ["urn:ngsi-ld:Device:wl-0001", "urn:ngsi-ld:Device:wl-0002"]
    measurement = await city.call("GET", f"{BASE}/entities", CITY, params={"type": "DeviceMeasurement"})
    assert ids_of(measurement) == ["urn:ngsi-ld:DeviceMeasurement:th-0001:temperature"]
    # th-0001 has no location of its own: the mapping gives it its gateway's
    assert measurement.json()[0]["location"]["value"]["coordinates"] == [134.83, 34.75]


async def test_geo_near_and_within(city: Api) -> None:
    def near(metres: int, point: tuple[float, float] = KAKO) -> dict[str, str]:
        return {
            "type": "Device",
            "georel": f"near;maxDistance=={metres}",
            "geometry": "Point",
            "coordinates": json.dumps(list(point)),
        }

    # from wl-0001: em-0001 993 m, the gateway and th-0001 (placed at its gateway) 1131 m, wl-0002 7346 m
    assert ids_of(await city.call("GET", f"{BASE}/entities", CITY, params=near(10))) == ["urn:ngsi-ld:Device:wl-0001"]
    within_1000 = ids_of(await city.call("GET", f"{BASE}/entities", CITY, params=near(1000)))
    assert within_1000 == ["urn:ngsi-ld:Device:em-0001", "urn:ngsi-ld:Device:wl-0001"]
    within_1200 = ids_of(await city.call("GET", f"{BASE}/entities", CITY, params=near(1200)))
    assert within_1200 == [f"urn:ngsi-ld:Device:{d}" for d in ("gw-0001", "em-0001", "th-0001", "wl-0001")]
    assert len(ids_of(await city.call("GET", f"{BASE}/entities", CITY, params=near(10_000)))) == 5
    far = {**near(0), "georel": "near;minDistance==5000"}
    assert ids_of(await city.call("GET", f"{BASE}/entities", CITY, params=far)) == ["urn:ngsi-ld:Device:wl-0002"]
    box = [[[134.82, 34.74], [134.85, 34.74], [134.85, 34.76], [134.82, 34.76], [134.82, 34.74]]]
    params = {"type": "WaterObserved", "georel": "within", "geometry": "Polygon", "coordinates": json.dumps(box)}
    assert ids_of(await city.call("GET", f"{BASE}/entities", CITY, params=params)) == [
        "urn:ngsi-ld:WaterObserved:wl-0001"
    ]
    outside = {**params, "georel": "disjoint"}
    assert ids_of(await city.call("GET", f"{BASE}/entities", CITY, params=outside)) == [
        "urn:ngsi-ld:WaterObserved:wl-0002"
    ]
    point = {**params, "georel": "intersects", "geometry": "Point", "coordinates": json.dumps(list(KAKO))}
    assert ids_of(await city.call("GET", f"{BASE}/entities", CITY, params=point)) == [
        "urn:ngsi-ld:WaterObserved:wl-0001"
    ]


async def test_count_header(city: Api) -> None:
    response = await city.call("GET", f"{BASE}/entities", CITY, params={"type": "Device", "count": "true", "limit": 0})
    assert response.status_code == 200, response.text
    assert response.json() == []
    assert response.headers["NGSILD-Results-Count"] == "5"  # gateway, 2 gauges, meter, thermometer: not the tag
    page = await city.call("GET", f"{BASE}/entities", CITY, params={"type": "Device", "count": "true", "limit": 2})
    assert (len(page.json()), page.headers["NGSILD-Results-Count"]) == (2, "5")
    assert "NGSILD-Results-Count" not in (await city.call("GET", f"{BASE}/entities?type=Device", CITY)).headers


ERROR_CASES = [
    ("/entities/urn:ngsi-ld:Device:nope", {}, 404, "ResourceNotFound"),
    ("/entities/urn:ngsi-ld:Device:tag-0001", {}, 404, "ResourceNotFound"),
    ("/entities/not-a-uri", {}, 400, "BadRequestData"),
    ("/entities", {}, 400, "BadRequestData"),
    ("/entities?type=Device&q=currentLevel>", {}, 400, "BadRequestData"),
    ("/entities?type=Device&q=name==kako", {}, 400, "BadRequestData"),
    ("/entities?type=Device&q=(stage==1", {}, 400, "BadRequestData"),
    ("/entities?type=Device&limit=1001", {}, 400, "BadRequestData"),
    ("/entities?type=Device&limit=-1", {}, 400, "BadRequestData"),
    ("/entities?type=Device&limit=0", {}, 400, "BadRequestData"),
    ("/entities?type=Device&offset=x", {}, 400, "BadRequestData"),
    ("/entities?type=Device&idPattern=(", {}, 400, "BadRequestData"),
    ("/entities?type=Device&georel=near&geometry=Point&coordinates=[134.8,34.7]", {}, 400, "BadRequestData"),
    ("/entities?type=Device&georel=near;maxDistance==10&geometry=Point", {}, 400, "BadRequestData"),
    ("/entities?type=Device&georel=within&geometry=Polygon&coordinates=[[1,2]]", {}, 400, "BadRequestData"),
    ("/entities?type=Device&georel=within&geometry=MultiPolygon&coordinates=[]", {}, 422, "OperationNotSupported"),
    ("/entities?type=Device&georel=contains&geometry=Point&coordinates=[1,2]", {}, 422, "OperationNotSupported"),
    ("/entities?type=Device&scopeQ=/kakogawa", {}, 422, "OperationNotSupported"),
    ("/entities?type=Device&options=sysAttrs", {}, 422, "OperationNotSupported"),
    ("/entities?type=Device&options=fancy", {}, 400, "BadRequestData"),
    ("/subscriptions", {}, 422, "OperationNotSupported"),
    ("/entities?type=Device", {"Accept": "text/html"}, 406, None),
    ("/entities?type=Device", {"Accept": "application/json;q=0"}, 406, None),
    (
        "/entities?type=Device",
        {
            "Link": '<https://a.example/c.jsonld>; rel="http://www.w3.org/ns/json-ld#context", '
            '<https://b.example/c.jsonld>; rel="http://www.w3.org/ns/json-ld#context"'
        },
        400,
        "BadRequestData",
    ),
]


async def test_errors_are_problem_details(city: Api) -> None:
    for path, headers, status, kind in ERROR_CASES:
        try:
            problem_of(await city.call("GET", BASE + path, CITY, headers=headers), status, kind)
        except AssertionError as exc:
            raise AssertionError(f"{path} {headers}: {exc}") from None


async def test_write_operations_refused(city: Api) -> None:
    for method, path in [("POST", "/entities"), ("PATCH", "/entities/urn:ngsi-ld:Device:wl-0001/attrs")]:
        problem_of(await city.call(method, BASE + path, CITY, json={}), 422, "OperationNotSupported")
    problem_of(
        await city.call("DELETE", f"{BASE}/entities/urn:ngsi-ld:Device:wl-0001", CITY), 422, "OperationNotSupported"
    )
    assert (await city.call("GET", f"{BASE}/entities/urn:ngsi-ld:Device:wl-0001", CITY)).status_code == 200


async def test_roles(city: Api) -> None:
    path = f"{BASE}/entities?type=Device"
    for role in ApiRole:
        assert (await city.call("GET", path, role)).status_code == 200, role
    anonymous = await city.client.get(path)
    problem_of(anonymous, 401, None)
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    forged = await city.client.get(path, headers={"Authorization": "Bearer kh_forged"})
    problem_of(forged, 401, None)
    problem_of(await city.client.get(f"{BASE}/entities/urn:ngsi-ld:Device:wl-0001"), 401, None)


async def test_watch_tags_never_appear(city: Api) -> None:
    read: list[str] = []
    snapshots = city.registry.snapshots

    async def recording(entity_ids: Sequence[str]) -> Any:
        read.extend(entity_ids)
        return await snapshots(entity_ids)

    city.registry.snapshots = recording  # type: ignore[method-assign]
    every = await city.call(
        "GET", f"{BASE}/entities", CITY, params={"type": ",".join(sorted(ENTITY_TYPES)), "limit": 1000}
    )
    assert every.status_code == 200
    assert "tag-0001" not in every.text
    assert "-67" not in every.text
    by_pattern = await city.call("GET", f"{BASE}/entities", CITY, params={"idPattern": ".*", "limit": 1000})
    assert "tag-0001" not in by_pattern.text
    assert sorted(ids_of(by_pattern)) == sorted(ids_of(every))
    for entity_type in sorted(ENTITY_TYPES):
        quoted = quote(f"urn:ngsi-ld:{entity_type}:tag-0001", safe=":")
        problem_of(await city.call("GET", f"{BASE}/entities/{quoted}", CITY), 404, "ResourceNotFound")
    assert read
    assert "tag-0001" not in read  # not even read from the registry
