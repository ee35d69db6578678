"""Organisations, gateways and devices: create, get, filtered and paginated lists, binding, hardware replacement."""

from __future__ import annotations

from datetime import timedelta

import pytest

from device_registry import AlreadyExists, InvalidInput, Location, NotFound, Registry, State
from tests.postgres import FakeClock, bound_device, organisation, provisioned_gateway, reading, watch_tag
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture


async def test_create_and_get_keep_every_field(registry: Registry, clock: FakeClock) -> None:
    await registry.create_organisation("kakogawa", "Kakogawa City", actor="admin")
    where = Location(latitude=34.7566, longitude=134.8414, place="Kakogawa river, bridge 3")
    gateway = await registry.create_gateway(
        "gw-kakogawa-0012",
        "kakogawa",
        actor="admin",
        hardware_serial="pi-10000000a1b2c3d4",
        owner="river works",
        location=where,
        labels={"zone": "north", "river.basin": "kakogawa"},
    )
    assert gateway == await registry.get_gateway("gw-kakogawa-0012")
    assert (gateway.state, gateway.location, gateway.created_at) == (State.REGISTERED, where, clock.now)
    assert gateway.labels == {"zone": "north", "river.basin": "kakogawa"}
    device = await registry.create_device(
        "wl-0007",
        "kakogawa",
        "water_level",
        actor="admin",
        profile="water-level-gauge",
        hardware_serial="wl-hw-7",
        owner="river works",
        gateway_id="gw-kakogawa-0012",
        labels={"zone": "north"},
    )
    assert device == await registry.get_device("wl-0007")
    assert (device.kind, device.profile, device.gateway_id, device.state) == (
        "water_level",
        "water-level-gauge",
        "gw-kakogawa-0012",
        State.PROVISIONED,
    )
    assert (device.consent, device.retention, device.is_watch_tag) == (None, None, False)
    tag = await registry.create_device(
        "tag-0001", "kakogawa", "watch_tag", actor="admin", consent=True, retention=timedelta(days=30)
    )
    assert (tag.is_watch_tag, tag.consent, tag.retention) == (True, True, timedelta(days=30))
    assert (await registry.get_organisation("kakogawa")).name == "Kakogawa City"
    assert [e.action for e in await registry.audit(entity="wl-0007")] == [
        "device.created",
        "device.bound",
        "lifecycle.transition",
    ]


async def test_lists_filter_and_page_with_a_stable_cursor(registry: Registry, clock: FakeClock) -> None:
    first = await provisioned_gateway(registry, clock, "gw-0001")
    second = await provisioned_gateway(registry, clock, "gw-0002")
    await provisioned_gateway(registry, clock, "gw-0003", org="himeji")
    for number in range(7):
        await bound_device(registry, f"wl-{number:04d}", first if number % 2 else second)
    await registry.create_device("em-0001", "kakogawa", "energy_meter", actor="admin", labels={"zone": "north"})
    await registry.create_device("em-0002", "kakogawa", "energy_meter", actor="admin", labels={"zone": "south"})
    await registry.transition("wl-0003", State.DECOMMISSIONED, "admin", "broken beyond repair")

    page = await registry.list_devices(limit=3)
    seen = list(page.items)
    while page.next_cursor is not None:
        page = await registry.list_devices(limit=3, after=page.next_cursor)
        seen += page.items
    assert [d.id for d in seen] == ["em-0001", "em-0002", *(f"wl-{n:04d}" for n in range(7))]
    assert page.total == 9
    assert [d.id for d in (await registry.list_devices(gateway=first)).items] == ["wl-0001", "wl-0003", "wl-0005"]
    assert (await registry.list_devices(kind="energy_meter", labels={"zone": "north"})).total == 1
    assert [d.id for d in (await registry.list_devices(state=State.DECOMMISSIONED)).items] == ["wl-0003"]
    assert (await registry.list_devices(organisation="himeji")).total == 0
    gateways = await registry.list_gateways(organisation="kakogawa", state=State.PROVISIONED)
    assert ([g.id for g in gateways.items], gateways.total, gateways.next_cursor) == ([first, second], 2, None)
    assert (await registry.list_organisations()).total == 2
    # A cursor stays valid while entities are added before it.
    cursor = (await registry.list_devices(limit=2)).next_cursor
    await registry.create_device("aa-0001", "kakogawa", "valve", actor="admin")
    assert [d.id for d in (await registry.list_devices(limit=2, after=cursor)).items] == ["wl-0000", "wl-0001"]


async def test_ids_and_serials_are_unique(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock, "gw-0001")
    with pytest.raises(AlreadyExists, match="id gw-0001 is already used by a gateway or device"):
        await registry.create_device("gw-0001", "kakogawa", "valve", actor="admin")
    with pytest.raises(AlreadyExists, match="organisation kakogawa already exists"):
        await registry.create_organisation("kakogawa", "again", actor="admin")
    await registry.create_device("em-0001", "kakogawa", "energy_meter", actor="admin", hardware_serial="sdm-1")
    with pytest.raises(AlreadyExists, match="hardware serial 'sdm-1' is already in use by em-0001"):
        await registry.create_device("em-0002", "kakogawa", "energy_meter", actor="admin", hardware_serial="sdm-1")
    serial = (await registry.certificates(gateway))[0].serial
    with pytest.raises(AlreadyExists, match=f"certificate serial {serial} is already recorded"):
        await registry.record_certificate("em-0001", serial, clock.now + timedelta(days=1), actor="pki")
    # Once decommissioned, refurbished hardware may serve again.
    await registry.transition("em-0001", State.DECOMMISSIONED, "admin", "replaced")
    await registry.create_device("em-0002", "kakogawa", "energy_meter", actor="admin", hardware_serial="sdm-1")


async def test_bad_input_is_refused_with_a_reason(registry: Registry, clock: FakeClock) -> None:
    await organisation(registry)
    cases = [
        ({"device_id": "WL-7", "kind": "valve"}, "invalid id 'WL-7'"),
        ({"device_id": "wl-7", "kind": "Water Level"}, "device kind 'Water Level'"),
        ({"device_id": "wl-7", "kind": "valve", "labels": {"Zone": "n"}}, "label key 'Zone'"),
        ({"device_id": "wl-7", "kind": "valve", "location": Location(91.0, 0.0)}, "latitude 91.0"),
        ({"device_id": "wl-7", "kind": "valve", "location": Location(latitude=34.0)}, "both latitude and longitude"),
        ({"device_id": "wl-7", "kind": "watch_tag", "consent": True}, "needs a consent decision and a retention"),
        ({"device_id": "wl-7", "kind": "valve", "consent": True}, "only watch tags carry a consent flag"),
        ({"device_id": "wl-7", "kind": "valve", "retention": timedelta(0)}, "at least one second"),
    ]
    for arguments, message in cases:
        with pytest.raises(InvalidInput, match=message):
            await registry.create_device(organisation_id="kakogawa", actor="admin", **arguments)  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="no organisation with id 'himeji'"):
        await registry.create_device("wl-7", "himeji", "valve", actor="admin")
    with pytest.raises(NotFound, match="no device with id 'wl-7'"):
        await registry.get_device("wl-7")
    with pytest.raises(InvalidInput, match="limit must be 1 to 1000"):
        await registry.list_devices(limit=0)


async def test_binding_rules(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock, "gw-0001")
    await bound_device(registry, "wl-0001", gateway)
    with pytest.raises(NotFound, match="no gateway with id 'wl-0001'"):
        await registry.bind_device("wl-0001", "wl-0001", actor="admin", reason="typo")
    with pytest.raises(NotFound, match="no device with id 'gw-0001'"):
        await registry.bind_device("gw-0001", gateway, actor="admin", reason="typo")
    await registry.bind_device("wl-0001", gateway, actor="admin", reason="again")  # already bound: nothing happens
    assert len(await registry.audit(entity="wl-0001", action="device.bound")) == 1
    await registry.transition(gateway, State.DECOMMISSIONED, "admin", "site closed")
    await registry.create_device("wl-0002", "kakogawa", "water_level", actor="admin")
    with pytest.raises(InvalidInput, match="gateway gw-0001 is decommissioned: it cannot be bound"):
        await registry.bind_device("wl-0002", gateway, actor="admin", reason="new gauge")


async def test_replacing_hardware_keeps_the_device_and_its_history(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await organisation(registry)
    await registry.create_device(
        "node-0001", "kakogawa", "node", actor="admin", hardware_serial="esp32-aa", gateway_id=gateway
    )
    await registry.record_certificate("node-0001", "c0ffee", clock.now + timedelta(days=90), actor="pki")
    await registry.ingest_readings(gateway, [(1, 1.8e9, [reading("node-0001", 2.0)])])
    await registry.set_desired("node-0001", {"sample_s": 10}, "operator-1")

    replaced = await registry.replace_hardware("node-0001", "esp32-bb", "tech-3", "lightning strike")
    assert (replaced.old_serial, replaced.new_serial, replaced.revoked_serials) == ("esp32-aa", "esp32-bb", ("c0ffee",))
    device = await registry.get_device("node-0001")
    assert (device.hardware_serial, device.state, device.gateway_id) == ("esp32-bb", State.ACTIVE, gateway)
    assert [r.value for r in await registry.history("node-0001")] == [2.0]
    assert (await registry.get_twin("node-0001")).desired == {"sample_s": 10}
    await registry.ingest_readings(gateway, [(2, 1.8e9 + 60, [reading("node-0001", 3.0, at=1.8e9 + 60)])])
    assert [r.value for r in await registry.history("node-0001")] == [2.0, 3.0]
    entry = (await registry.audit(entity="node-0001", action="entity.hardware_replaced"))[-1]
    assert (entry.actor, entry.reason) == ("tech-3", "lightning strike")
    assert entry.detail == {"old_serial": "esp32-aa", "new_serial": "esp32-bb", "revoked": ["c0ffee"]}
    with pytest.raises(InvalidInput, match="already has hardware serial esp32-bb"):
        await registry.replace_hardware("node-0001", "esp32-bb", "tech-3", "again")


async def test_consent_is_for_watch_tags_and_audited(registry: Registry, clock: FakeClock) -> None:
    await watch_tag(registry, "tag-0001", consent=True)
    await bound_device(registry, "wl-0001", await provisioned_gateway(registry, clock))
    tag = await registry.set_consent("tag-0001", False, actor="care-office", reason="withdrawn by family")
    assert tag.consent is False
    entry = (await registry.audit(entity="tag-0001", action="device.consent"))[-1]
    assert (entry.actor, entry.reason, entry.detail) == ("care-office", "withdrawn by family", {"consent": False})
    with pytest.raises(InvalidInput, match="only watch tags carry a consent flag"):
        await registry.set_consent("wl-0001", True, actor="admin", reason="oops")
