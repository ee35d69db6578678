"""A small synchronous client of the agent's HTTPS API, for the ``kakehashi device`` CLI and scripts.

It verifies the agent's server certificate against a CA bundle (the fleet's ``chain.pem``) or the system store,
sends the API token as a bearer token, and turns every failure into one :class:`ApiClientError` line: the
server's own ``detail`` for an error answer, or "cannot reach https://...: <why> — is the agent running? check
--agent" when the agent cannot be reached.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import httpx

from kakehashi.errors import KakehashiError

DEFAULT_TIMEOUT_S: Final = 15.0
IMPORT_TIMEOUT_S: Final = 300.0
"""A CSV import registers rows one transaction each (10,000 rows take about a minute on SQLite)."""

QueryValue = str | int | float | bool | None
Query = Mapping[str, QueryValue | Sequence[str]]


class ApiClientError(KakehashiError):
    """The agent refused a request (``status`` and the server's ``reason`` code) or could not be reached."""

    reason = "api"

    def __init__(self, message: str, *, reason: str | None = None, status: int | None = None) -> None:
        super().__init__(message, reason=reason)
        self.status = status


def _tls(ca: Path | None) -> ssl.SSLContext | bool:
    if ca is None:
        return True
    if not ca.is_file():
        raise ApiClientError(f"the CA bundle {ca} does not exist: pass the fleet's chain.pem with --ca", reason="ca")
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ApiClientError(
            f"the CA bundle {ca} cannot be used ({exc}): it must be PEM certificates", reason="ca"
        ) from None


def _unreachable(url: str, exc: httpx.TransportError) -> ApiClientError:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return ApiClientError(
            f"cannot reach {url}: its TLS certificate is not trusted ({text}) — check --ca (the fleet's chain.pem)",
            reason="untrusted",
        )
    return ApiClientError(f"cannot reach {url}: {text} — is the agent running? check --agent", reason="unreachable")


def _refusal(response: httpx.Response) -> ApiClientError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        reason = str(body.get("error") or "http_error")
        return ApiClientError(
            f"{body['detail']} ({response.status_code} {reason})", reason=reason, status=response.status_code
        )
    text = " ".join(response.text.split())[:200] or response.reason_phrase
    return ApiClientError(
        f"the agent answered {response.status_code} {response.reason_phrase}: {text}",
        reason="http_error",
        status=response.status_code,
    )


class ApiClient:
    """``ApiClient("https://agent:8443", token, ca=Path("chain.pem"))``; use as a context manager or close it."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        ca: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = base_url.rstrip("/")
        if not url.startswith("https://"):
            raise ApiClientError(
                f"agent URL {base_url!r} must start with https:// (the API speaks HTTPS only): check --agent",
                reason="agent_url",
            )
        self.base_url = url
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=url, headers=headers, verify=_tls(ca), timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Query | None = None,
        body: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request (a JSON ``body``, or raw ``content`` of ``content_type``); the decoded JSON answer, or
        :class:`ApiClientError`."""
        query = {key: value for key, value in (params or {}).items() if value is not None}
        extra: dict[str, Any] = {"json": body} if content is None else {"content": content}
        if content_type is not None:
            extra["headers"] = {"Content-Type": content_type}
        if timeout is not None:
            extra["timeout"] = timeout
        try:
            response = self._http.request(method, path, params=query, **extra)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from None
        if response.is_error:
            raise _refusal(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiClientError(
                f"the agent at {self.base_url} answered {method} {path} with something that is not JSON: check --agent",
                reason="not_json",
            ) from None

    def get(self, path: str, **params: QueryValue | Sequence[str]) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body=body)

    def import_devices(self, csv: bytes, *, dry_run: bool = False) -> Any:
        """``POST /v1/devices/import``: register the devices of a CSV roll-out sheet; the per-row report."""
        return self.request(
            "POST",
            "/v1/devices/import",
            params={"dry_run": "true" if dry_run else None},
            content=csv,
            content_type="text/csv",
            timeout=IMPORT_TIMEOUT_S,
        )
