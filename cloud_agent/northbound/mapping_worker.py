"""The northbound mapping worker: a process that maps outbox rows to entity documents for the agent.

The agent starts it as ``python -m cloud_agent.northbound.mapping_worker`` (:mod:`.worker_mapper`) and talks to it
over its standard input and output in frames: a 4-byte big-endian length, then a JSON document.

1. The first frame configures it: ``{"url": <registry URL>, "kind": "ngsi-ld"|"ngsi-v2", "cache_s": <seconds>,
   "log_level": <level>}`` (the URL may hold a password, so it never goes on the command line).
2. Then each request ``{"after": <row id>, "limit": <rows>}`` gets one answer
   (:meth:`~cloud_agent.northbound.outbox_mapper.OutboxMapper.map_after`): ``{"rows": [[row id, refused readings,
   [[entity id, length], ...]], ...]}``, then a frame holding the documents' JSON one after the other (each
   ``length`` bytes long, in the order listed), which the agent puts in its request bodies as they are; or
   ``{"error": <reason>}`` alone when the registry cannot be read (the agent asks again later).
3. At the end of its input (the agent closed it, stopped or died) the worker closes the registry and exits.

The worker only reads the registry. Its logs go to standard error as JSON lines, like the agent's; anything printed
to standard output by mistake goes there too, so it cannot corrupt the frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import struct
import sys
from typing import IO, Any, Final

import orjson

from cloud_agent.northbound.outbox_mapper import MappedRow, OutboxMapper
from cloud_agent.northbound.queue import document_id
from device_registry import Registry
from kakehashi.log import configure, get_logger

HEADER: Final = struct.Struct(">I")
MAX_FRAME: Final = 512 * 1024 * 1024


class FrameError(ValueError):
    """A frame is too large or not a JSON object."""


def encode_frame(document: Any) -> bytes:
    """``document`` as one frame."""
    body = orjson.dumps(document)
    if len(body) > MAX_FRAME:
        raise FrameError(f"a frame of {len(body)} bytes is over the {MAX_FRAME} bytes allowed")
    return HEADER.pack(len(body)) + body


def raw_frame(body: bytes | bytearray) -> bytes:
    """``body`` as one frame, as it is."""
    if len(body) > MAX_FRAME:
        raise FrameError(f"a frame of {len(body)} bytes is over the {MAX_FRAME} bytes allowed")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length a frame header announces."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"a frame announces {length} bytes, over the {MAX_FRAME} bytes allowed")
    return int(length)


def decode_body(body: bytes) -> dict[str, Any]:
    """A frame's JSON object."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"a frame is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise FrameError("a frame is not a JSON object")
    return document


def _read_frame(stream: IO[bytes]) -> dict[str, Any] | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    length = frame_length(header)
    body = stream.read(length)
    if len(body) < length:
        return None
    return decode_body(body)


def _rows_answer(rows: list[MappedRow]) -> bytes:
    """The answer frames for mapped rows: the list, then the documents' JSON."""
    listed: list[list[Any]] = []
    documents = bytearray()
    for row in rows:
        entries: list[list[Any]] = []
        for document in row.documents:
            data = orjson.dumps(document)
            entries.append([document_id(document), len(data)])
            documents += data
        listed.append([row.row_id, row.refused, entries])
    return encode_frame({"rows": listed}) + raw_frame(documents)


class _Worker:
    """Maps on request, and maps the next rows ahead while the agent handles an answer."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        self._loop = asyncio.new_event_loop()
        self._registry: Registry | None = None
        self._mapper: OutboxMapper | None = None
        self._frozen = False
        self._ahead: tuple[int, int, bytes, int] | None = None
        """``(after, limit, answer, last row id)`` of rows mapped before they were asked for."""
        self.log = get_logger(__name__)

    def answer(self, after: int, limit: int) -> tuple[bytes, int | None]:
        """The answer to a request (mapped ahead if it was), and the last row id it holds."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[:2] == (after, limit):
            return ahead[2], ahead[3]
        return self._map(after, limit)

    def ahead(self, answered_through: int, limit: int) -> None:
        """Map the rows after ``answered_through`` now, while the agent stages the answer: its next request asks for
        them, unless it started again from another row. An empty or failed read-ahead is not kept, so rows stored
        meanwhile are seen when asked for."""
        answer, last = self._map(answered_through, limit)
        if last is not None:
            self._ahead = (answered_through, limit, answer, last)

    def _map(self, after: int, limit: int) -> tuple[bytes, int | None]:
        try:
            if self._mapper is None:
                config = self._config
                self._registry = self._loop.run_until_complete(Registry.open(str(config["url"]), migrate=False))
                self._mapper = OutboxMapper(self._registry, config["kind"], cache_s=float(config["cache_s"]))
            rows = self._loop.run_until_complete(self._mapper.map_after(after, limit))
            if not self._frozen:
                # What lives now (modules, the registry's engine and caches) lives as long as the worker: out of the
                # collector's way, whose full passes would otherwise walk it again and again (~15 % of the mapping)
                gc.freeze()
                self._frozen = True
        except Exception as exc:  # the registry is unavailable or broken: the agent asks again later
            self.log.error("northbound_mapping_worker_failed", error=repr(exc)[:500])
            return encode_frame({"error": repr(exc)[:1000]}), None
        return _rows_answer(rows), rows[-1].row_id if rows else None

    def close(self) -> None:
        if self._registry is not None:
            self._loop.run_until_complete(self._registry.close())
        self._loop.close()


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Answer mapping requests until ``requests`` ends (the worker's main loop)."""
    config = _read_frame(requests)
    if config is None:
        return
    configure(str(config.get("log_level", "INFO")))
    worker = _Worker(config)
    worker.log.info("northbound_mapping_worker_started", pid=os.getpid(), kind=config["kind"])
    try:
        while (request := _read_frame(requests)) is not None:
            after, limit = int(request["after"]), int(request["limit"])
            answer, last = worker.answer(after, limit)
            answers.write(answer)
            answers.flush()
            if last is not None:  # there may be more: map them while the agent stages these
                worker.ahead(last, limit)
    finally:
        worker.close()
        worker.log.info("northbound_mapping_worker_stopped", pid=os.getpid())


def main() -> None:
    """Run as the agent's worker: frames on standard input and output, logs on standard error."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print() must not corrupt the frames
    try:
        with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):  # the agent went away: nothing left to answer
            serve(sys.stdin.buffer, answers)
    finally:
        with contextlib.suppress(BrokenPipeError):
            answers.close()


if __name__ == "__main__":
    main()
