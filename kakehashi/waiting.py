"""Waiting with a time limit in the services' loops, without ever swallowing a stop.

Services stop their tasks by cancelling them, so a wait must let a cancel through whatever else happens at the same
moment. These two helpers do (``asyncio.wait_for`` does not on Python 3.11 and is banned; see docs/architecture.md):

* :func:`until_set` -- until one of some events is set, or a time-out passes, whichever comes first;
* :func:`next_within` -- the next item of a queue, or ``None`` when none comes in time.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def until_set(*events: asyncio.Event, within: float | None = None) -> None:
    """Return once any of ``events`` is set, or after ``within`` seconds; leaves no waiter behind."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)  # a time-out is no error
    finally:
        for waiter in waiters:
            waiter.cancel()


async def next_within(queue: asyncio.Queue[T], within: float) -> T | None:
    """The next item of ``queue``, or ``None`` if none arrives within ``within`` seconds (queues of non-None items)."""
    try:
        async with asyncio.timeout(within):
            return await queue.get()
    except TimeoutError:
        return None
