"""The northbound mapping worker, a real process: it maps exactly what the agent's loop maps (SQLite and PostgreSQL),
reads ahead without ever serving stale or wrong rows, and every fault ends in a clear error and a fresh worker with
nothing lost: killed with SIGKILL mid-drain, hung (SIGSTOP), an unreadable registry, the agent killed under it.
The frames between agent and worker are checked with property tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_agent.northbound.mapping import CONTEXTS
from cloud_agent.northbound.mapping_worker import (
    MAX_FRAME,
    FrameError,
    _rows_answer,
    decode_body,
    encode_frame,
    frame_length,
)
from cloud_agent.northbound.ngsi_clients import NgsiLdClient, NgsiV2Client
from cloud_agent.northbound.outbox_mapper import SERIALIZERS, BrokerKind, MappedRow, OutboxMapper
from cloud_agent.northbound.pusher import Pusher, PusherSettings
from cloud_agent.northbound.queue import Document, SerializedEntity, document_id
from cloud_agent.northbound.registry_source import RegistryNorthboundSource
from cloud_agent.northbound.worker_mapper import MappingWorkerError, WorkerMapper, _read_answer, _rows
from device_registry import Location, NotFound, Registry
from hw.cityos import NgsiLdBroker, OrionBroker, StandInServer
from tests.postgres import FakeClock, provisioned_gateway, reading
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture

pytestmark = pytest.mark.timeout(90)

GAUGES = ("wl-0001", "wl-0002", "wl-0003")
KINDS: tuple[BrokerKind, ...] = ("ngsi-ld", "ngsi-v2")
UPDATES_PER_SAMPLE = 3  # Device, WaterObserved, FloodMonitoring


def url_of(registry: Registry) -> str:
    return registry.engine.url.render_as_string(hide_password=False)


async def stored(registry: Registry, clock: FakeClock, messages: int, *, first_seq: int = 1) -> str:
    """A gateway with located gauges and ``messages`` stored readings messages in the northbound outbox."""
    feed = Registry(registry.engine, clock=clock, northbound=True)
    gw = "gw-0001"
    try:
        await registry.get_gateway(gw)
    except NotFound:
        await provisioned_gateway(registry, clock, gw)
        where = Location(latitude=34.7566, longitude=134.8411, place="Kako river")
        for gauge in GAUGES:
            await registry.create_device(gauge, "kakogawa", "water_level", actor="admin", gateway_id=gw,
                                         profile="water-level", location=where)  # fmt: skip
    batch = [
        (seq, 1.8e9 + seq, [reading(gauge, 1.0 + seq / 1000 + i, at=1.8e9 + seq) for i, gauge in enumerate(GAUGES)])
        for seq in range(first_seq, first_seq + messages)
    ]
    await feed.ingest_readings(gw, batch)
    return gw


def as_json(documents: list[Document]) -> list[Any]:
    """The documents as the broker reads them (a serialized one's JSON goes in the body as it is)."""
    return [orjson.loads(orjson.dumps(d.json if isinstance(d, SerializedEntity) else d)) for d in documents]


@pytest.fixture(name="workers")
async def workers_fixture() -> AsyncIterator[list[WorkerMapper]]:
    made: list[WorkerMapper] = []
    try:
        yield made
    finally:
        for worker in made:
            await worker.close()


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie not reaped yet is gone too
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


async def eventually(check: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# -- the same documents as in the agent's loop ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_the_worker_maps_what_the_agents_loop_maps(
    registry: Registry, clock: FakeClock, kind: BrokerKind, workers: list[WorkerMapper]
) -> None:
    await stored(registry, clock, 12)
    inline = OutboxMapper(registry, kind)
    worker = WorkerMapper(url_of(registry), kind)
    workers.append(worker)
    for after, limit in ((0, 100), (0, 5), (3, 4), (12, 10)):
        expected = await inline.map_after(after, limit)
        got = await worker.map_after(after, limit)
        assert [(r.row_id, r.refused) for r in got] == [(r.row_id, r.refused) for r in expected]
        for mine, theirs in zip(got, expected, strict=True):
            assert all(isinstance(d, SerializedEntity) for d in mine.documents)
            assert [document_id(d) for d in mine.documents] == [document_id(d) for d in theirs.documents]
            assert as_json(mine.documents) == as_json(theirs.documents)
    rows = await worker.map_after(0, 100)
    assert len(rows) == 12
    assert sum(len(r.documents) for r in rows) == 12 * len(GAUGES) * UPDATES_PER_SAMPLE
    assert worker.starts == 1


async def test_read_ahead_serves_only_the_rows_asked_for(tmp_path: Path, workers: list[WorkerMapper]) -> None:
    clock = FakeClock()
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", clock=clock)
    try:
        await stored(registry, clock, 6)
        worker = WorkerMapper(url_of(registry), "ngsi-ld")
        workers.append(worker)
        ids = [r.row_id for r in await OutboxMapper(registry, "ngsi-ld").map_after(0, 100)]
        assert [r.row_id for r in await worker.map_after(0, 2)] == ids[0:2]
        assert [r.row_id for r in await worker.map_after(ids[1], 2)] == ids[2:4]  # mapped ahead
        assert [r.row_id for r in await worker.map_after(0, 2)] == ids[0:2]  # started again elsewhere: not the ahead
        assert [r.row_id for r in await worker.map_after(ids[1], 3)] == ids[2:5]  # another limit: mapped afresh
        assert [r.row_id for r in await worker.map_after(ids[4], 3)] == ids[5:6]
        assert await worker.map_after(ids[5], 3) == []
        await stored(registry, clock, 2, first_seq=7)  # stored after an empty answer: seen when asked for
        assert len(await worker.map_after(ids[5], 3)) == 2
    finally:
        await registry.close()


# -- clients put serialized documents in the body as they are -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_serialized_documents_reach_the_broker_as_dictionaries_do(
    tmp_path: Path, kind: BrokerKind, workers: list[WorkerMapper]
) -> None:
    clock = FakeClock()
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", clock=clock)
    try:
        await stored(registry, clock, 2)
        worker = WorkerMapper(url_of(registry), kind)
        workers.append(worker)
        serialized = [d for row in await worker.map_after(0, 10) for d in row.documents]
        dictionaries = [d for row in await OutboxMapper(registry, kind).map_after(0, 10) for d in row.documents]
    finally:
        await registry.close()
    received = []
    for documents in (serialized, dictionaries):
        city: NgsiLdBroker | OrionBroker = (
            NgsiLdBroker(allowed_contexts=set(CONTEXTS.values())) if kind == "ngsi-ld" else OrionBroker()
        )
        async with StandInServer(city.app()) as server, httpx.AsyncClient(timeout=5) as http:
            client = NgsiLdClient(http, server.url) if kind == "ngsi-ld" else NgsiV2Client(http, server.url)
            assert await client.push(documents) == {}
        assert len(city.updates) == len(documents)
        received.append([update[-1] for update in city.updates])
    assert received[0] == received[1]


# -- faults -------------------------------------------------------------------------------------------------------


async def test_a_worker_killed_mid_drain_is_started_again_and_nothing_is_lost(tmp_path: Path) -> None:
    clock = FakeClock()
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", clock=clock)
    city = NgsiLdBroker(allowed_contexts=set(CONTEXTS.values()))
    mapper = WorkerMapper(url_of(registry), "ngsi-ld")
    source = RegistryNorthboundSource(registry, mapper, SERIALIZERS["ngsi-ld"], rows_per_load=8, staged_updates=50)
    settings = PusherSettings(batch_size=20, max_in_flight=2, backoff_initial_s=0.05, backoff_max_s=0.2)
    try:
        await stored(registry, clock, 200)
        expected = 200 * len(GAUGES) * UPDATES_PER_SAMPLE
        async with StandInServer(city.app()) as server, httpx.AsyncClient(timeout=5) as http:
            pusher = Pusher(source, NgsiLdClient(http, server.url), settings)
            stop = asyncio.Event()
            task = asyncio.create_task(pusher.run(stop))
            try:
                await eventually(lambda: len(city.updates) > 100 and mapper.pid is not None)
                first = mapper.pid
                assert first is not None
                os.kill(first, signal.SIGKILL)
                deadline = time.monotonic() + 60
                while (await source.stats()).pending or len(city.updates) < expected:
                    assert time.monotonic() < deadline, "the backlog did not drain"
                    await asyncio.sleep(0.05)
                assert mapper.pid not in (None, first)
            finally:
                stop.set()
                async with asyncio.timeout(20):
                    await task
        assert mapper.starts >= 2
        assert (await source.stats()).pending == 0
        heights = {}
        for _, entity_id, entity in city.updates:
            if ":WaterObserved:" in entity_id:
                heights.setdefault(entity_id, []).append(entity["height"]["observedAt"])
        for observed in heights.values():  # every sample, in order per entity (a re-sent one repeats, never goes back)
            assert len(set(observed)) == 200
            assert observed == sorted(observed)
    finally:
        await source.close()
        await registry.close()
    assert mapper.pid is None


async def test_a_hung_worker_is_killed_after_the_answer_timeout(tmp_path: Path, workers: list[WorkerMapper]) -> None:
    clock = FakeClock()
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", clock=clock)
    try:
        await stored(registry, clock, 3)
        worker = WorkerMapper(url_of(registry), "ngsi-v2", answer_timeout_s=1.0)
        workers.append(worker)
        assert len(await worker.map_after(0, 10)) == 3
        hung = worker.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        with pytest.raises(MappingWorkerError, match="no answer in time"):
            await worker.map_after(0, 10)
        assert pid_gone(hung)
        assert len(await worker.map_after(0, 10)) == 3
        assert worker.pid not in (None, hung)
        assert worker.starts == 2
    finally:
        await registry.close()


async def test_a_worker_killed_while_answering_is_a_clear_error_at_once(
    tmp_path: Path, workers: list[WorkerMapper]
) -> None:
    clock = FakeClock()
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", clock=clock)
    try:
        await stored(registry, clock, 3)
        worker = WorkerMapper(url_of(registry), "ngsi-ld", answer_timeout_s=30.0)
        workers.append(worker)
        await worker.map_after(0, 10)
        dying = worker.pid
        assert dying is not None
        os.kill(dying, signal.SIGSTOP)  # holds the request unanswered until it is killed
        asking = asyncio.create_task(worker.map_after(0, 10))
        await asyncio.sleep(0.3)
        os.kill(dying, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(MappingWorkerError, match="IncompleteReadError"):
            await asking
        assert time.monotonic() - started < 5
        assert len(await worker.map_after(0, 10)) == 3
        assert worker.starts == 2
    finally:
        await registry.close()


async def test_an_unreadable_registry_is_a_clear_error_and_the_worker_stays(
    tmp_path: Path, workers: list[WorkerMapper]
) -> None:
    worker = WorkerMapper(f"sqlite+aiosqlite:///{tmp_path / 'not-migrated.db'}", "ngsi-ld")
    workers.append(worker)
    for _ in range(2):
        with pytest.raises(MappingWorkerError, match="could not map"):
            await worker.map_after(0, 10)
    assert worker.starts == 1  # answered with the reason, did not die


async def test_close_stops_the_worker(tmp_path: Path) -> None:
    clock = FakeClock()
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", clock=clock)
    try:
        worker = WorkerMapper(url_of(registry), "ngsi-ld")
        assert await worker.map_after(0, 10) == []
        pid = worker.pid
        assert pid is not None
        await worker.close()
        assert worker.pid is None
        assert pid_gone(pid)
        await worker.close()  # twice is harmless
    finally:
        await registry.close()


AGENT_STAND_IN = """
import asyncio, sys
from cloud_agent.northbound.worker_mapper import WorkerMapper

async def main():
    worker = WorkerMapper(sys.argv[1], "ngsi-ld")
    await worker.map_after(0, 10)
    print(worker.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_the_worker_exits_when_the_agent_is_killed(tmp_path: Path) -> None:
    clock = FakeClock()
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", clock=clock)
    await registry.close()
    agent = subprocess.Popen(  # noqa: ASYNC220 - a plain child to kill -9, read from a thread below
        [sys.executable, "-c", AGENT_STAND_IN, url_of(registry)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert agent.stdout is not None
        async with asyncio.timeout(30):
            line = await asyncio.to_thread(agent.stdout.readline)
        worker_pid = int(line)
        assert not pid_gone(worker_pid)
        agent.kill()  # SIGKILL: no clean-up in the agent at all
        agent.wait(10)
        await eventually(lambda: pid_gone(worker_pid), within=10)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)


# -- the frames --------------------------------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
DOCUMENTS = st.builds(
    lambda entity_id, attrs: {"id": entity_id, "type": "Device", **attrs},
    st.text(min_size=1, max_size=30),
    st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in ("id", "type")), JSON_VALUES, max_size=4),
)
ROWS = st.lists(
    st.builds(MappedRow, st.integers(1, 2**40), st.lists(DOCUMENTS, max_size=4), st.integers(0, 100)), max_size=6
)


async def _answer_back(data: bytes) -> tuple[dict[str, Any], bytes]:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    return await _read_answer(stream)


@given(ROWS)
@settings(max_examples=60, deadline=None)
def test_rows_cross_the_pipe_unchanged(rows: list[MappedRow]) -> None:
    answer, documents = asyncio.run(_answer_back(_rows_answer(rows)))
    back = _rows(answer["rows"], documents)
    assert [(r.row_id, r.refused) for r in back] == [(r.row_id, r.refused) for r in rows]
    for mine, sent in zip(back, rows, strict=True):
        assert [document_id(d) for d in mine.documents] == [document_id(d) for d in sent.documents]
        assert as_json(mine.documents) == as_json(sent.documents)


@given(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=5))
@settings(max_examples=60, deadline=None)
def test_a_frame_round_trips(document: dict[str, Any]) -> None:
    frame = encode_frame(document)
    assert frame_length(frame[:4]) == len(frame) - 4
    assert decode_body(frame[4:]) == document


@given(JSON_VALUES.filter(lambda v: not isinstance(v, dict)))
def test_a_frame_that_is_not_an_object_is_refused(value: Any) -> None:
    with pytest.raises(FrameError, match="not a JSON object"):
        decode_body(orjson.dumps(value))


@given(st.binary(min_size=1, max_size=40).filter(lambda b: not _is_json(b)))
def test_a_frame_that_is_not_json_is_refused(body: bytes) -> None:
    with pytest.raises(FrameError, match="not JSON"):
        decode_body(body)


def _is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def test_an_oversized_frame_is_refused_before_it_is_read() -> None:
    with pytest.raises(FrameError, match="over the"):
        frame_length((MAX_FRAME + 1).to_bytes(4, "big"))


def test_documents_that_do_not_add_up_are_refused() -> None:
    answer, documents = asyncio.run(_answer_back(_rows_answer([MappedRow(1, [{"id": "a", "type": "Device"}], 0)])))
    with pytest.raises(ValueError, match="bytes"):
        _rows(answer["rows"], documents + b" ")
