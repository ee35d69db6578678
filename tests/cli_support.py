"""Test support shared by the technician-command tests: running ``kakehashi`` in-process with its output captured,
and the agent's enrollment API served over real HTTPS with a server certificate from the fleet CA."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_agent.api.server import serve_api
from cloud_agent.runtime import AgentRuntime
from device_registry import Registry
from kakehashi import keys
from kakehashi import log as khlog
from kakehashi.cli import main
from tests.conftest import Fleet
from tests.fleet import free_port
from tests.test_enrollment import NoActions, make_app


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        assert self.code == 2, (self.code, self.out, self.err)
        lines = [line for line in self.err.strip().splitlines() if not line.startswith(("... ", "{"))]
        assert len(lines) == 1, self.err
        assert lines[0].startswith("error: ")
        return lines[0]


Cli = Callable[..., Awaitable[Result]]


@pytest.fixture(name="cli")
def cli_fixture(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``kakehashi <args>`` in a worker thread (it runs its own event loop) and capture its output."""

    def invoke(args: list[str]) -> Result:
        for handler in logging.getLogger().handlers:  # JSON logs go to this test's captured stderr
            if isinstance(handler, logging.StreamHandler) and isinstance(handler.formatter, khlog.JsonFormatter):
                handler.stream = sys.stderr
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    async def run(*args: str | Path) -> Result:
        capsys.readouterr()
        return await asyncio.to_thread(invoke, [str(a) for a in args])

    return run


@contextlib.asynccontextmanager
async def enrollment_api(fleet: Fleet, registry: Registry, directory: Path) -> AsyncIterator[str]:
    """The agent's API (enrollment routes included) served over HTTPS on 127.0.0.1; yields its base URL."""
    key = keys.generate_private_key()
    key_path = directory / "api.key"
    keys.write_private_key(key_path, key)
    record = fleet.ca.issue_server(keys.make_csr(key, "agent-api"), "agent-api", ["127.0.0.1"])
    stop, ready = asyncio.Event(), asyncio.Event()
    port = free_port()
    app = make_app(AgentRuntime(registry, NoActions(), fleet.ca))
    task = asyncio.create_task(
        serve_api(
            app,
            host="127.0.0.1",
            port=port,
            certfile=record.certificate_path,
            keyfile=key_path,
            stop=stop,
            ready=ready,
        )
    )
    try:
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiting}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        if task.done():
            task.result()
        assert ready.is_set(), "the API did not start within 10 s"
        yield f"https://127.0.0.1:{port}"
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task
