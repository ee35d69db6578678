"""The outbox store: dense persistent sequence numbers, delete-after-ack, the disk budget policy with gap reports,
and durability under kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.model import Priority
from gateway.outbox_store import OutboxFullError, OutboxStore, PendingMessage
from kakehashi import wire

KIB = 1024


def message(priority: Priority = Priority.TELEMETRY, readings: int = 10, pad: int = 0) -> PendingMessage:
    def encode(seq: int) -> bytes:
        rs = tuple(
            wire.Reading("dev-1", "x", float(i), "m", 1.8e9 + i, wire.ClockQuality.SYNCED) for i in range(readings)
        )
        body = wire.encode_readings(wire.ReadingsMessage(seq=seq, sent_at=1.8e9, readings=rs))
        return body + b" " * pad

    return PendingMessage(wire.Channel.READINGS, priority, readings, encode)


@pytest.fixture
def store(tmp_path: Path) -> OutboxStore:
    return OutboxStore(tmp_path / "outbox.db", 256 * KIB)


def test_sequence_numbers_are_dense_increasing_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    first = OutboxStore(path, 256 * KIB)
    assert first.append([message(), message()]).seqs == [1, 2]
    first.delete([1, 2])
    first.close()
    second = OutboxStore(path, 256 * KIB)
    assert second.append([message()]).seqs == [3], "never reused, even after everything was acknowledged"
    assert second.stats().next_seq == 4


def test_payload_carries_its_own_sequence_number(store: OutboxStore) -> None:
    store.append([message(readings=3)])
    [stored] = store.fetch_after(0, 10)
    decoded = wire.decode_readings(stored.payload)
    assert decoded.seq == stored.seq == 1
    assert len(decoded.readings) == 3


def test_alarms_are_committed_before_telemetry_of_the_same_batch(store: OutboxStore) -> None:
    result = store.append([message(Priority.TELEMETRY), message(Priority.ALARM)])
    assert result.seqs == [2, 1]


def test_fetch_is_ordered_and_delete_frees_budget(store: OutboxStore) -> None:
    store.append([message() for _ in range(5)])
    assert [m.seq for m in store.fetch_after(2, 10)] == [3, 4, 5]
    used = store.stats().bytes_used
    store.delete([1, 3])
    assert [m.seq for m in store.fetch_after(0, 10)] == [2, 4, 5]
    assert store.stats().bytes_used < used


def test_full_budget_thins_telemetry_never_alarms_and_reports_gaps(store: OutboxStore) -> None:
    alarms = store.append([message(Priority.ALARM, pad=4 * KIB)]).seqs
    for _ in range(120):
        store.append([message(Priority.TELEMETRY, pad=4 * KIB)])
    stats = store.stats()
    assert stats.bytes_used <= store.budget_bytes
    assert stats.dropped_messages > 0
    stored = store.fetch_after(0, 10_000)
    assert alarms[0] in [m.seq for m in stored], "the alarm is still there"
    gap_messages = [m for m in stored if m.channel is wire.Channel.EVENTS]
    assert gap_messages, "every eviction is reported upstream"
    reported: set[int] = set()
    for gm in gap_messages:
        for event in wire.decode_events(gm.payload).events:
            assert isinstance(event, wire.GapReport)
            assert event.to_seq < gm.seq
            reported.update(range(event.from_seq, event.to_seq + 1))
    all_seqs = set(range(1, stats.next_seq))
    assert all_seqs == reported | {m.seq for m in stored}, "every seq is stored or reported as a gap"
    assert reported.isdisjoint({m.seq for m in stored})
    assert sum(d[2] for d in store.drops()) == stats.dropped_readings


def test_first_thinning_round_drops_every_other_message_of_the_oldest(store: OutboxStore) -> None:
    while store.stats().dropped_messages == 0:
        store.append([message(pad=3 * KIB)])
    gaps = sorted(seq for a, b, _, _ in store.drops() for seq in range(a, b + 1))
    assert gaps == list(range(2, 2 * len(gaps) + 1, 2))
    assert len(gaps) >= 5, "a round frees a chunk (10 % of the budget), not one message at a time"


def test_alarms_alone_fill_to_the_hard_limit_then_refuse(store: OutboxStore) -> None:
    appended = 0
    with pytest.raises(OutboxFullError, match="hard limit"):  # noqa: PT012 - the loop is how the limit is reached
        while appended < 200:
            store.append([message(Priority.ALARM, pad=4 * KIB)])
            appended += 1
    assert appended * 4 * KIB > store.budget_bytes, "alarms may exceed the budget up to the hard limit"
    assert store.stats().dropped_messages == 0


def test_telemetry_is_refused_at_intake_when_only_alarms_remain(store: OutboxStore) -> None:
    for _ in range(70):
        store.append([message(Priority.ALARM, pad=4 * KIB)])
    result = store.append([message(Priority.TELEMETRY, readings=7, pad=4 * KIB)])
    assert result.seqs == [None]
    assert result.intake_dropped_readings == 7
    events = [m for m in store.fetch_after(0, 10_000) if m.channel is wire.Channel.EVENTS]
    [event] = wire.decode_events(events[-1].payload).events
    assert isinstance(event, wire.Event)
    assert event.kind == "intake_drop"
    assert event.attrs["readings"] == 7


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.sampled_from(list(Priority)), st.integers(0, 6 * KIB)),
        st.tuples(st.just("ack"), st.integers(1, 5), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_every_sequence_number_is_accounted_for(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:  # type: ignore[type-arg]
    store = OutboxStore(tmp_path_factory.mktemp("prop") / "outbox.db", 128 * KIB)
    acked: set[int] = set()
    important: set[int] = set()
    try:
        for op, arg, pad in ops:
            if op == "append":
                try:
                    seqs = store.append([message(arg, readings=2, pad=pad)]).seqs
                except OutboxFullError:
                    continue
                if arg is not Priority.TELEMETRY and seqs[0] is not None:
                    important.add(seqs[0])
            else:
                head = [m.seq for m in store.fetch_after(0, arg)]
                store.delete(head)
                acked.update(head)
        stored = {m.seq for m in store.fetch_after(0, 100_000)}
        dropped = {s for a, b, _, _ in store.drops() for s in range(a, b + 1)}
        everything = set(range(1, store.stats().next_seq))
        assert everything == stored | acked | dropped
        assert not dropped & (stored | acked)
        assert not dropped & important, "alarms and events are never evicted"
        assert store.stats().bytes_used == sum(len(m.payload) for m in store.fetch_after(0, 100_000))
    finally:
        store.close()


def test_committed_messages_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.outbox_writer", str(path)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    committed: list[int] = []
    deadline = time.monotonic() + 20
    while len(committed) < 300 and time.monotonic() < deadline:
        committed.append(int(writer.stdout.readline()))
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert len(committed) >= 300
    store = OutboxStore(path, 512 * 1024 * 1024)
    stored = [m.seq for m in store.fetch_after(0, 1_000_000)]
    assert set(committed) <= set(stored), "every seq reported as committed is on disk"
    assert stored == list(range(1, len(stored) + 1)), "dense, nothing half-written"
    assert store.append([message()]).seqs == [len(stored) + 1]
    store.close()


async def test_intake_isolates_a_bad_submission_and_commits_the_others(tmp_path: Path) -> None:
    import asyncio

    from gateway.intake import Intake
    from gateway.model import Reading
    from gateway.outbox import Outbox

    outbox = await Outbox.open(tmp_path / "outbox.db", 1024 * 1024)
    intake = Intake(outbox)
    task = asyncio.get_running_loop().create_task(intake.run())
    good = [Reading("dev-1", "x", 1.0, "m", 1.8e9)]
    bad = [Reading("dev-1", "x", float("nan"), "m", 1.8e9)]
    results = await asyncio.gather(intake.submit(good), intake.submit(bad), intake.submit(good), return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], wire.WireError)
    assert results[2] is None
    assert intake.stats.rejected_readings == 1
    assert intake.stats.by_priority["telemetry"] == 2, "counted once, after the commit"
    assert (await outbox.stats()).accepted_readings == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await outbox.close()
