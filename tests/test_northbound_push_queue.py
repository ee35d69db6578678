"""The northbound queue's contract on the in-memory queue (the registry source's staging): oldest first, an entity's
updates handed out in order and never while another of its updates is out, ``per_entity`` consecutive updates per
fetch, retry_later delays and counts, dead letters keep their reason; and a property test of any sequence of
operations against a simple model of the contract."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_agent.northbound.queue import MemoryQueue, QueuedUpdate

pytestmark = pytest.mark.timeout(60)


def doc(entity: str, seq: int) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:Device:{entity}", "type": "Device", "n": {"type": "Property", "value": seq}}


def seqs(updates: list[Any]) -> list[tuple[str, int]]:
    return [(u.entity_id.rsplit(":", 1)[1], u.entity["n"]["value"]) for u in updates]


async def test_heads_only_and_order() -> None:
    queue = MemoryQueue()
    queue.put([doc("a", 0), doc("b", 0), doc("a", 1), doc("c", 0), doc("a", 2)])
    first = await queue.fetch(10)
    assert seqs(first) == [("a", 0), ("b", 0), ("c", 0)]
    assert await queue.fetch(10) == []  # handed out, and a's next waits behind its head
    await queue.delivered([first[0].id])
    second = await queue.fetch(10)
    assert seqs(second) == [("a", 1)]
    await queue.retry_later([second[0].id], time.time() + 0.3, "connection: refused")
    assert await queue.fetch(10) == []
    await asyncio.sleep(0.35)
    again = await queue.fetch(10)
    assert seqs(again) == [("a", 1)]
    assert again[0].attempts == 1
    assert queue.last_error(again[0].id) == "connection: refused"
    await queue.dead_letter([again[0].id], "BadRequestData: no")
    assert seqs(await queue.fetch(10)) == [("a", 2)]
    stats = await queue.stats()
    assert (stats.pending, stats.dead) == (3, 1)
    assert stats.oldest_queued_at is not None
    assert stats.oldest_queued_at <= time.time()


async def test_fetch_limit() -> None:
    queue = MemoryQueue()
    queue.put([doc(f"e{n}", 0) for n in range(25)])
    assert len(await queue.fetch(10)) == 10
    assert len(await queue.fetch(10)) == 10
    assert len(await queue.fetch(10)) == 5


async def test_several_updates_of_an_entity_in_order_within_a_batch() -> None:
    queue = MemoryQueue()
    queue.put([doc(e, n) for n in range(4) for e in ("a", "b")])
    batch = await queue.fetch(10, per_entity=3)
    assert seqs(batch) == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert await queue.fetch(10, per_entity=3) == []  # nothing more of a or b while some of theirs is out
    await queue.delivered([u.id for u in batch if u.entity_id.endswith(":a")])
    assert seqs(await queue.fetch(10, per_entity=3)) == [("a", 3)]


async def test_the_limit_cuts_an_entitys_run() -> None:
    queue = MemoryQueue()
    queue.put([doc("a", n) for n in range(5)])
    first = await queue.fetch(2, per_entity=10)
    assert seqs(first) == [("a", 0), ("a", 1)]
    await queue.delivered([u.id for u in first])
    assert seqs(await queue.fetch(10, per_entity=10)) == [("a", 2), ("a", 3), ("a", 4)]


async def test_an_entity_waits_until_all_its_updates_are_back() -> None:
    queue = MemoryQueue()
    queue.put([doc("a", n) for n in range(3)])
    batch = await queue.fetch(10, per_entity=2)
    await queue.delivered([batch[0].id])
    assert await queue.fetch(10, per_entity=2) == []  # a 1 is still out
    await queue.retry_later([batch[1].id], time.time() + 0.2, "InternalError: busy")
    assert await queue.fetch(10, per_entity=2) == []  # held back until not_before
    await asyncio.sleep(0.25)
    assert seqs(await queue.fetch(10, per_entity=2)) == [("a", 1), ("a", 2)]


async def test_stats_oldest_is_the_first_queued_left() -> None:
    queue = MemoryQueue()
    queue.put([doc("a", 0)])
    await asyncio.sleep(0.01)
    queue.put([doc("b", 0)])
    first = await queue.fetch(1)
    stats_before = await queue.stats()
    await queue.delivered([first[0].id])
    stats_after = await queue.stats()
    assert stats_before.oldest_queued_at is not None
    assert stats_after.oldest_queued_at is not None
    assert stats_after.oldest_queued_at > stats_before.oldest_queued_at
    assert stats_after.pending == 1


_ENTITIES = ("a", "b", "c")
_operation = st.one_of(
    st.tuples(st.just("put"), st.lists(st.sampled_from(_ENTITIES), min_size=1, max_size=6)),
    st.tuples(st.just("fetch"), st.integers(1, 6), st.integers(1, 4)),
    st.tuples(st.just("settle"), st.sampled_from(["delivered", "retry", "dead"]), st.integers(0, 20)),
)


@given(st.lists(_operation, max_size=60))
async def test_any_sequence_keeps_the_order_per_entity_and_loses_nothing(operations: list[tuple[Any, ...]]) -> None:
    """Against a model: an entity's updates are handed out in order, never while another of its updates is out;
    every update ends delivered or dead exactly once; draining at the end hands out everything left."""
    queue = MemoryQueue()
    counters = dict.fromkeys(_ENTITIES, 0)
    out: list[QueuedUpdate] = []
    finished: dict[str, list[int]] = {e: [] for e in _ENTITIES}
    handed_next = dict.fromkeys(_ENTITIES, 0)  # the next sequence number an entity may be handed out

    def check_fetched(batch: list[QueuedUpdate], limit: int, per_entity: int) -> None:
        assert len(batch) <= limit
        assert [u.id for u in batch] == sorted(u.id for u in batch)
        busy = {u.entity_id for u in out}
        for entity_id in {u.entity_id for u in batch}:
            assert entity_id not in busy
            mine = [u.entity["n"]["value"] for u in batch if u.entity_id == entity_id]
            assert len(mine) <= per_entity
            name = entity_id.rsplit(":", 1)[1]
            assert mine == list(range(handed_next[name], handed_next[name] + len(mine)))

    for operation in operations:
        if operation[0] == "put":
            docs = []
            for entity in operation[1]:
                docs.append(doc(entity, counters[entity]))
                counters[entity] += 1
            queue.put(docs)
        elif operation[0] == "fetch":
            _, limit, per_entity = operation
            batch = await queue.fetch(limit, per_entity)
            check_fetched(batch, limit, per_entity)
            out.extend(batch)
        elif out:
            _, how, index = operation
            picked = out[index % len(out)]
            run = sorted((u for u in out if u.entity_id == picked.entity_id), key=lambda u: u.id)
            name = picked.entity_id.rsplit(":", 1)[1]
            if how == "retry":  # a failed request hands back the entity's whole run
                for u in run:
                    out.remove(u)
                await queue.retry_later([u.id for u in run], 0.0, "transient")
                handed_next[name] = run[0].entity["n"]["value"]
                continue
            for u in run[: run.index(picked) + 1]:  # settled in order, up to the picked one
                out.remove(u)
                if how == "delivered":
                    await queue.delivered([u.id])
                else:
                    await queue.dead_letter([u.id], "refused")
                finished[name].append(u.entity["n"]["value"])
            if not any(u.entity_id == picked.entity_id for u in out):
                handed_next[name] = finished[name][-1] + 1
    # drain: hand back what is out, then deliver everything in fetch order
    await queue.retry_later([u.id for u in out], 0.0, "transient")
    for _ in range(sum(counters.values()) + 1):
        batch = await queue.fetch(100, 3)
        if not batch:
            break
        await queue.delivered([u.id for u in batch])
        for u in batch:
            finished[u.entity_id.rsplit(":", 1)[1]].append(u.entity["n"]["value"])
    assert (await queue.stats()).pending == 0
    for entity in _ENTITIES:
        assert finished[entity] == list(range(counters[entity]))
