"""``serve_api``: start-up refusals are one clear error, and a cancelled server releases its port too."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from bench.harness import free_port
from cloud_agent.api.server import ApiServerError, serve_api
from tests.test_device_cli import port_is_free, server_identity


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return app


async def test_a_cancelled_server_releases_its_port(tmp_path: Path) -> None:
    chain, cert, key = server_identity(tmp_path)
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(
        serve_api(_app(), host="127.0.0.1", port=port, certfile=cert, keyfile=key, stop=asyncio.Event(), ready=ready)
    )
    async with asyncio.timeout(10):
        await ready.wait()
    async with httpx.AsyncClient(
        verify=ssl.create_default_context(cafile=chain)
    ) as client:  # a kept-alive connection stays open
        assert (await client.get(f"https://127.0.0.1:{port}/ping")).json() == {"pong": "yes"}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert port_is_free(port)


async def test_start_up_refusals_are_one_clear_error(tmp_path: Path) -> None:
    _, cert, key = server_identity(tmp_path)
    stop = asyncio.Event()
    with pytest.raises(ApiServerError, match="does not exist"):
        await serve_api(
            _app(), host="127.0.0.1", port=free_port(), certfile=tmp_path / "nope.crt", keyfile=key, stop=stop
        )
    with pytest.raises(ApiServerError, match="cannot be used"):
        await serve_api(_app(), host="127.0.0.1", port=free_port(), certfile=key, keyfile=key, stop=stop)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ApiServerError, match=f"cannot listen on 127.0.0.1:{port}"):
            await serve_api(_app(), host="127.0.0.1", port=port, certfile=cert, keyfile=key, stop=stop)
