"""The outbox as the asyncio side sees it: the SQLite store on one worker thread, plus a change signal.

All database work runs on a single dedicated thread, so the event loop never blocks on disk I/O and the store's
connection is only ever used from one thread. ``changed`` is set after every append, waking the uplink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.outbox_store import AppendResult, OutboxStats, OutboxStore, PendingMessage, StoredMessage

T = TypeVar("T")


class Outbox:
    """Asynchronous facade over :class:`~gateway.outbox_store.OutboxStore`."""

    def __init__(self, store: OutboxStore, executor: ThreadPoolExecutor) -> None:
        self._store = store
        self._executor = executor
        self.changed = asyncio.Event()

    @classmethod
    async def open(cls, path: Path, budget_bytes: int) -> Outbox:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(executor, OutboxStore, path, budget_bytes)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(store, executor)

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def append(self, messages: Sequence[PendingMessage]) -> AppendResult:
        """Commit ``messages`` durably; when this returns they are accepted and have their sequence numbers."""
        result = await self._call(lambda: self._store.append(messages))
        self.changed.set()
        return result

    async def fetch_after(self, after_seq: int, limit: int) -> list[StoredMessage]:
        return await self._call(lambda: self._store.fetch_after(after_seq, limit))

    async def delete(self, seqs: Sequence[int]) -> None:
        await self._call(lambda: self._store.delete(seqs))

    async def stats(self) -> OutboxStats:
        return await self._call(self._store.stats)

    async def close(self) -> None:
        try:
            await self._call(self._store.close)
        finally:
            self._executor.shutdown(wait=True)
