"""The agent's side of the mapping worker: a :class:`~cloud_agent.northbound.outbox_mapper.RowMapper` that has the
rows mapped in a process of its own (:mod:`.mapping_worker`), so that mapping and pushing use two cores.

The worker is started at the first request and started again after it died, hung (no answer within
``answer_timeout_s``) or answered something that is not a frame; the request then fails with
:class:`MappingWorkerError`, and the source asks again (the pusher backs off first). Nothing is lost that way: rows
are taken from the outbox only when their documents arrived. The worker exits when the agent closes its input, also
when the agent is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import orjson

import cloud_agent
from cloud_agent.northbound.mapping_worker import HEADER, FrameError, decode_body, encode_frame, frame_length
from cloud_agent.northbound.outbox_mapper import BrokerKind, MappedRow
from cloud_agent.northbound.queue import Document, SerializedEntity
from kakehashi.log import get_logger

log = get_logger(__name__)
_PACKAGE_ROOT = str(Path(cloud_agent.__file__).resolve().parent.parent)
"""Put on the worker's ``PYTHONPATH``: the worker imports this code however the agent was started."""


class MappingWorkerError(Exception):
    """The mapping worker could not map the rows this time (it died, hung, or could not read the registry)."""


class WorkerMapper:
    """Maps outbox rows in a worker process (one request at a time)."""

    def __init__(
        self,
        url: str,
        kind: BrokerKind,
        *,
        cache_s: float = 30.0,
        answer_timeout_s: float = 60.0,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self._config = {
            "url": url,
            "kind": kind,
            "cache_s": cache_s,
            "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        }
        self._answer_timeout_s = answer_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.starts = 0
        """How many times a worker was started (more than one: it was replaced after a failure)."""

    @property
    def pid(self) -> int | None:
        """The running worker's process id."""
        return None if self._process is None else self._process.pid

    async def map_after(self, after: int, limit: int) -> list[MappedRow]:
        """The pending rows after row id ``after`` (at most ``limit``), mapped by the worker."""
        async with self._lock:
            process = await self._running()
            assert process.stdin is not None
            assert process.stdout is not None
            try:
                process.stdin.write(encode_frame({"after": after, "limit": limit}))
                await process.stdin.drain()
                async with asyncio.timeout(self._answer_timeout_s):
                    answer, documents = await _read_answer(process.stdout)
            except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, FrameError) as exc:
                await self._kill()
                problem = "no answer in time" if isinstance(exc, TimeoutError) else repr(exc)
                log.error("northbound_mapping_worker_lost", error=problem, after=after)
                raise MappingWorkerError(f"the mapping worker failed ({problem}); it is started again") from exc
            except BaseException:  # cancelled half-way: the next answer on the pipe would be this one's
                await self._kill()
                raise
        if "error" in answer:
            raise MappingWorkerError(f"the mapping worker could not map: {answer['error']}")
        try:
            return _rows(answer["rows"], documents)
        except (KeyError, TypeError, ValueError) as exc:
            raise MappingWorkerError(f"the mapping worker answered something else than rows: {exc!r}") from exc

    async def close(self) -> None:
        """Stop the worker: its input is closed, so it finishes and exits (killed if it does not in time)."""
        async with self._lock:
            process, self._process = self._process, None
            if process is None:
                return
            assert process.stdin is not None
            with contextlib.suppress(OSError):
                process.stdin.close()
            try:
                async with asyncio.timeout(self._stop_timeout_s):
                    await process.wait()
            except TimeoutError:
                await _killed(process)

    async def _running(self) -> asyncio.subprocess.Process:
        if self._process is not None and self._process.returncode is None:
            return self._process
        if self._process is not None:
            log.error("northbound_mapping_worker_exited", returncode=self._process.returncode)
            self._process = None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cloud_agent.northbound.mapping_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert process.stdin is not None
        process.stdin.write(encode_frame(self._config))
        self._process = process
        self.starts += 1
        log.info("northbound_mapping_worker_starting", pid=process.pid, starts=self.starts)
        return process

    async def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await _killed(process)


async def _read_answer(stream: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """The answer, and the documents' JSON after it (nothing after an error)."""
    answer = decode_body(await stream.readexactly(frame_length(await stream.readexactly(HEADER.size))))
    if "error" in answer:
        return answer, b""
    return answer, await stream.readexactly(frame_length(await stream.readexactly(HEADER.size)))


def _rows(listed: list[Any], documents: bytes) -> list[MappedRow]:
    rows: list[MappedRow] = []
    at = 0
    for row_id, refused, entries in listed:
        row: list[Document] = []
        for entity_id, length in entries:
            row.append(SerializedEntity(str(entity_id), orjson.Fragment(documents[at : at + length])))
            at += length
        rows.append(MappedRow(int(row_id), row, int(refused)))
    if at != len(documents):
        raise ValueError(f"the documents are {len(documents)} bytes, the rows list {at}")
    return rows


async def _killed(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()
