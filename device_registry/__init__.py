"""The device registry: the device model (gateways, devices, certificates, lifecycle, twin, commands, readings,
audit) and its storage, SQLite by default and PostgreSQL for scale, with one schema and migrations.

Start with :class:`Registry` (``await Registry.open(url)``); ``docs/registry.md`` describes the model and rules.
"""

from device_registry.database import open_registry
from device_registry.errors import (
    AlreadyExists,
    DatabaseSetupError,
    IllegalTransition,
    InvalidInput,
    NotFound,
    RegistryError,
    SchemaMismatch,
    StaleVersion,
    TokenRefused,
    TrafficRefused,
)
from device_registry.lifecycle import WATCH_TAG, State
from device_registry.migrations import HEAD, MigrationReport, migrate
from device_registry.models import (
    AuditEntry,
    Certificate,
    Completeness,
    DesiredDelta,
    Device,
    GapRecord,
    Gateway,
    HardwareReplacement,
    IngestResult,
    Location,
    Organisation,
    Page,
    PurgeResult,
    Received,
    SeqRange,
    StoredReading,
    Transition,
    Twin,
)
from device_registry.registry import DEFAULT_RETENTION, Registry

__all__ = [
    "DEFAULT_RETENTION",
    "HEAD",
    "WATCH_TAG",
    "AlreadyExists",
    "AuditEntry",
    "Certificate",
    "Completeness",
    "DatabaseSetupError",
    "DesiredDelta",
    "Device",
    "GapRecord",
    "Gateway",
    "HardwareReplacement",
    "IllegalTransition",
    "IngestResult",
    "InvalidInput",
    "Location",
    "MigrationReport",
    "NotFound",
    "Organisation",
    "Page",
    "PurgeResult",
    "Received",
    "Registry",
    "RegistryError",
    "SchemaMismatch",
    "SeqRange",
    "StaleVersion",
    "State",
    "StoredReading",
    "TokenRefused",
    "TrafficRefused",
    "Transition",
    "Twin",
    "migrate",
    "open_registry",
]
