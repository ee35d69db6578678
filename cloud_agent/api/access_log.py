"""A structured access log: one ``api_request`` event per answered request (uvicorn's own access log is off).

Fields: method, path, status, duration in milliseconds and the token name that acted (when authenticated).
Secrets never appear: the query string is left out and tokens are only named.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kakehashi.log import get_logger

log = get_logger(__name__)


class AccessLog:
    """ASGI middleware logging each HTTP request at INFO level once its answer has been sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            principal = scope.get("state", {}).get("principal")
            log.info(
                "api_request",
                method=scope.get("method"),
                path=scope.get("path"),
                status=status,
                ms=round((time.perf_counter() - began) * 1000, 2),
                actor=getattr(principal, "name", None),
            )
