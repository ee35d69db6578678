"""Ingest: exactly-once effect of at-least-once delivery, binding, consent, inactive devices, latest values, gaps."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_registry import GapRecord, InvalidInput, NotFound, Registry, SeqRange, State, TrafficRefused
from kakehashi import wire
from tests.postgres import FakeClock, bound_device, organisation, provisioned_gateway, reading, watch_tag
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture

T0 = 1.8e9
_examples = itertools.count(1)


async def test_a_replayed_batch_is_stored_once(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0007", gateway)
    batch = [(seq, T0 + seq, [reading("wl-0007", float(seq), at=T0 + seq)] * 2) for seq in (1, 2, 3)]
    first = await registry.ingest_readings(gateway, batch)
    again = await registry.ingest_readings(gateway, [*reversed(batch), batch[0]])
    assert (first.messages, first.duplicates, first.stored) == (3, 0, 6)
    assert (again.messages, again.duplicates, again.stored) == (0, 4, 0)
    assert [r.seq for r in await registry.history("wl-0007")] == [1, 1, 2, 2, 3, 3]


async def test_concurrent_deliveries_of_one_batch_are_stored_once(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0007", gateway)
    batch = [(seq, T0, [reading("wl-0007", float(seq), at=T0 + seq)]) for seq in range(1, 41)]
    results = await asyncio.gather(*(registry.ingest_readings(gateway, batch) for _ in range(4)))
    assert sum(r.stored for r in results) == 40
    assert sum(r.duplicates for r in results) == 120
    assert len(await registry.history("wl-0007")) == 40
    assert (await registry.completeness(gateway)).received == 40


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_any_interleaving_of_duplicated_and_reordered_batches_stores_each_seq_once(
    registry: Registry, clock: FakeClock, data: st.DataObject
) -> None:
    example = next(_examples)
    gateway = await provisioned_gateway(registry, clock, f"gw-p{example}")
    device = await bound_device(registry, f"wl-p{example}", gateway)
    size = data.draw(st.integers(1, 24), label="messages")
    fates = data.draw(st.lists(st.sampled_from(["arrives", "lost", "reported"]), min_size=size, max_size=size))
    arrives = [seq for seq, fate in enumerate(fates, 1) if fate == "arrives"]
    copies = data.draw(st.lists(st.integers(1, 3), min_size=len(arrives), max_size=len(arrives)), label="copies")
    deliveries = data.draw(st.permutations([seq for seq, n in zip(arrives, copies, strict=True) for _ in range(n)]))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(deliveries) - 1)), max_size=6), label="cuts"))
    batches = [deliveries[a:b] for a, b in itertools.pairwise([0, *cuts, len(deliveries)]) if deliveries[a:b]]

    def message(seq: int) -> tuple[int, float, list[wire.Reading]]:
        return seq, T0 + seq, [reading(device, float(seq), at=T0 + seq, quantity=f"q{i}") for i in range(seq % 3 + 1)]

    totals = {"messages": 0, "duplicates": 0, "stored": 0}
    for batch in batches:
        result = await registry.ingest_readings(gateway, [message(seq) for seq in batch])
        for key in totals:
            totals[key] += getattr(result, key)
    for run in _runs([seq for seq, fate in enumerate(fates, 1) if fate == "reported"]):
        await registry.record_gap(gateway, run[0], run[-1], len(run) * 2, "disk_budget")

    stored = [r.seq for r in await registry.history(device, limit=10_000)]
    assert sorted(stored) == sorted(seq for seq in arrives for _ in range(seq % 3 + 1))
    assert totals == {
        "messages": len(arrives),
        "duplicates": len(deliveries) - len(arrives),
        "stored": len(stored),
    }
    seen = await registry.completeness(gateway)
    highest = max(arrives, default=0)
    assert (seen.highest_seq, seen.received) == (highest, len(arrives))
    lost = [seq for seq in range(1, highest) if fates[seq - 1] == "lost"]
    expected = [SeqRange(run[0], run[-1]) for run in _runs(lost)]
    assert list(seen.missing) == expected
    assert seen.complete is (not expected)


def _runs(values: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for value in values:
        if runs and runs[-1][-1] == value - 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return runs


async def test_spoofed_devices_are_rejected_counted_and_audited(registry: Registry, clock: FakeClock) -> None:
    mine = await provisioned_gateway(registry, clock, "gw-0001")
    other = await provisioned_gateway(registry, clock, "gw-0002")
    await bound_device(registry, "wl-0001", mine)
    await bound_device(registry, "wl-0002", other)
    batch = [
        (1, T0, [reading("wl-0001"), reading("wl-0002"), reading("wl-0002")]),
        (2, T0, [reading("wl-0404"), reading("gw-0002"), reading("wl-0002")]),
    ]
    result = await registry.ingest_readings(mine, batch)
    assert (result.stored, result.rejected_unbound) == (1, 5)
    assert await registry.history("wl-0002") == []
    assert await registry.latest("wl-0002") == []
    entries = await registry.audit(entity=mine, action="ingest.rejected_unbound")
    assert {e.actor for e in entries} == {mine}
    by_device = {e.detail["device"]: e for e in entries}
    assert by_device["wl-0002"].detail["readings"] == 3
    assert by_device["wl-0002"].detail["seqs"] == [1, 2]
    assert by_device["wl-0002"].reason == (
        "gateway gw-0001 reported 3 readings for device wl-0002, which is bound to gateway gw-0002"
    )
    assert "not registered" in by_device["wl-0404"].reason
    assert "another gateway" in by_device["gw-0002"].reason


async def test_a_gateway_may_report_about_itself(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    result = await registry.ingest_readings(gateway, [(1, T0, [reading(gateway, 48.5, quantity="cpu_temperature")])])
    assert result.stored == 1
    assert [r.value for r in await registry.latest(gateway)] == [48.5]


async def test_watch_tag_without_consent_stores_nothing(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await watch_tag(registry, "tag-0001", consent=False)
    await watch_tag(registry, "tag-0002", consent=True)
    await registry.transition("tag-0002", State.DECOMMISSIONED, "admin", "wearer moved away")
    before = len(await registry.audit(limit=1000))
    result = await registry.ingest_readings(
        gateway, [(1, T0, [reading("tag-0001", quantity="rssi"), reading("tag-0002", quantity="rssi")])]
    )
    assert (result.stored, result.rejected_no_consent, result.rejected_unbound) == (0, 2, 0)
    assert await registry.history("tag-0001") == []
    assert await registry.latest("tag-0001") == []
    assert await registry.history("tag-0002") == []
    after = await registry.audit(limit=1000)
    assert [e.action for e in after[before:]] == ["lifecycle.transition"]  # the gateway's activation only
    assert (await registry.get_device("tag-0001")).refused_readings == 0  # not even a per-tag trace


async def test_consented_tags_roam_within_their_organisation(registry: Registry, clock: FakeClock) -> None:
    first = await provisioned_gateway(registry, clock, "gw-0001")
    second = await provisioned_gateway(registry, clock, "gw-0002")
    elsewhere = await provisioned_gateway(registry, clock, "gw-0099", org="himeji")
    await watch_tag(registry, "tag-0001", consent=True)
    assert (await registry.ingest_readings(first, [(1, T0, [reading("tag-0001", quantity="rssi")])])).stored == 1
    assert (await registry.ingest_readings(second, [(1, T0, [reading("tag-0001", quantity="rssi")])])).stored == 1
    foreign = await registry.ingest_readings(elsewhere, [(1, T0, [reading("tag-0001", quantity="rssi")])])
    assert (foreign.stored, foreign.rejected_unbound) == (0, 1)
    (entry,) = await registry.audit(entity=elsewhere, action="ingest.rejected_unbound")
    assert "tag-0001" not in entry.reason
    assert "tag-0001" not in str(entry.detail)
    assert entry.detail == {"device_kind": "watch_tag", "readings": 1}
    await registry.set_consent("tag-0001", False, actor="admin", reason="consent withdrawn by family")
    withdrawn = await registry.ingest_readings(first, [(2, T0, [reading("tag-0001", quantity="rssi")])])
    assert (withdrawn.stored, withdrawn.rejected_no_consent) == (0, 1)


async def test_suspended_devices_and_gateways_are_refused_and_counted(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0001", gateway)
    await registry.ingest_readings(gateway, [(1, T0, [reading("wl-0001")])])
    await registry.transition("wl-0001", State.SUSPENDED, "admin", "tampering suspected")
    result = await registry.ingest_readings(gateway, [(2, T0, [reading("wl-0001")] * 3)])
    assert (result.messages, result.stored, result.rejected_inactive) == (1, 0, 3)
    assert (await registry.get_device("wl-0001")).refused_readings == 3

    await registry.transition(gateway, State.SUSPENDED, "admin", "stolen")
    refused = await registry.ingest_readings(gateway, [(3, T0, [reading("wl-0001")] * 2), (4, T0, [])])
    assert (refused.messages, refused.rejected_inactive) == (0, 2)
    assert (await registry.get_gateway(gateway)).refused_readings == 2
    with pytest.raises(TrafficRefused, match="gw-0001 is suspended"):
        await registry.merge_reported(gateway, 0, {"firmware": "1.0"})
    with pytest.raises(TrafficRefused):
        await registry.record_gap(gateway, 5, 6, 10, "disk_budget")
    await registry.transition(gateway, State.ACTIVE, "admin", "recovered")
    await registry.transition("wl-0001", State.ACTIVE, "admin", "inspected")
    # A refused message was not recorded: delivered again later, it is stored.
    assert (await registry.ingest_readings(gateway, [(3, T0, [reading("wl-0001")])])).stored == 1


async def test_latest_keeps_the_newest_observation_whatever_the_delivery_order(
    registry: Registry, clock: FakeClock
) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0001", gateway)
    await registry.ingest_readings(gateway, [(5, T0, [reading("wl-0001", 5.0, at=T0 + 5)])])
    await registry.ingest_readings(gateway, [(3, T0, [reading("wl-0001", 3.0, at=T0 + 3)])])
    await registry.ingest_readings(
        gateway, [(4, T0, [reading("wl-0001", 4.0, at=T0 + 4), reading("wl-0001", 4.5, at=T0 + 5)])]
    )
    (latest,) = await registry.latest("wl-0001")
    assert (latest.value, latest.seq) == (5.0, 5)  # same observed time: the higher sequence number wins
    await registry.ingest_readings(gateway, [(6, T0, [reading("wl-0001", 6.0, at=T0 + 6)])])
    assert [r.value for r in await registry.latest("wl-0001")] == [6.0]
    assert [r.value for r in await registry.history("wl-0001")] == [3.0, 4.0, 5.0, 4.5, 6.0]


async def test_every_value_type_round_trips(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await bound_device(registry, "valve-0001", gateway, kind="valve")
    values: dict[str, float | str | bool | bytes] = {"a": 1.25, "b": "open", "c": True, "d": False, "e": b"\x00\xff"}
    batch = [(1, T0, [reading("valve-0001", value, quantity=q) for q, value in values.items()])]
    await registry.ingest_readings(gateway, batch)
    assert {r.quantity: r.value for r in await registry.latest("valve-0001")} == values
    stored = await registry.history("valve-0001", quantity="b")
    assert [(r.value, r.unit, r.clock, r.gateway_id, r.seq) for r in stored] == [
        ("open", "m", wire.ClockQuality.SYNCED, gateway, 1)
    ]


async def test_gaps_received_messages_and_completeness(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    await bound_device(registry, "wl-0001", gateway)
    await registry.ingest_readings(gateway, [(seq, T0, [reading("wl-0001")]) for seq in (1, 2, 6, 12)])
    assert await registry.mark_received(gateway, 7, channel="acks") is True
    assert await registry.mark_received(gateway, 7, channel="acks") is False
    assert await registry.record_gap(gateway, 3, 4, 120, "disk_budget") is True
    assert await registry.record_gap(gateway, 3, 4, 120, "disk_budget") is False
    gaps = [GapRecord(9, 9, 7, "disk_budget")]
    assert await registry.record_gaps(gateway, gaps, seq=13) == 1
    assert await registry.record_gaps(gateway, gaps, seq=13) == 0  # the events message itself was a duplicate
    seen = await registry.completeness(gateway)
    assert (seen.highest_seq, seen.received) == (13, 6)
    assert seen.reported_gaps == (GapRecord(3, 4, 120, "disk_budget"), GapRecord(9, 9, 7, "disk_budget"))
    assert seen.missing == (SeqRange(5, 5), SeqRange(8, 8), SeqRange(10, 11))
    assert (seen.missing_count, seen.reported_lost_readings) == (4, 127)


async def test_ingest_refuses_bad_input(registry: Registry, clock: FakeClock) -> None:
    gateway = await provisioned_gateway(registry, clock)
    with pytest.raises(InvalidInput, match="seq must be an integer from 1"):
        await registry.ingest_readings(gateway, [(0, T0, [])])
    with pytest.raises(NotFound, match="no gateway with id 'gw-9999'"):
        await registry.ingest_readings("gw-9999", [(1, T0, [])])
    with pytest.raises(InvalidInput, match="from_seq must not exceed to_seq"):
        await registry.record_gap(gateway, 5, 4, 1, "disk_budget")
    await organisation(registry)
    await registry.create_gateway("gw-0002", "kakogawa", actor="admin")
    registered = await registry.ingest_readings("gw-0002", [(1, T0, [reading("gw-0002")])])
    assert registered.rejected_inactive == 1  # no certificate yet: it cannot have authenticated


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_batches_mixing_gateways_store_each_gateway_seq_once(
    registry: Registry, clock: FakeClock, data: st.DataObject
) -> None:
    example = next(_examples)
    gateways = [await provisioned_gateway(registry, clock, f"gw-m{example}-{g}") for g in range(3)]
    devices = {gw: await bound_device(registry, f"wl-m{example}-{g}", gw) for g, gw in enumerate(gateways)}
    deliveries = data.draw(
        st.lists(st.tuples(st.sampled_from(gateways), st.integers(1, 12)), min_size=1, max_size=40), label="deliveries"
    )
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(deliveries) - 1)), max_size=5), label="cuts"))
    for a, b in itertools.pairwise([0, *cuts, len(deliveries)]):
        batch = [
            (gw, [(seq, T0 + seq, [reading(devices[gw], float(seq), at=T0 + seq)])]) for gw, seq in deliveries[a:b]
        ]
        if batch:
            await registry.ingest_many(batch)
    for gw in gateways:
        expected = sorted({seq for g, seq in deliveries if g == gw})
        assert [r.seq for r in await registry.history(devices[gw], limit=1000)] == expected
