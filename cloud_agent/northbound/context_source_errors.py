"""Errors of the NGSI-LD context source as ProblemDetails (RFC 7807), with the ETSI error types and statuses.

The agent's own API answers ``{"error", "detail"}``; the ``/ngsi-ld/v1`` routes answer what NGSI-LD clients expect::

    {"type": "https://uri.etsi.org/ngsi-ld/errors/BadRequestData", "title": "...", "status": 400, "detail": "..."}

:class:`NgsiLdRoute` is the route class of the context-source router: every refusal raised while a request is
handled there (its own :class:`NgsiLdError`, the bearer-token checks of :func:`cloud_agent.api.auth.require_role`,
the registry's refusals, request validation, an unexpected exception) leaves as ProblemDetails. Statuses NGSI-LD
defines no error type for (401, 403 for a role, 406) use ``about:blank`` with the HTTP reason as title.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from cloud_agent.api.errors import error_counts_of, status_of
from cloud_agent.api.refusals import ApiRefusal
from device_registry.errors import NotFound
from kakehashi.errors import KakehashiError
from kakehashi.log import get_logger

__all__ = ["ERRORS", "NgsiLdError", "NgsiLdRoute", "problem", "problem_response"]

log = get_logger(__name__)

ERRORS: Final = "https://uri.etsi.org/ngsi-ld/errors/"
"""The namespace of the NGSI-LD error types."""

_TYPES: Final[Mapping[str, tuple[int, str]]] = {
    "InvalidRequest": (
        400,
        "The request associated to the operation is syntactically invalid or includes wrong content",
    ),
    "BadRequestData": (400, "The request includes input data which does not meet the requirements of the operation"),
    "AlreadyExists": (409, "The referred element already exists"),
    "OperationNotSupported": (422, "The operation is not supported"),
    "ResourceNotFound": (404, "The referred resource has not been found"),
    "InternalError": (500, "There has been an error during the operation execution"),
    "TooComplexQuery": (403, "The query is too complex and cannot be resolved"),
    "TooManyResults": (403, "The query involves too many entities to be retrieved in one request"),
    "LdContextNotAvailable": (503, "The JSON-LD @context is not available"),
}
_HTTP_TITLES: Final[Mapping[int, str]] = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


class NgsiLdError(Exception):
    """A refusal answered as ProblemDetails: ``kind`` is an NGSI-LD error type (or ``None``: ``about:blank``)."""

    def __init__(
        self, kind: str | None, detail: str, *, status: int | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        if kind is not None and kind not in _TYPES:
            raise ValueError(f"{kind!r} is not an NGSI-LD error type")
        self.kind = kind
        self.detail = detail
        self.status = status if status is not None else _TYPES[kind][0] if kind is not None else 500
        self.headers: dict[str, str] = dict(headers or {})


def problem(kind: str | None, detail: str, status: int | None = None) -> dict[str, Any]:
    """The ProblemDetails body of an NGSI-LD error type (``None``: ``about:blank`` for the plain HTTP ``status``)."""
    if kind is not None:
        code, title = _TYPES[kind]
        return {"type": ERRORS + kind, "title": title, "status": status or code, "detail": detail}
    code = status or 500
    return {"type": "about:blank", "title": _HTTP_TITLES.get(code, "Error"), "status": code, "detail": detail}


def problem_response(request: Request, error: NgsiLdError) -> JSONResponse:
    """The answer for ``error``; logged as ``api_refused`` and counted by reason like the agent's other refusals."""
    body = problem(error.kind, error.detail, error.status)
    reason = f"ngsi_ld_{error.kind or error.status}"
    error_counts_of(request.app).count(reason)
    principal = getattr(request.state, "principal", None)
    emit = log.warning if error.status >= 500 else log.info
    emit(
        "api_refused",
        status=error.status,
        reason=reason,
        detail=error.detail,
        method=request.method,
        path=request.url.path,
        actor=getattr(principal, "name", None),
    )
    return JSONResponse(body, status_code=error.status, headers=error.headers, media_type="application/json")


def as_ngsi_ld_error(exc: Exception) -> NgsiLdError:
    """The ProblemDetails refusal for an exception raised while handling a context-source request."""
    if isinstance(exc, NgsiLdError):
        return exc
    if isinstance(exc, ApiRefusal):
        return NgsiLdError(None, exc.message, status=exc.status, headers=exc.headers)
    if isinstance(exc, NotFound):
        return NgsiLdError("ResourceNotFound", exc.message)
    if isinstance(exc, KakehashiError):
        status = status_of(exc)
        kind = "BadRequestData" if status == 400 else None
        return NgsiLdError(kind, exc.message, status=status)
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return NgsiLdError("BadRequestData", f"{where}: {first.get('msg', 'invalid')}")
    if isinstance(exc, HTTPException):
        return NgsiLdError(None, str(exc.detail), status=exc.status_code, headers=exc.headers)
    log.exception("ngsi_ld_unexpected_error", error=repr(exc))
    return NgsiLdError("InternalError", "the context source failed to answer: the agent's log has the details")


class NgsiLdRoute(APIRoute):
    """A route whose every refusal is answered as NGSI-LD ProblemDetails."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def problem_details_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every refusal on these routes leaves as ProblemDetails
                return problem_response(request, as_ngsi_ld_error(exc))

        return problem_details_handler
