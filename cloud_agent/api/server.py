"""Serving the API over HTTPS inside the agent's event loop with uvicorn, until the agent says stop.

TLS only (1.2 or newer, the agent's server certificate and key); there is no plain-HTTP listener. The agent owns
SIGTERM and SIGINT, so uvicorn must not install its own handlers: :class:`_AgentServer` turns
:meth:`uvicorn.Server.capture_signals` into a no-op. uvicorn's logging setup and access log are off; requests are
logged as structured events by :mod:`cloud_agent.api.access_log`. The listening socket is bound here, so a port in
use or a bad certificate is one clear :class:`ApiServerError` instead of uvicorn's ``sys.exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Final

import uvicorn
from fastapi import FastAPI

from kakehashi.errors import KakehashiError
from kakehashi.log import get_logger

log = get_logger(__name__)

GRACE_S: Final = 5
"""How long requests in flight may take to finish once stop is set."""


class ApiServerError(KakehashiError):
    """The API cannot be served (certificate, key or address unusable)."""

    reason = "api_server"


def tls_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+) with the agent's certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(certfile), keyfile=str(keyfile))
    except FileNotFoundError as exc:
        raise ApiServerError(f"cannot read the API's TLS files: {exc.filename} does not exist") from None
    except (OSError, ssl.SSLError) as exc:
        raise ApiServerError(
            f"the API's certificate {certfile} and key {keyfile} cannot be used ({exc}): "
            "check that they are PEM files and that the key belongs to the certificate"
        ) from None
    return context


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ApiServerError(f"the API cannot listen on {host}:{port}: {exc.strerror or exc}") from None


class _AgentServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the agent and reports when it listens."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


async def serve_api(
    app: FastAPI,
    *,
    host: str,
    port: int,
    certfile: Path,
    keyfile: Path,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Serve ``app`` over HTTPS on ``host:port`` until ``stop`` is set; ``ready`` is set once it listens.

    Returns after the listener is closed and requests in flight finished (at most :data:`GRACE_S`); raises
    :class:`ApiServerError` when it cannot start, and whatever stopped the server otherwise.
    """
    context = tls_context(certfile, keyfile)
    config = uvicorn.Config(
        app,
        ssl_context_factory=lambda _config, _default: context,
        log_config=None,
        access_log=False,
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=GRACE_S,
    )
    listener = _bind(host, port)

    bound = int(listener.getsockname()[1])

    def started() -> None:
        log.info("api_listening", url=f"https://{host}:{bound}", port=bound)
        if ready is not None:
            ready.set()

    server = _AgentServer(config, started)

    async def run() -> None:
        try:
            await server.serve(sockets=[listener])
        except SystemExit as exc:  # uvicorn exits the process on some start-up failures; never let it here
            raise ApiServerError(f"the API server on {host}:{port} could not start (exit status {exc.code})") from None

    serving = asyncio.create_task(run(), name="api-server")
    stopping = asyncio.create_task(stop.wait(), name="api-stop")
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
    finally:
        server.should_exit = True
        stopping.cancel()
        if not serving.done():
            serving.cancel()
        for task in (serving, stopping):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for listening in getattr(server, "servers", []):  # cancelled before uvicorn's own shutdown closed them
            listening.close()
        listener.close()
        log.info("api_stopped", url=f"https://{host}:{bound}")
