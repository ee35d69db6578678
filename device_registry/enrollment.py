"""One-time enrollment tokens: a technician's Pi proves it may enroll as a given gateway exactly once.

A token is 256 random bits (``secrets.token_urlsafe(32)``); only its SHA-256 is stored (a fast hash is enough for a
secret of that entropy), so a copy of the database cannot enroll anything. Consuming is one conditional ``UPDATE``
(unused, unexpired, this gateway), so two concurrent uses cannot both succeed; a refusal is then explained by
looking at the row: unknown, for another gateway, already used, or expired.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from device_registry.errors import InvalidInput, TokenRefused
from device_registry.schema import enrollment_tokens


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create(
    conn: AsyncConnection, gateway_id: str, *, ttl: timedelta, actor: str, now: datetime
) -> tuple[str, datetime]:
    """A new token for ``gateway_id`` valid for ``ttl``; returns the token (shown once) and its expiry."""
    if ttl <= timedelta(0) or ttl > timedelta(days=30):
        raise InvalidInput(f"enrollment token lifetime {ttl} must be more than zero and at most 30 days")
    token = secrets.token_urlsafe(32)
    expires_at = now + ttl
    await conn.execute(
        enrollment_tokens.insert().values(
            token_sha256=token_hash(token),
            gateway_id=gateway_id,
            created_by=actor,
            created_at=now,
            expires_at=expires_at,
        )
    )
    return token, expires_at


async def consume(conn: AsyncConnection, token: str, gateway_id: str, *, now: datetime) -> TokenRefused | None:
    """Use ``token`` for ``gateway_id``: None if it was valid (and is now used), else the refusal to raise."""
    digest = token_hash(token)
    used = await conn.execute(
        enrollment_tokens.update()
        .where(
            enrollment_tokens.c.token_sha256 == digest,
            enrollment_tokens.c.gateway_id == gateway_id,
            enrollment_tokens.c.used_at.is_(None),
            enrollment_tokens.c.expires_at > now,
        )
        .values(used_at=now)
    )
    if used.rowcount == 1:
        return None
    row = (await conn.execute(sa.select(enrollment_tokens).where(enrollment_tokens.c.token_sha256 == digest))).first()
    if row is None:
        return TokenRefused("enrollment token is not known: ask for a new one", reason="token_unknown")
    if row.gateway_id != gateway_id:
        return TokenRefused(
            f"enrollment token was issued for another gateway, not {gateway_id}", reason="token_wrong_gateway"
        )
    if row.used_at is not None:
        return TokenRefused(
            f"enrollment token for {gateway_id} was already used at {row.used_at.isoformat()}: tokens work once",
            reason="token_used",
        )
    return TokenRefused(
        f"enrollment token for {gateway_id} expired at {row.expires_at.isoformat()}: ask for a new one",
        reason="token_expired",
    )
