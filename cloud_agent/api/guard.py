"""The outermost safety net: an unexpected exception becomes a logged 500 JSON answer, never a dead server.

Starlette's own last-resort handler answers and then re-raises (the server logs it again); this ASGI middleware
sits inside it, answers ``{"error": "internal", ...}`` once, logs the traceback as a structured event and counts it.
If the answer had already started, the connection is closed with what was sent and the failure is logged.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_agent.api.errors import error_response
from kakehashi.log import get_logger

log = get_logger(__name__)


class UnexpectedErrorGuard:
    """ASGI middleware: catch what no exception handler answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request = Request(scope)
            log.exception(
                "api_unexpected_error", method=request.method, path=request.url.path, error=type(exc).__name__
            )
            if started:
                return
            detail = (
                f"the agent failed unexpectedly ({type(exc).__name__}) while answering {request.method} "
                f"{request.url.path}: the error is in the agent's log; retry, and report it if it persists"
            )
            response = error_response(request, 500, "internal", detail)
            await response(scope, receive, send)
