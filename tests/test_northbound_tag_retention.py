"""Retention at the City OS end: the broker clients' delete (not-found is success) against the stand-ins over real
HTTP, and :class:`TagRetention` deleting a consented tag's pseudonymised Device when consent is withdrawn, the zone
scope removed, the tag suspended or not seen for the retention period -- retried through an outage, on SQLite and
PostgreSQL, NGSI-LD and NGSI v2."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from cloud_agent.config import NorthboundSection
from cloud_agent.northbound.crowd_counts import StoredCrowdCounts
from cloud_agent.northbound.entities import Entity, to_ngsi_ld, to_ngsi_v2
from cloud_agent.northbound.mapping import CONTEXTS, contexts_for
from cloud_agent.northbound.ngsi_clients import NgsiLdClient, NgsiV2Client, PushError
from cloud_agent.northbound.privacy import HOUR, Pseudonymiser, tag_urn
from cloud_agent.northbound.tag_retention import TagRetention
from device_registry import Registry, State
from hw.cityos import NgsiLdBroker, OrionBroker, StandInServer
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture
from tests.test_northbound_crowd_counts import H0, SECRET, city, seen, set_label, tag
from tests.test_northbound_push import wait_until

pytestmark = pytest.mark.timeout(60)
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
PSEUDONYMS = Pseudonymiser(SECRET)


def urn(tag_id: str) -> str:
    return tag_urn(PSEUDONYMS.pseudonym(tag_id))


def ld_device(n: int) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:Device:tag-{n:020x}", "type": "Device", "@context": [CORE]}


# --- the clients' delete ---------------------------------------------------------------------------------------------


async def test_ld_client_delete_counts_not_found_as_deleted() -> None:
    broker = NgsiLdBroker()
    async with StandInServer(broker.app()) as server, httpx.AsyncClient(timeout=2) as http:
        client = NgsiLdClient(http, server.url, tenant="kakogawa")
        assert await client.push([ld_device(1), ld_device(2), ld_device(3)]) == {}
        gone = [(ld_device(n)["id"], "Device") for n in (1, 2, 9)]
        assert await client.delete(gone) == {}  # 9 never existed: 207 ResourceNotFound, counted as deleted
        assert set(broker.entities("kakogawa")) == {ld_device(3)["id"]}
        assert await client.delete([(ld_device(1)["id"], "Device")]) == {}  # again: harmless
        broker.faults.entity_errors[ld_device(3)["id"]] = "InternalError"
        failures = await client.delete([(ld_device(3)["id"], "Device")])
        assert failures[ld_device(3)["id"]].transient
        broker.faults.clear()
        broker.faults.answer(500, times=1)
        with pytest.raises(PushError) as raised:
            await client.delete([(ld_device(3)["id"], "Device")])
        assert raised.value.transient
        assert await NgsiLdClient(http, server.url, tenant="nobody").delete([(ld_device(3)["id"], "Device")]) == {}


async def test_v2_client_deletes_a_batch_with_missing_entities_one_by_one() -> None:
    broker = OrionBroker()
    scope = {"service": "kakogawa", "service_path": "/tags"}
    async with StandInServer(broker.app()) as server, httpx.AsyncClient(timeout=2) as http:
        client = NgsiV2Client(http, server.url, **scope)
        devices = [{"id": f"urn:ngsi-ld:Device:tag-{n}", "type": "Device"} for n in (1, 2, 3)]
        assert await client.push(devices) == {}
        batch = [(f"urn:ngsi-ld:Device:tag-{n}", "Device") for n in (1, 9, 2)]
        assert await client.delete(batch) == {}  # 422 PartialUpdate: then one by one, 9 is 404: already gone
        assert set(broker.entities("kakogawa", "/tags")) == {"urn:ngsi-ld:Device:tag-3"}
        assert await client.delete([("urn:ngsi-ld:Device:tag-9", "Device")]) == {}
        broker.faults.answer(503, times=1, retry_after_s=3)
        with pytest.raises(PushError) as raised:
            await client.delete([("urn:ngsi-ld:Device:tag-3", "Device")])
        assert (raised.value.transient, raised.value.retry_after) == (True, 3.0)
        assert await client.delete([("urn:ngsi-ld:Device:tag-3", "Device")]) == {}
        assert broker.entities("kakogawa", "/tags") == {}


# --- TagRetention over the registry and a stand-in ----------------------------------------------------------------


@dataclass
class CityOs:
    """A stand-in broker served on loopback, with the agent's client for it and the serialisation it speaks."""

    server: StandInServer
    client: NgsiLdClient | NgsiV2Client
    serialize: Callable[[Entity], dict[str, Any]]
    ids: Callable[[], set[str]]

    async def publish(self, entities: list[Entity]) -> None:
        assert await self.client.push([self.serialize(e) for e in entities if e.type == "Device"]) == {}


@asynccontextmanager
async def city_os(kind: str) -> AsyncIterator[CityOs]:
    async with httpx.AsyncClient(timeout=2) as http:
        if kind == "ngsi-ld":
            ld = NgsiLdBroker(allowed_contexts=set(CONTEXTS.values()))
            async with StandInServer(ld.app()) as server:
                yield CityOs(
                    server,
                    NgsiLdClient(http, server.url, tenant="kakogawa"),
                    lambda e: dict(to_ngsi_ld(e, contexts_for(e.type))),
                    lambda: set(ld.entities("kakogawa")),
                )
        else:
            orion = OrionBroker()
            async with StandInServer(orion.app()) as server:
                yield CityOs(
                    server,
                    NgsiV2Client(http, server.url, service="kakogawa"),
                    lambda e: dict(to_ngsi_v2(e)),
                    lambda: set(orion.entities("kakogawa")),
                )


async def tagged_city(registry: Registry) -> list[str]:
    """Five consented tags that share their zone, all seen once at H0 + 5."""
    await city(registry)
    names = ["tag-keep", "tag-withdrawn", "tag-unscoped", "tag-suspended", "tag-unseen"]
    for name in names:
        await tag(registry, name, share="zone,battery")
        await seen(registry, name, "gw-east-a", H0 + 5)
    return names


@pytest.mark.parametrize("kind", ["ngsi-ld", "ngsi-v2"])
async def test_devices_go_when_consent_scope_state_or_sightings_end(registry: Registry, kind: str) -> None:
    names = await tagged_city(registry)
    async with city_os(kind) as cityos:
        await cityos.publish(await StoredCrowdCounts(registry, SECRET).due(H0 + 600))
        assert cityos.ids() == {urn(name) for name in names}
        retention = TagRetention(registry, cityos.client, SECRET, retention_s=2 * HOUR)
        await retention.plan(H0 + 700)
        await retention.deliver(H0 + 700)
        assert cityos.ids() == {urn(name) for name in names}  # all qualify: nothing to delete

        await registry.set_consent("tag-withdrawn", False, actor="admin", reason="the family withdrew consent")
        await set_label(registry, "tag-unscoped", "share", "battery")  # no zone scope any more
        await registry.transition("tag-suspended", State.SUSPENDED, "admin", "reported lost")
        await seen(registry, "tag-keep", "gw-east-a", H0 + 2 * HOUR)
        now = H0 + 2 * HOUR + 60  # tag-unseen: last seen more than two hours ago
        await retention.plan(now)
        assert retention.pending == {urn(n) for n in names if n != "tag-keep"}
        await retention.deliver(now)
        assert cityos.ids() == {urn("tag-keep")}
        assert (retention.pending, retention.deleted) == (frozenset(), 4)
        assert not any("tag-" + name.split("-")[1] in " ".join(cityos.ids()) for name in names)


async def test_a_fresh_start_deletes_every_device_that_must_not_be_there(registry: Registry) -> None:
    await tagged_city(registry)
    async with city_os("ngsi-ld") as cityos:
        await cityos.publish(await StoredCrowdCounts(registry, SECRET).due(H0 + 600))
        await registry.set_consent("tag-withdrawn", False, actor="admin", reason="withdrawn while the agent was down")
        await tag(registry, "tag-never-shared")  # never at the City OS: deleting it is harmless
        retention = TagRetention(registry, cityos.client, SECRET, retention_s=2 * HOUR)
        await retention.plan(H0 + 700)
        assert retention.pending == {urn("tag-withdrawn"), urn("tag-never-shared")}
        await retention.deliver(H0 + 700)
        assert urn("tag-withdrawn") not in cityos.ids()
        assert len(cityos.ids()) == 4
        assert (retention.pending, retention.deleted) == (frozenset(), 2)


async def test_a_city_os_outage_delays_deletions_but_loses_none(registry: Registry) -> None:
    await tagged_city(registry)
    async with city_os("ngsi-v2") as cityos:
        await cityos.publish(await StoredCrowdCounts(registry, SECRET).due(H0 + 600))
        started = time.monotonic()
        retention = TagRetention(
            registry,
            cityos.client,
            SECRET,
            retention_s=2 * HOUR,
            period_s=0.05,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            clock=lambda: H0 + 700 + (time.monotonic() - started),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(retention.run(stop))
        try:
            await asyncio.sleep(0.2)
            await cityos.server.down()
            await registry.set_consent("tag-withdrawn", False, actor="admin", reason="withdrawn")
            await registry.transition("tag-suspended", State.SUSPENDED, "admin", "lost")
            await asyncio.sleep(1.0)
            assert retention.pending == {urn("tag-withdrawn"), urn("tag-suspended")}
            assert retention.failed_requests >= 2
            await cityos.server.up()
            await wait_until(lambda: not retention.pending, within=10)
        finally:
            stop.set()
            async with asyncio.timeout(5):
                await task
        assert retention.pending == frozenset()
        assert cityos.ids() == {urn(n) for n in ("tag-keep", "tag-unscoped", "tag-unseen")}


async def test_a_stale_upsert_after_the_deletion_is_removed_again(registry: Registry) -> None:
    await tagged_city(registry)
    async with city_os("ngsi-ld") as cityos:
        published = await StoredCrowdCounts(registry, SECRET).due(H0 + 600)
        await cityos.publish(published)
        retention = TagRetention(registry, cityos.client, SECRET, retention_s=2 * HOUR, repeat_after_s=300)
        await retention.plan(H0 + 700)
        await registry.transition("tag-suspended", State.SUSPENDED, "admin", "lost")
        await retention.plan(H0 + 800)
        await retention.deliver(H0 + 800)
        assert urn("tag-suspended") not in cityos.ids()
        await cityos.publish([e for e in published if e.id == urn("tag-suspended")])  # still queued in the pusher
        await retention.deliver(H0 + 900)
        assert urn("tag-suspended") in cityos.ids()
        await retention.deliver(H0 + 1100)  # repeated once, repeat_after_s later
        assert urn("tag-suspended") not in cityos.ids()


async def test_a_tag_that_qualifies_again_is_not_deleted(registry: Registry) -> None:
    await tagged_city(registry)
    async with city_os("ngsi-ld") as cityos:
        await cityos.publish(await StoredCrowdCounts(registry, SECRET).due(H0 + 600))
        await cityos.server.down()
        retention = TagRetention(registry, cityos.client, SECRET, retention_s=2 * HOUR)
        await retention.plan(H0 + 700)
        await registry.set_consent("tag-withdrawn", False, actor="admin", reason="withdrawn")
        await retention.plan(H0 + 800)
        await retention.deliver(H0 + 800)
        assert retention.pending == {urn("tag-withdrawn")}
        await registry.set_consent("tag-withdrawn", True, actor="admin", reason="given again")
        await retention.plan(H0 + 900)
        assert retention.pending == frozenset()
        await cityos.server.up()
        await retention.deliver(H0 + 2000)
        assert urn("tag-withdrawn") in cityos.ids()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TagRetention(None, None, SECRET, batch_size=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backoff"):
        TagRetention(None, None, SECRET, backoff_initial_s=5, backoff_max_s=1)  # type: ignore[arg-type]


def test_config_validates_the_retention_settings() -> None:
    section = NorthboundSection(kind="ngsi-ld", url="https://cityos.example")
    assert (section.tag_retention_h, section.crowd_keep_hours, section.crowd_min_count) == (24.0, 24, 1)
    for bad in ({"tag_retention_h": 0}, {"crowd_min_count": 0}, {"crowd_keep_hours": 0}, {"crowd_sweep_s": 0}):
        with pytest.raises(ValidationError):
            NorthboundSection(kind="ngsi-ld", url="https://cityos.example", **bad)
