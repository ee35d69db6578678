"""API tokens: bearer secrets with a role, stored only hashed, named after the person or system that holds them.

A token is ``kh_`` + 256 random bits; only its SHA-256 is stored. The token's name is the actor every change made
with it is attributed to in the audit log. Tokens may expire and can be revoked; a refusal says which of unknown,
expired or revoked applies (the API answers 401 with that reason).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry.errors import AlreadyExists, InvalidInput, NotFound, TokenRefused
from device_registry.models import ApiPrincipal, ApiRole, ApiToken
from device_registry.schema import api_tokens

TOKEN_PREFIX: Final = "kh_"
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
MAX_TTL: Final = timedelta(days=3650)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"API token name {name!r} must be 1-64 of a-z, 0-9, '.', '_', '@', '-' (the person or system, "
            "e.g. tanaka@city.kakogawa or city-os)"
        )
    return name


def check_role(role: str) -> ApiRole:
    try:
        return ApiRole(role)
    except ValueError:
        roles = ", ".join(r.value for r in ApiRole)
        raise InvalidInput(f"API role {role!r} is not one of {roles}") from None


def _token(row: Any) -> ApiToken:
    return ApiToken(
        name=row.name,
        role=ApiRole(row.role),
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


async def create(
    conn: AsyncConnection, name: str, role: ApiRole, *, ttl: timedelta | None, actor: str, now: datetime
) -> tuple[str, ApiToken]:
    """A new token; returns the secret (shown once) and the stored record."""
    if ttl is not None and not timedelta(0) < ttl <= MAX_TTL:
        raise InvalidInput(f"API token lifetime {ttl} must be more than zero and at most {MAX_TTL.days} days")
    taken = await conn.scalar(sa.select(api_tokens.c.name).where(api_tokens.c.name == name))
    if taken is not None:
        raise AlreadyExists(f"an API token named {name!r} already exists: revoke it first or choose another name")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    values = {
        "token_sha256": token_hash(secret),
        "name": name,
        "role": role.value,
        "created_by": actor,
        "created_at": now,
        "expires_at": None if ttl is None else now + ttl,
        "revoked_at": None,
    }
    await conn.execute(api_tokens.insert().values(**values))
    stored = (await conn.execute(sa.select(api_tokens).where(api_tokens.c.name == name))).one()
    return secret, _token(stored)


async def authenticate(conn: AsyncConnection, secret: str, *, now: datetime) -> ApiPrincipal:
    """The principal of ``secret``, or :class:`TokenRefused` (``api_token_unknown|expired|revoked``)."""
    if not isinstance(secret, str) or not secret.startswith(TOKEN_PREFIX) or len(secret) > 128:
        raise TokenRefused("the API token is not a Kakehashi token (they start with kh_)", reason="api_token_unknown")
    row = (await conn.execute(sa.select(api_tokens).where(api_tokens.c.token_sha256 == token_hash(secret)))).first()
    if row is None:
        raise TokenRefused("the API token is unknown: ask an administrator for one", reason="api_token_unknown")
    if row.revoked_at is not None:
        raise TokenRefused(f"the API token {row.name!r} was revoked", reason="api_token_revoked")
    if row.expires_at is not None and row.expires_at <= now:
        expired = f"the API token {row.name!r} expired at {row.expires_at.isoformat()}: ask for a new one"
        raise TokenRefused(expired, reason="api_token_expired")
    return ApiPrincipal(name=row.name, role=ApiRole(row.role))


async def revoke(conn: AsyncConnection, name: str, *, now: datetime) -> ApiToken:
    row = (await conn.execute(sa.select(api_tokens).where(api_tokens.c.name == name).with_for_update())).first()
    if row is None:
        raise NotFound(f"there is no API token named {name!r}")
    if row.revoked_at is None:
        await conn.execute(api_tokens.update().where(api_tokens.c.name == name).values(revoked_at=now))
    found = (await conn.execute(sa.select(api_tokens).where(api_tokens.c.name == name))).one()
    return _token(found)


async def listing(conn: AsyncConnection) -> list[ApiToken]:
    rows = await conn.execute(sa.select(api_tokens).order_by(api_tokens.c.name))
    return [_token(row) for row in rows]
