"""The registry's tables (SQLAlchemy Core), identical on SQLite and PostgreSQL.

This is the *current* shape, used by every query. The database gets it through the numbered migrations in
:mod:`device_registry.migrations`; a test checks that a freshly migrated database matches these tables.

Readings and message times are ``double`` epoch seconds (as on the wire); registry records use UTC timestamps.
``readings`` has no foreign key to ``entities``: it is the hot path, ingest checks every device before writing, and
entities are never deleted (decommissioned ones are kept with their history).
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa

from device_registry.columns import BigId, EntityId, JsonDocument, UtcDateTime
from device_registry.lifecycle import WATCH_TAG, State
from device_registry.models import CommandState

metadata: Final = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_STATES: Final = ", ".join(f"'{state.value}'" for state in State)

schema_version: Final = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("applied_at", UtcDateTime, nullable=False),
)
"""One row per applied migration; the schema's version is the highest."""

organisations: Final = sa.Table(
    "organisations",
    metadata,
    sa.Column("id", EntityId, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

entities: Final = sa.Table(
    "entities",
    metadata,
    sa.Column("id", EntityId, primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("organisation_id", EntityId, sa.ForeignKey("organisations.id"), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("state_changed_at", UtcDateTime, nullable=False),
    sa.Column("hardware_serial", sa.String(128)),
    sa.Column("owner", sa.String(200)),
    sa.Column("latitude", sa.Double),
    sa.Column("longitude", sa.Double),
    sa.Column("place", sa.String(200)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("refused_readings", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("seq_floor", sa.BigInteger, nullable=False, server_default="0"),
    sa.CheckConstraint("role IN ('gateway', 'device')", name="role"),
    sa.CheckConstraint(f"state IN ({_STATES})", name="state"),
    sa.Index(None, "organisation_id", "role"),
    sa.Index(
        "uq_entities_hardware_serial_in_service",
        "hardware_serial",
        unique=True,
        sqlite_where=sa.text("hardware_serial IS NOT NULL AND state <> 'decommissioned'"),
        postgresql_where=sa.text("hardware_serial IS NOT NULL AND state <> 'decommissioned'"),
    ),
)
"""Gateways and devices: one id namespace (an id names one certificate CN), one lifecycle.

``seq_floor`` (gateways): sequence numbers up to it were pruned with expired history; they count as duplicates.
"""

devices: Final = sa.Table(
    "devices",
    metadata,
    sa.Column("id", EntityId, sa.ForeignKey("entities.id"), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("profile", sa.String(64)),
    sa.Column("gateway_id", EntityId, sa.ForeignKey("entities.id")),
    sa.Column("bound_at", UtcDateTime),
    sa.Column("consent", sa.Boolean),
    sa.Column("retention_s", sa.BigInteger),
    sa.CheckConstraint(
        f"kind <> '{WATCH_TAG}' OR (consent IS NOT NULL AND retention_s IS NOT NULL)", name="watch_tag_consent"
    ),
    sa.CheckConstraint("retention_s IS NULL OR retention_s > 0", name="retention_positive"),
    sa.Index(None, "gateway_id"),
    sa.Index(None, "kind"),
)
"""What only devices have: kind, hardware profile, gateway binding, consent and retention (watch tags)."""

entity_labels: Final = sa.Table(
    "entity_labels",
    metadata,
    sa.Column("entity_id", EntityId, sa.ForeignKey("entities.id"), primary_key=True),
    sa.Column("key", sa.String(63), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
    sa.Index(None, "key", "value"),
)

certificates: Final = sa.Table(
    "certificates",
    metadata,
    sa.Column("serial", sa.String(40), primary_key=True),
    sa.Column("entity_id", EntityId, sa.ForeignKey("entities.id"), nullable=False),
    sa.Column("not_after", UtcDateTime, nullable=False),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("issued_at", UtcDateTime, nullable=False),
    sa.Column("revoked_at", UtcDateTime),
    sa.Column("revocation_reason", sa.String(1024)),
    sa.CheckConstraint("status IN ('active', 'revoked')", name="status"),
    sa.Index(None, "entity_id"),
)

enrollment_tokens: Final = sa.Table(
    "enrollment_tokens",
    metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("gateway_id", EntityId, sa.ForeignKey("entities.id"), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("used_at", UtcDateTime),
    sa.Index(None, "gateway_id"),
)
"""One-time enrollment tokens, stored as the SHA-256 of the token (tokens are 256-bit random, never stored)."""

twins: Final = sa.Table(
    "twins",
    metadata,
    sa.Column("entity_id", EntityId, sa.ForeignKey("entities.id"), primary_key=True),
    sa.Column("desired", JsonDocument, nullable=False),
    sa.Column("desired_version", sa.BigInteger, nullable=False),
    sa.Column("reported", JsonDocument, nullable=False),
    sa.Column("reported_version", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)
"""One twin per gateway and device. A gateway's ``desired_version`` is the last version issued to it."""

desired_deltas: Final = sa.Table(
    "desired_deltas",
    metadata,
    sa.Column("gateway_id", EntityId, sa.ForeignKey("entities.id"), primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("target_id", EntityId, sa.ForeignKey("entities.id"), nullable=False),
    sa.Column("delta", JsonDocument, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)
"""Every desired delta in wire form, per gateway and version; pending = above the gateway's reported version."""

received_messages: Final = sa.Table(
    "received_messages",
    metadata,
    sa.Column("gateway_id", EntityId, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Index(None, "received_at"),
    sqlite_with_rowid=False,
)
"""Every uplink sequence number received per gateway: the dedupe key and the basis of completeness."""

gap_reports: Final = sa.Table(
    "gap_reports",
    metadata,
    sa.Column("gateway_id", EntityId, sa.ForeignKey("entities.id"), primary_key=True),
    sa.Column("from_seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("to_seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("reported_at", UtcDateTime, nullable=False),
)


def _reading_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("observed_at", sa.Double, nullable=False),
        sa.Column("received_at", sa.Double, nullable=False),
        sa.Column("gateway_id", EntityId, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("clock", sa.String(10), nullable=False),
        sa.Column("unit", sa.String(64)),
        sa.Column("num", sa.Double),
        sa.Column("text", sa.Text),
        sa.Column("flag", sa.Boolean),
        sa.Column("data", sa.LargeBinary),
    ]


readings: Final = sa.Table(
    "readings",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("device_id", EntityId, nullable=False),
    sa.Column("quantity", sa.String(64), nullable=False),
    *_reading_columns(),
    sa.Index(None, "device_id", "observed_at"),
    sa.Index(None, "received_at"),
    sa.Index(None, "gateway_id", "seq"),
)
"""History. The value is in exactly one of ``num``, ``text``, ``flag``, ``data``."""

latest: Final = sa.Table(
    "latest",
    metadata,
    sa.Column("device_id", EntityId, sa.ForeignKey("entities.id"), primary_key=True),
    sa.Column("quantity", sa.String(64), primary_key=True),
    *_reading_columns(),
    sa.Index(None, "received_at"),
)
"""The newest reading (by observed time) of each quantity of each device."""

audit_log: Final = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("entity_id", EntityId),
    sa.Column("reason", sa.String(1024), nullable=False),
    sa.Column("detail", JsonDocument, nullable=False),
    sa.Index(None, "entity_id", "id"),
    sa.Index(None, "at"),
)
"""Append-only (the database refuses UPDATE, DELETE and, on PostgreSQL, TRUNCATE: see migration 2)."""

presence: Final = sa.Table(
    "presence",
    metadata,
    sa.Column("gateway_id", EntityId, sa.ForeignKey("entities.id"), primary_key=True),
    sa.Column("online", sa.Boolean, nullable=False),
    sa.Column("changed_at", sa.Double, nullable=False),
    sa.Column("last_seen", sa.Double, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("health", JsonDocument, nullable=False),
    sa.Index(None, "online", "last_seen"),
)
"""Whether each gateway is connected, from its status messages, last will and heartbeat time-out (epoch seconds)."""

api_tokens: Final = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime),
    sa.Column("revoked_at", UtcDateTime),
    sa.Index(None, "name", unique=True),
)
"""Bearer tokens of the HTTPS API, stored only hashed; ``name`` is the person or system the audit log names."""

_COMMAND_STATES: Final = ", ".join(f"'{state.value}'" for state in CommandState)

commands: Final = sa.Table(
    "commands",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("device_id", EntityId, sa.ForeignKey("entities.id"), nullable=False),
    sa.Column("gateway_id", EntityId, sa.ForeignKey("entities.id"), nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("params", JsonDocument, nullable=False),
    sa.Column("state", sa.String(24), nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=False),
    sa.Column("deadline", sa.Double, nullable=False),
    sa.Column("precondition_version", sa.BigInteger),
    sa.Column("requires_confirmation", sa.Boolean, nullable=False),
    sa.Column("requested_by", sa.String(128), nullable=False),
    sa.Column("confirmed_by", sa.String(128)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("reason", sa.String(1024)),
    sa.Column("result", JsonDocument),
    sa.CheckConstraint(f"state IN ({_COMMAND_STATES})", name="state"),
    sa.Index(None, "device_id", "idempotency_key", unique=True),
    sa.Index(None, "gateway_id", "state", "created_at"),
    sa.Index(None, "state", "deadline"),
)
"""Commands to devices; ids sort in creation order. A repeated (device, idempotency key) is the same command."""

command_steps: Final = sa.Table(
    "command_steps",
    metadata,
    sa.Column("command_id", sa.String(64), sa.ForeignKey("commands.id"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("state", sa.String(24), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("reason", sa.String(1024)),
    sa.Column("detail", JsonDocument, nullable=False),
)
"""Every state a command entered: its whole history (also in the audit log as ``command.<state>``)."""

northbound_outbox: Final = sa.Table(
    "northbound_outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("gateway_id", EntityId, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("queued_at", sa.Double, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("not_before", sa.Double, nullable=False),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("reason", sa.String(1024)),
    sa.Index(None, "state", "id"),  # "pending after id X, by id": a range of this index, whatever the backlog
    sqlite_autoincrement=True,  # ids are never reused, also after the table empties: the pusher reads "after id"
)
"""Readings messages stored but not yet delivered to the City OS: one row per (gateway, seq), written in the ingest
transaction (so nothing stored is missed), deleted once the City OS accepted it; ``state`` is ``pending`` or
``dead`` (dead-lettered with ``reason``)."""

VERSION_1_TABLES: Final = tuple(
    table
    for table in metadata.sorted_tables
    if table not in (schema_version, presence, api_tokens, commands, command_steps, northbound_outbox)
)
"""The tables migration 1 creates (the schema of the first release)."""

APPLICATION_TABLES: Final = tuple(table for table in metadata.sorted_tables if table is not schema_version)
"""Every table except ``schema_version`` (which the migration runner owns), in dependency order."""
