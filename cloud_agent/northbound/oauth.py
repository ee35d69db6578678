"""OAuth 2.0 client-credentials tokens for the City OS broker (RFC 6749 §4.4), fetched when first needed and again
before they expire, or at once when the broker says a token is no longer valid.

The client authenticates with HTTP Basic (RFC 6749 §2.3.1). A token is renewed when 80 % of its lifetime has passed
(at most 60 s before expiry). Tokens and the client secret are never logged and never shown in ``repr``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kakehashi.log import get_logger

log = get_logger(__name__)

REFRESH_FRACTION = 0.8
REFRESH_MARGIN_MAX_S = 60.0


class TokenError(Exception):
    """No token could be obtained; ``transient`` says whether trying again later may help."""

    def __init__(self, kind: str, detail: str, *, transient: bool) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.transient = transient


def read_secret(path: Path) -> str:
    """The client secret from its file (one line; surrounding whitespace ignored)."""
    return path.read_text(encoding="utf-8").strip()


@dataclass(eq=False)
class ClientCredentials:
    """Where and as whom to ask for tokens."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None


@dataclass(eq=False)
class TokenSource:
    """Hands out a current access token, asking the token endpoint when there is none or it is about to expire."""

    credentials: ClientCredentials
    http: httpx.AsyncClient = field(repr=False)
    _token: str | None = field(default=None, repr=False)
    _refresh_at: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    issued: int = 0
    """How many tokens this source obtained."""

    async def token(self) -> str:
        """A token valid for a while yet."""
        async with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                await self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """The broker refused ``token`` (401 invalid_token): the next :meth:`token` fetches a new one."""
        if self._token == token:
            self._token = None

    async def _fetch(self) -> None:
        form = {"grant_type": "client_credentials"}
        if self.credentials.scope:
            form["scope"] = self.credentials.scope
        auth = (self.credentials.client_id, self.credentials.client_secret)
        try:
            answer = await self.http.post(self.credentials.token_url, data=form, auth=auth)
        except httpx.TimeoutException:
            raise TokenError("token_timeout", f"no answer from {self.credentials.token_url}", transient=True) from None
        except httpx.TransportError as exc:
            raise TokenError("token_unreachable", f"{self.credentials.token_url}: {exc}", transient=True) from None
        if answer.status_code != 200:
            error = _oauth_error(answer)
            transient = answer.status_code >= 500 or answer.status_code == 429
            raise TokenError("token_refused", f"{answer.status_code} {error}", transient=transient)
        try:
            body = answer.json()
            token = str(body["access_token"])
            lifetime = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise TokenError(
                "token_malformed", "the token endpoint's answer has no access_token", transient=True
            ) from None
        if str(body.get("token_type", "bearer")).lower() != "bearer":
            raise TokenError("token_type", f"token_type {body.get('token_type')} is not Bearer", transient=False)
        margin = min(REFRESH_MARGIN_MAX_S, lifetime * (1 - REFRESH_FRACTION))
        self._token, self._refresh_at = token, time.monotonic() + lifetime - margin
        self.issued += 1
        log.info("northbound_token_obtained", client_id=self.credentials.client_id, expires_in=lifetime)


def _oauth_error(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.reason_phrase
    if isinstance(body, dict) and "error" in body:
        return f"{body['error']}: {body.get('error_description', '')}".rstrip(": ")
    return answer.reason_phrase
