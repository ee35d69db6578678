"""The context source over larger and random fleets (SQLite: the database does not matter here).

* Paging a 250-device fleet with ``limit``/``offset`` and the ``Link rel="next"`` header covers every entity exactly
  once; ``count=true`` counts them all.
* A type filter narrows the registry walk: only devices whose family can produce the type have readings fetched.
* Property: for a random set of devices and readings and random q filters (and near-queries), the API answers
  exactly the entities a brute-force evaluation of the same filter over the generated data selects (each example's
  entities are asked for by id, so that one agent serves every example without walking the earlier ones).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cloud_agent.api import create_app
from cloud_agent.northbound.context_source_entities import REGISTRY_PAGE
from cloud_agent.runtime import AgentRuntime
from device_registry import ApiRole, Registry
from device_registry.models import Location
from kakehashi import wire
from tests.postgres import FakeClock, organisation, provisioned_gateway, reading
from tests.test_api_helpers import BASE_URL, RecorderActions

ENTITIES = "/ngsi-ld/v1/entities"


@dataclass
class Agent:
    registry: Registry
    client: httpx.AsyncClient
    headers: dict[str, str]

    async def get(self, params: dict[str, Any]) -> httpx.Response:
        return await self.client.get(ENTITIES, params=params, headers=self.headers)


async def open_agent(path: Path) -> tuple[Agent, Callable[[], Any]]:
    registry = await Registry.open(f"sqlite+aiosqlite:///{path / 'registry.db'}", clock=FakeClock())
    token, _ = await registry.create_api_token("city-os", ApiRole.CITY_OS, actor="bootstrap")
    app = create_app(AgentRuntime(registry=registry, actions=RecorderActions()))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)

    async def close() -> None:
        await client.aclose()
        await registry.close()

    return Agent(registry, client, {"Authorization": f"Bearer {token}"}), close


@pytest.fixture(name="agent")
async def agent_fixture(tmp_path: Path) -> AsyncIterator[Agent]:
    agent, close = await open_agent(tmp_path)
    try:
        yield agent
    finally:
        await close()


async def test_paging_a_250_device_fleet_covers_every_entity_once(agent: Agent) -> None:
    clock = FakeClock()
    gateway = await provisioned_gateway(agent.registry, clock)
    org = await organisation(agent.registry)
    for n in range(250):
        await agent.registry.create_device(f"th-{n:04d}", org, "thermometer", actor="admin")
    for device in ("wl-0001", "wl-0002"):
        where = Location(34.75, 134.84)
        await agent.registry.create_device(
            device, org, "water_level", actor="admin", gateway_id=gateway, location=where
        )
    batch = [reading("wl-0001", 1.5), reading("wl-0002", 2.5)]
    await agent.registry.ingest_readings(gateway, [(1, 1.8e9, batch)])
    expected = 253  # the gateway, 250 thermometers and 2 gauges: one Device entity each

    seen: list[str] = []
    params: dict[str, Any] | None = {"type": "Device", "limit": 100}
    url = ENTITIES
    pages = 0
    while params is not None or url != ENTITIES:
        response = await agent.client.get(url, params=params, headers=agent.headers)
        assert response.status_code == 200, response.text
        seen.extend(entity["id"] for entity in response.json())
        pages += 1
        following = [part for part in response.headers["link"].split(", ") if 'rel="next"' in part]
        if not following:
            break
        url, params = following[0][following[0].index("<") + 1 : following[0].index(">")], None
    assert pages == 3
    assert len(seen) == len(set(seen)) == expected
    assert seen[0] == "urn:ngsi-ld:Device:gw-0001"

    counted = await agent.get({"type": "Device", "limit": 0, "count": "true"})
    assert (counted.json(), counted.headers["NGSILD-Results-Count"]) == ([], str(expected))
    last = await agent.get({"type": "Device", "limit": 100, "offset": 200, "count": "true"})
    assert [entity["id"] for entity in last.json()] == seen[200:]
    assert last.headers["NGSILD-Results-Count"] == str(expected)
    assert 'rel="next"' not in last.headers["link"]

    calls: list[list[str]] = []
    snapshots = agent.registry.snapshots

    async def counting(entity_ids: Sequence[str]) -> Any:
        calls.append(list(entity_ids))
        return await snapshots(entity_ids)

    agent.registry.snapshots = counting  # type: ignore[method-assign]
    gauges = await agent.get({"type": "WaterObserved", "count": "true"})
    assert [entity["id"] for entity in gauges.json()] == [
        "urn:ngsi-ld:WaterObserved:wl-0001",
        "urn:ngsi-ld:WaterObserved:wl-0002",
    ]
    assert calls == [["wl-0001", "wl-0002"]]  # thermometers and the gateway were never read
    calls.clear()
    first = await agent.get({"type": "Device", "limit": 10})
    assert len(first.json()) == 10
    # stops at the listing page holding the entity one past the page when no count is asked for: the gateway's
    # page, then one page of devices read in one batch (never the rest of the fleet)
    assert calls == [["gw-0001"], [f"th-{n:04d}" for n in range(REGISTRY_PAGE)]]


# ----------------------------------------------------------------------------------------------------------------
# Property: the API's answer equals a brute-force evaluation

KINDS = ("thermometer", "hygrometer")
QUANTITIES = ("temperature", "humidity")
LON0, LAT0 = 134.80, 34.70


@dataclass(frozen=True)
class Sample:
    kind: str
    values: dict[str, int]
    position: tuple[int, int]
    """Offsets from (LON0, LAT0) in thousandths of a degree."""

    @property
    def where(self) -> tuple[float, float]:
        return LON0 + self.position[0] / 1000, LAT0 + self.position[1] / 1000


samples = st.builds(
    Sample,
    kind=st.sampled_from(KINDS),
    values=st.dictionaries(st.sampled_from(QUANTITIES), st.integers(-5, 5), min_size=1),
    position=st.tuples(st.integers(0, 100), st.integers(0, 100)),
)

Term = tuple[str, ...]
numbers = st.integers(-5, 5)
terms = st.one_of(
    st.tuples(st.just("cmp"), st.sampled_from(("==", "!=", ">", ">=", "<", "<=")), numbers.map(str)),
    st.tuples(st.just("range"), numbers.map(str), numbers.map(str)),
    st.tuples(st.just("list"), numbers.map(str), numbers.map(str)),
    st.tuples(st.just("quantity"), st.sampled_from(QUANTITIES)),
    st.tuples(st.just("kind"), st.sampled_from(KINDS)),
    st.tuples(st.just("exists"), st.sampled_from(("numValue", "textValue", "location"))),
)
queries = st.recursive(
    terms,
    lambda inner: st.tuples(st.sampled_from((";", "|")), inner, inner),
    max_leaves=4,
)


def render(query: Any) -> str:
    if query[0] in (";", "|"):
        return f"({render(query[1])}{query[0]}{render(query[2])})"
    kind = query[0]
    if kind == "cmp":
        return f"numValue{query[1]}{query[2]}"
    if kind == "range":
        return f"numValue=={query[1]}..{query[2]}"
    if kind == "list":
        return f"numValue=={query[1]},{query[2]}"
    if kind == "quantity":
        return f'controlledProperty=="{query[1]}"'
    if kind == "kind":
        return f'deviceType=="{query[1]}"'
    return query[1] if kind == "exists" else ""


def holds(query: Any, kind: str, quantity: str, value: int) -> bool:
    """The brute-force truth of ``query`` for one DeviceMeasurement (a numeric reading with a location)."""
    if query[0] == ";":
        return holds(query[1], kind, quantity, value) and holds(query[2], kind, quantity, value)
    if query[0] == "|":
        return holds(query[1], kind, quantity, value) or holds(query[2], kind, quantity, value)
    if query[0] == "cmp":
        x = int(query[2])
        return {
            "==": value == x,
            "!=": value != x,
            ">": value > x,
            ">=": value >= x,
            "<": value < x,
            "<=": value <= x,
        }[query[1]]
    if query[0] == "range":
        return int(query[1]) <= value <= int(query[2])
    if query[0] == "list":
        return value in (int(query[1]), int(query[2]))
    if query[0] == "quantity":
        return bool(quantity == query[1])
    if query[0] == "kind":
        return bool(kind == query[1])
    return query[1] in ("numValue", "location")


def cosine_distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance by the spherical law of cosines (an independent check of the haversine)."""
    lon1, lat1, lon2, lat2 = map(math.radians, (*a, *b))
    cosine = math.sin(lat1) * math.sin(lat2) + math.cos(lat1) * math.cos(lat2) * math.cos(lon2 - lon1)
    return 6_371_008.8 * math.acos(max(-1.0, min(1.0, cosine)))


class Harness:
    """One agent for all examples; each example registers its devices under a fresh prefix."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.examples = itertools.count()

    async def check(self, fleet: list[Sample], filters: list[Any], near: tuple[int, int, int]) -> None:
        registry = self.agent.registry
        prefix = f"e{next(self.examples)}"
        gateway = await provisioned_gateway(registry, FakeClock(), f"gw-{prefix}")
        batch: list[wire.Reading] = []
        for n, sample in enumerate(fleet):
            device = f"{prefix}-{n}"
            lon, lat = sample.where
            await registry.create_device(
                device, "kakogawa", sample.kind, actor="t", gateway_id=gateway, location=Location(lat, lon)
            )
            batch.extend(reading(device, float(v), quantity=q) for q, v in sample.values.items())
        await registry.ingest_readings(gateway, [(1, 1.8e9, batch)])
        # this example's entities by id (a scan would also walk the devices of every earlier example)
        ids = [f"urn:ngsi-ld:DeviceMeasurement:{prefix}-{n}:{q}" for n in range(len(fleet)) for q in QUANTITIES]
        mine = {"type": "DeviceMeasurement", "id": ",".join(ids), "limit": 1000}
        for query in filters:
            expected = {
                f"urn:ngsi-ld:DeviceMeasurement:{prefix}-{n}:{q}"
                for n, sample in enumerate(fleet)
                for q, v in sample.values.items()
                if holds(query, sample.kind, q, v)
            }
            response = await self.agent.get({**mine, "q": render(query)})
            assert response.status_code == 200, response.text
            assert {entity["id"] for entity in response.json()} == expected, render(query)
        centre = (LON0 + near[0] / 1000, LAT0 + near[1] / 1000)
        distances = {n: cosine_distance_m(centre, sample.where) for n, sample in enumerate(fleet)}
        assume(all(abs(d - near[2]) > 0.01 for d in distances.values()))
        geo = {"georel": f"near;maxDistance=={near[2]}", "geometry": "Point", "coordinates": json.dumps(centre)}
        response = await self.agent.get({**mine, **geo})
        expected = {
            f"urn:ngsi-ld:DeviceMeasurement:{prefix}-{n}:{q}"
            for n, sample in enumerate(fleet)
            for q in sample.values
            if distances[n] <= near[2]
        }
        assert {entity["id"] for entity in response.json()} == expected


def test_q_and_near_answers_equal_brute_force(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    agent, close = loop.run_until_complete(open_agent(tmp_path))
    harness = Harness(agent)
    try:

        @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            fleet=st.lists(samples, min_size=1, max_size=6),
            filters=st.lists(queries, min_size=1, max_size=5),
            near=st.tuples(st.integers(0, 100), st.integers(0, 100), st.integers(0, 12_000)),
        )
        def check(fleet: list[Sample], filters: list[Any], near: tuple[int, int, int]) -> None:
            loop.run_until_complete(harness.check(fleet, filters, near))

        check()
    finally:
        loop.run_until_complete(close())
        loop.close()
