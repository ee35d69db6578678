"""An OAuth 2.0 authorization server stand-in: the client-credentials grant (RFC 6749 §4.4) and bearer-token checks
(RFC 6750) for the stand-in brokers.

``POST /oauth2/token`` with ``grant_type=client_credentials`` and the client authenticated by HTTP Basic (or
``client_id``/``client_secret`` in the form body, which RFC 6749 §2.3.1 allows) answers ``{"access_token",
"token_type": "Bearer", "expires_in"}`` with ``Cache-Control: no-store``. Tokens really expire after
``lifetime_s``; :meth:`TokenAuthority.expire_all` ends every issued token at once (a token that expires mid-run).
Errors follow RFC 6749 §5.2: 400 ``invalid_request`` / ``unsupported_grant_type``, 401 ``invalid_client`` with
``WWW-Authenticate: Basic``.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TOKEN_PATH = "/oauth2/token"


class TokenAuthority:
    """Registered clients, the tokens issued to them and their expiry."""

    def __init__(self, clients: dict[str, str], *, lifetime_s: float = 3600.0) -> None:
        self.clients = dict(clients)
        self.lifetime_s = lifetime_s
        self._tokens: dict[str, float] = {}
        self.issued = 0
        """How many tokens were issued (tests check refreshes with it)."""
        self.refused = 0
        """How many requests to a broker carried a missing, unknown or expired token."""

    def issue(self) -> tuple[str, float]:
        """A new token and its lifetime in seconds."""
        token = secrets.token_urlsafe(24)
        self._tokens[token] = time.monotonic() + self.lifetime_s
        self.issued += 1
        return token, self.lifetime_s

    def expire_all(self) -> None:
        """Every token issued so far is expired from now on."""
        self._tokens.clear()

    def bearer_error(self, authorization: str | None) -> Response | None:
        """None when ``authorization`` carries a valid bearer token, else the RFC 6750 §3 401 answer."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            self.refused += 1
            return JSONResponse(
                {"error": "invalid_request", "error_description": "a bearer token is required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="cityos"'},
            )
        expiry = self._tokens.get(token.strip())
        if expiry is None or expiry <= time.monotonic():
            self._tokens.pop(token.strip(), None)
            self.refused += 1
            return JSONResponse(
                {"error": "invalid_token", "error_description": "the access token expired or is unknown"},
                status_code=401,
                headers={
                    "WWW-Authenticate": 'Bearer realm="cityos", error="invalid_token", '
                    'error_description="the access token expired or is unknown"'
                },
            )
        return None

    def app(self) -> Starlette:
        """The token endpoint as an ASGI app."""
        return Starlette(routes=[Route(TOKEN_PATH, self._token, methods=["POST"])])

    def _client(self, request: Request, form: dict[str, str]) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        known = self.clients.get(client_id)
        if known is None or not secrets.compare_digest(known.encode(), secret.encode()):
            return None
        return client_id

    async def _token(self, request: Request) -> Response:
        no_store = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return _oauth_error(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
        form = dict(parse_qsl((await request.body()).decode(errors="replace")))
        if self._client(request, form) is None:
            response = _oauth_error(401, "invalid_client", "client authentication failed")
            response.headers["WWW-Authenticate"] = 'Basic realm="cityos"'
            return response
        grant = form.get("grant_type")
        if grant is None:
            return _oauth_error(400, "invalid_request", "grant_type is missing")
        if grant != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", f"grant_type {grant} is not supported")
        token, lifetime = self.issue()
        body = {"access_token": token, "token_type": "Bearer", "expires_in": int(lifetime)}
        return JSONResponse(body, headers=no_store)


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )
