"""Waiting in the agent's loops: until one of some events is set, or a time-out passes, whichever comes first."""

from __future__ import annotations

import asyncio
import contextlib


async def until_set(*events: asyncio.Event, within: float | None = None) -> None:
    """Return once any of ``events`` is set, or after ``within`` seconds; leaves no waiter behind."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
