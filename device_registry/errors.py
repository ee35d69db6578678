"""The registry's errors: each one sentence saying what was refused and why, with a short ``reason`` code.

Callers (the cloud agent's API and ingest) count errors by ``reason`` and show the message to people.
"""

from __future__ import annotations

from kakehashi.errors import KakehashiError


class RegistryError(KakehashiError):
    """Something the registry refused; the message says what and how to fix it."""

    reason = "registry"


class InvalidInput(RegistryError):
    """An argument does not follow the registry's rules (an id, a kind, a label, a retention period, ...)."""

    reason = "invalid"


class NotFound(RegistryError):
    """No organisation, gateway, device, certificate or token has that id."""

    reason = "not_found"


class AlreadyExists(RegistryError):
    """An id, certificate serial or hardware serial is already in use."""

    reason = "already_exists"


class IllegalTransition(RegistryError):
    """A lifecycle change that the state machine or one of its preconditions refuses.

    ``reason`` is ``illegal_transition`` when the state machine has no such edge and ``precondition`` when the edge
    exists but the entity is not ready for it (for example no active certificate).
    """

    reason = "illegal_transition"

    def __init__(self, message: str, *, entity_id: str, from_state: str, to_state: str, reason: str | None = None):
        super().__init__(message, reason=reason)
        self.entity_id = entity_id
        self.from_state = from_state
        self.to_state = to_state


class TrafficRefused(RegistryError):
    """A gateway that is not provisioned or active sent a message; its traffic is refused (and counted)."""

    reason = "inactive"


class TokenRefused(RegistryError):
    """An enrollment token cannot be used.

    ``reason`` is one of ``token_unknown``, ``token_wrong_gateway``, ``token_used``, ``token_expired`` or
    ``gateway_decommissioned``.
    """

    reason = "token_refused"


class StaleVersion(RegistryError):
    """A twin version older than the stored one (``stale_version``) or never issued (``unknown_version``)."""

    reason = "stale_version"


class SchemaMismatch(RegistryError):
    """The database schema is newer than this software (``schema_too_new``) or not yet migrated (``schema_too_old``)."""

    reason = "schema_mismatch"


class DatabaseSetupError(RegistryError):
    """The database URL or the database itself cannot be used (unsupported driver, no WAL, ...)."""

    reason = "database"


class CommandRefused(RegistryError):
    """A command cannot be created or moved as asked; ``http_status`` is how the API answers it.

    Reasons: ``device_inactive`` (the device is not provisioned or active), ``gateway_inactive``, ``device_unbound``,
    ``idempotency_conflict`` (the key was used for another command), ``illegal_transition`` (the command's state
    does not allow it), ``command_expired``, ``confirmation_by_requester`` (a second person must confirm).
    """

    reason = "command_refused"

    def __init__(self, message: str, *, reason: str, http_status: int = 409) -> None:
        super().__init__(message, reason=reason)
        self.http_status = http_status
