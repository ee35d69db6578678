"""Refusals the API makes itself (no bearer token, a refused token, a role that may not), with their HTTP status.

Everything else the API refuses comes from the layers below as :class:`~kakehashi.errors.KakehashiError`
subclasses (registry, PKI, enrollment, import) and is mapped to a status by :mod:`cloud_agent.api.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from kakehashi.errors import KakehashiError

BEARER_CHALLENGE: Final = 'Bearer realm="kakehashi"'


class ApiRefusal(KakehashiError):
    """A request refused by the API layer; ``status`` is the HTTP status and ``headers`` go with the answer."""

    reason = "refused"

    def __init__(self, message: str, *, reason: str, status: int, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, reason=reason)
        self.status = status
        self.headers: dict[str, str] = dict(headers or {})


def unauthenticated(message: str, *, reason: str) -> ApiRefusal:
    """401 with a bearer challenge: the request carries no usable API token."""
    return ApiRefusal(
        message, reason=reason, status=401, headers={"WWW-Authenticate": f'{BEARER_CHALLENGE}, error="invalid_token"'}
    )


def forbidden(message: str) -> ApiRefusal:
    """403: the token is valid but its role may not do this."""
    return ApiRefusal(message, reason="forbidden", status=403)
