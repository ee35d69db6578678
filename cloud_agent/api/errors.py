"""Every error the API answers, in one shape: ``{"error": "<reason code>", "detail": "<one sentence>"}``.

Refusals of the layers below (:class:`~kakehashi.errors.KakehashiError` subclasses: registry, PKI, enrollment,
import) get a status from :func:`status_of`; request validation answers 422 naming the field; unknown routes 404;
unexpected exceptions 500 (logged with their traceback, see :mod:`cloud_agent.api.guard`). Each error is logged as a
structured ``api_refused`` event and counted by reason (:class:`ErrorCounts`, shown by ``GET /v1/agent/metrics``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from cloud_agent.api.refusals import BEARER_CHALLENGE, ApiRefusal
from device_registry.errors import (
    AlreadyExists,
    IllegalTransition,
    InvalidInput,
    NotFound,
    StaleVersion,
    TokenRefused,
    TrafficRefused,
)
from kakehashi.errors import KakehashiError
from kakehashi.log import get_logger

log = get_logger(__name__)

_STATUS_BY_TYPE: Final[tuple[tuple[type[KakehashiError], int], ...]] = (
    (InvalidInput, 400),
    (NotFound, 404),
    (AlreadyExists, 409),
    (IllegalTransition, 409),
    (StaleVersion, 409),
    (TrafficRefused, 409),
    (TokenRefused, 401),
)

_REASON_BY_STATUS: Final[Mapping[int, str]] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


class ErrorCounts:
    """How many errors the API answered, by reason code."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def count(self, reason: str) -> None:
        self._counts[reason] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))

    @property
    def total(self) -> int:
        return sum(self._counts.values())


def status_of(exc: KakehashiError) -> int:
    """The HTTP status of a refusal: its own (``ApiRefusal.status`` or an ``http_status`` attribute), else by type."""
    if isinstance(exc, ApiRefusal):
        return exc.status
    own = getattr(exc, "http_status", None)
    if isinstance(own, int) and 400 <= own <= 599:
        return own
    for kind, status in _STATUS_BY_TYPE:
        if isinstance(exc, kind):
            return status
    return 400


def error_counts_of(app: Any) -> ErrorCounts:
    """The error counts of an app built by :func:`cloud_agent.api.create_app` (a new, empty one otherwise)."""
    counts = getattr(app.state, "kakehashi_errors", None)
    if not isinstance(counts, ErrorCounts):
        counts = ErrorCounts()
        app.state.kakehashi_errors = counts
    return counts


def error_response(
    request: Request,
    status: int,
    reason: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """The JSON error answer; also logs the refusal and counts it by reason."""
    error_counts_of(request.app).count(reason)
    principal = getattr(request.state, "principal", None)
    emit = log.warning if status >= 500 else log.info
    emit(
        "api_refused",
        status=status,
        reason=reason,
        detail=detail,
        method=request.method,
        path=request.url.path,
        actor=getattr(principal, "name", None),
    )
    body: dict[str, Any] = {"error": reason, "detail": detail, **(extra or {})}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


async def _kakehashi_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, KakehashiError)
    status = status_of(exc)
    headers: dict[str, str] = dict(exc.headers) if isinstance(exc, ApiRefusal) else {}
    if status == 401 and "WWW-Authenticate" not in headers:
        headers["WWW-Authenticate"] = f'{BEARER_CHALLENGE}, error="invalid_token"'
    extra: dict[str, Any] = {}
    if isinstance(exc, IllegalTransition):
        extra = {"entity": exc.entity_id, "from": str(exc.from_state), "to": str(exc.to_state)}
    return error_response(request, status, exc.reason, exc.message, headers=headers, extra=extra)


def _field_name(location: Sequence[int | str]) -> str:
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie") and len(parts) > 1:
        return f"{'.'.join(parts[1:])} ({parts[0]})"
    return ".".join(parts) or "request"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"field": _field_name(error.get("loc", ())), "problem": str(error.get("msg", "invalid"))}
        for error in exc.errors()
    ]
    first = problems[0] if problems else {"field": "request", "problem": "invalid"}
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    detail = f"{first['field']}: {first['problem']}{more}: see /docs for the expected request"
    return error_response(request, 422, "invalid_request", detail, extra={"fields": problems})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    reason = _REASON_BY_STATUS.get(exc.status_code, "http_error")
    if exc.status_code == 404 and exc.detail == "Not Found":
        detail = f"there is no resource {request.url.path}: see /docs for the API's routes"
    elif exc.status_code == 405:
        detail = f"{request.url.path} does not answer {request.method}: see /docs for the methods it takes"
    else:
        detail = str(exc.detail)
    return error_response(request, exc.status_code, reason, detail, headers=exc.headers)


def install_error_handlers(app: FastAPI, counts: ErrorCounts) -> None:
    """Answer every refusal of ``app`` in the JSON error shape and count it in ``counts``."""
    app.state.kakehashi_errors = counts
    app.add_exception_handler(KakehashiError, _kakehashi_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
