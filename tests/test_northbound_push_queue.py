"""The northbound queue's contract, for the in-memory and the SQLite queue: oldest first, one head per entity,
handed-out updates not handed out twice, retry_later delays and counts, dead letters keep their reason, and (SQLite)
everything unsettled comes back after a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud_agent.northbound.queue import MemoryQueue, NorthboundSource
from cloud_agent.northbound.queue_sqlite import SqliteQueue

pytestmark = pytest.mark.timeout(20)


def doc(entity: str, seq: int) -> dict[str, Any]:
    return {"id": f"urn:ngsi-ld:Device:{entity}", "type": "Device", "n": {"type": "Property", "value": seq}}


@pytest.fixture(params=["memory", "sqlite"])
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MemoryQueue | SqliteQueue]:
    if request.param == "memory":
        yield MemoryQueue()
        return
    opened = await SqliteQueue(tmp_path / "q.db").open()
    try:
        yield opened
    finally:
        await opened.close()


async def put(queue: MemoryQueue | SqliteQueue, docs: list[dict[str, Any]]) -> None:
    if isinstance(queue, MemoryQueue):
        queue.put(docs)
    else:
        await queue.put(docs)


def seqs(updates: list[Any]) -> list[tuple[str, int]]:
    return [(u.entity_id.rsplit(":", 1)[1], u.entity["n"]["value"]) for u in updates]


async def test_heads_only_and_order(queue: NorthboundSource) -> None:
    await put(queue, [doc("a", 0), doc("b", 0), doc("a", 1), doc("c", 0), doc("a", 2)])  # type: ignore[arg-type]
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
    await queue.dead_letter([again[0].id], "BadRequestData: no")
    assert seqs(await queue.fetch(10)) == [("a", 2)]
    stats = await queue.stats()
    assert (stats.pending, stats.dead) == (3, 1)
    assert stats.oldest_queued_at is not None
    assert stats.oldest_queued_at <= time.time()


async def test_fetch_limit(queue: NorthboundSource) -> None:
    await put(queue, [doc(f"e{n}", 0) for n in range(25)])  # type: ignore[arg-type]
    assert len(await queue.fetch(10)) == 10
    assert len(await queue.fetch(10)) == 10
    assert len(await queue.fetch(10)) == 5


async def test_sqlite_unsettled_updates_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    queue = await SqliteQueue(path).open()
    await queue.put([doc("a", 0), doc("a", 1), doc("b", 0)])
    handed = await queue.fetch(10)
    await queue.delivered([handed[1].id])
    await queue.dead_letter([handed[0].id], "BadRequestData: bad unit")
    await queue.close()  # "a" 1 was never settled beyond its head being dead-lettered; the process ends
    reopened = await SqliteQueue(path).open()
    try:
        assert seqs(await reopened.fetch(10)) == [("a", 1)]
        dead = await reopened.dead_letters()
        assert [(u.entity_id, reason) for u, reason in dead] == [("urn:ngsi-ld:Device:a", "BadRequestData: bad unit")]
        assert (await reopened.stats()).pending == 1
    finally:
        await reopened.close()


async def test_sqlite_handed_out_but_unsettled_comes_back_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    queue = await SqliteQueue(path).open()
    await queue.put([doc("a", 0)])
    assert len(await queue.fetch(10)) == 1
    await queue.close()  # crashed while the request was in flight
    reopened = await SqliteQueue(path).open()
    try:
        assert seqs(await reopened.fetch(10)) == [("a", 0)]
    finally:
        await reopened.close()
