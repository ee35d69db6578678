"""Column types that behave the same on SQLite and PostgreSQL: UTC timestamps, JSON documents, 64-bit keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect


class UtcDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC datetime: ``timestamptz`` on PostgreSQL, ISO text in UTC on SQLite (which sorts correctly).

    Naive datetimes are refused so that no local time ever reaches the database.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: pass an aware datetime (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JsonDocument: Final = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
"""A JSON object: ``jsonb`` on PostgreSQL, text on SQLite."""

BigId: Final = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""A 64-bit surrogate key; on SQLite an ``INTEGER PRIMARY KEY`` (the rowid), which is also 64-bit."""

EntityId: Final = sa.String(63)
"""A Kakehashi id (see :mod:`kakehashi.identity`)."""
