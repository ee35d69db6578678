"""Bearer-token authentication and role checks for the API's routes.

A route declares who may call it with :func:`require_role`::

    from typing import Annotated
    from fastapi import Depends
    from cloud_agent.api.auth import require_role
    from device_registry.models import ApiPrincipal, ApiRole

    @router.post("/v1/devices/import")
    async def import_devices(
        principal: Annotated[ApiPrincipal, Depends(require_role(ApiRole.ADMIN, ApiRole.ASSET_MANAGER))],
    ) -> ...:
        ...  # pass principal.name to the registry as the actor

The dependency reads ``Authorization: Bearer kh_...``, asks the registry who the token belongs to
(:meth:`~device_registry.Registry.authenticate_api_token`) and answers 401 (no, unknown, expired or revoked token,
with a ``WWW-Authenticate`` challenge) or 403 (a role that may not, naming the roles that may). A positive answer is
cached for :data:`DEFAULT_CACHE_S` seconds at most, so a token revoked elsewhere stops working within that time
(at once when revoked through this API).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud_agent.api.refusals import forbidden, unauthenticated
from device_registry import Registry
from device_registry.models import ApiPrincipal, ApiRole

__all__ = [
    "ADMINS",
    "DEFAULT_CACHE_S",
    "EVERYONE",
    "MANAGERS",
    "STAFF",
    "ApiPrincipal",
    "ApiRole",
    "Authenticator",
    "install_authenticator",
    "require_role",
]

DEFAULT_CACHE_S: Final = 2.0
"""How long a token's positive answer is reused without asking the registry again."""
MAX_CACHED: Final = 4096

ADMINS: Final = (ApiRole.ADMIN,)
"""API tokens: only administrators."""
MANAGERS: Final = (ApiRole.ADMIN, ApiRole.ASSET_MANAGER)
"""Changes to gateways and devices (registration, lifecycle, twin, enrollment tokens, bulk import)."""
STAFF: Final = (ApiRole.ADMIN, ApiRole.ASSET_MANAGER, ApiRole.VIEWER)
"""Reading everything except API tokens."""
EVERYONE: Final = (ApiRole.ADMIN, ApiRole.ASSET_MANAGER, ApiRole.VIEWER, ApiRole.CITY_OS)
"""Reading devices, gateways, latest values and history (what the City OS may see)."""

_STATE_KEY: Final = "kakehashi_authenticator"

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    bearerFormat="kh_...",
    description="An API token (`kakehashi agent token create`, or POST /v1/api-tokens as an admin).",
)


@dataclass(frozen=True, slots=True)
class _Cached:
    principal: ApiPrincipal
    until: float


class Authenticator:
    """Answers who a bearer secret belongs to, asking the registry at most once per ``cache_s`` per token."""

    def __init__(
        self, registry: Registry, *, cache_s: float = DEFAULT_CACHE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._registry = registry
        self._cache_s = cache_s
        self._clock = clock
        self._cache: dict[str, _Cached] = {}

    async def principal(self, secret: str) -> ApiPrincipal:
        """The principal of ``secret``; raises the registry's ``TokenRefused`` when the token is not usable."""
        key = hashlib.sha256(secret.encode()).hexdigest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now < cached.until:
            return cached.principal
        self._cache.pop(key, None)
        principal = await self._registry.authenticate_api_token(secret)
        if self._cache_s > 0:
            if len(self._cache) >= MAX_CACHED:
                self._cache = {k: v for k, v in self._cache.items() if now < v.until}
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
            self._cache[key] = _Cached(principal, now + self._cache_s)
        return principal

    def forget(self, name: str) -> None:
        """Drop cached answers for the token named ``name`` (it was just revoked)."""
        self._cache = {k: v for k, v in self._cache.items() if v.principal.name != name}


def install_authenticator(app: FastAPI, authenticator: Authenticator) -> None:
    """Make ``authenticator`` the one :func:`require_role` uses for the routes of ``app``."""
    setattr(app.state, _STATE_KEY, authenticator)


def authenticator_of(app: Any) -> Authenticator:
    found = getattr(app.state, _STATE_KEY, None)
    if not isinstance(found, Authenticator):
        raise RuntimeError("the API app has no authenticator: build it with cloud_agent.api.create_app")
    return found


def _role_list(roles: tuple[ApiRole, ...]) -> str:
    names = [role.value for role in roles]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


RoleDependency = Callable[[Request, HTTPAuthorizationCredentials | None], Coroutine[Any, Any, ApiPrincipal]]


def require_role(*roles: ApiRole) -> RoleDependency:
    """A dependency that authenticates the bearer token and admits only ``roles`` (no roles: any valid token).

    Use it as ``Annotated[ApiPrincipal, Depends(require_role(ApiRole.ADMIN, ...))]``; the principal's ``name`` is
    the actor to record in the audit log.
    """
    allowed = tuple(ApiRole(role) for role in roles) or tuple(ApiRole)

    async def authenticated_principal(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
    ) -> ApiPrincipal:
        if credentials is None:
            raise unauthenticated(
                "this request needs an API token: send the header 'Authorization: Bearer kh_...'",
                reason="api_token_missing",
            )
        principal = await authenticator_of(request.app).principal(credentials.credentials)
        request.state.principal = principal
        if principal.role not in allowed:
            raise forbidden(
                f"API token {principal.name!r} has role {principal.role.value}: only {_role_list(allowed)} may "
                f"{request.method} {request.url.path}"
            )
        return principal

    return authenticated_principal
