"""kakehashi.waiting: waits with a time limit that never swallow a stop (a cancel), even one that arrives at the
very moment the wait ends another way, and leave no waiter behind."""

from __future__ import annotations

import asyncio
import time

from kakehashi.waiting import next_within, until_set


def _tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_until_set_returns_on_the_first_event_or_after_the_time_limit() -> None:
    first, second = asyncio.Event(), asyncio.Event()
    started = time.monotonic()
    await until_set(first, second, within=0.05)
    assert 0.04 <= time.monotonic() - started < 1.0
    asyncio.get_running_loop().call_later(0.01, second.set)
    started = time.monotonic()
    await until_set(first, second, within=10)
    assert time.monotonic() - started < 1.0
    await asyncio.sleep(0)
    assert not _tasks()  # no waiter left behind


async def test_a_cancel_that_comes_as_the_event_is_set_stops_the_waiter() -> None:
    event = asyncio.Event()
    waiter = asyncio.create_task(until_set(event, within=10))
    await asyncio.sleep(0.01)
    event.set()
    waiter.cancel()  # in the same step: both the event and the stop are there when the waiter wakes
    done, _ = await asyncio.wait({waiter}, timeout=2)
    assert waiter in done
    assert waiter.cancelled()


async def test_next_within_gives_the_next_item_or_none_in_time() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    assert await next_within(queue, 0.02) is None
    asyncio.get_running_loop().call_later(0.01, queue.put_nowait, 7)
    assert await next_within(queue, 10) == 7


async def test_a_cancel_that_comes_as_an_item_arrives_stops_the_getter_and_keeps_the_item() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    getter = asyncio.create_task(next_within(queue, 10))
    await asyncio.sleep(0.01)
    queue.put_nowait(7)
    getter.cancel()
    done, _ = await asyncio.wait({getter}, timeout=2)
    assert getter in done
    assert getter.cancelled()
    assert queue.get_nowait() == 7  # not taken by the stopped getter: the next one gets it
