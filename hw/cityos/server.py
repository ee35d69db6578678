"""Serving a stand-in in-process on loopback (an OS-chosen port kept across outages), over HTTP or HTTPS::

broker = NgsiLdBroker()
async with StandInServer(broker.app()) as server:      # http://127.0.0.1:<port>
    server.url
    await server.down()       # the listener is closed: connections are refused
    await server.up()         # serving again on the same port
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Generator
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class StandInServer:
    """One ASGI app served by uvicorn on ``host`` (default 127.0.0.1), with :meth:`down` and :meth:`up`."""

    def __init__(
        self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.tls = tls
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The base URL, ``http(s)://host:port``."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def up(self) -> None:
        """Start serving (again, on the same port); returns once it listens."""
        if self._task is not None:
            return
        listener = socket.create_server((self.host, self.port), backlog=1024)
        self.port = int(listener.getsockname()[1])
        tls = self.tls
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            ssl_context_factory=(lambda _config, _default: tls) if tls is not None else None,
        )
        server = _QuietServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[listener]), name=f"standin-{self.port}")
        while not server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the stand-in server stopped while starting")
            await asyncio.sleep(0.005)

    async def down(self) -> None:
        """Stop serving: the listener closes (connections are refused) and open connections are dropped."""
        server, task = self._server, self._task
        self._server, self._task = None, None
        if server is None or task is None:
            return
        server.should_exit = True
        server.force_exit = True
        try:
            async with asyncio.timeout(3):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> StandInServer:
        await self.up()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.down()
