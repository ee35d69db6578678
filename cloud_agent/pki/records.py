"""One row of the CA database: what the CA knows about a certificate it issued, and its JSON form."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from kakehashi.identity import Role, parse_role

Kind = Literal["client", "server"]
Status = Literal["active", "revoked"]


def _time_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def fingerprint_sha256(certificate: x509.Certificate) -> str:
    """The SHA-256 fingerprint of ``certificate`` (over its DER form) in lowercase hex, without colons."""
    return certificate.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class CertRecord:
    """A certificate issued by the fleet CA. Times are UTC-aware; ``status`` ignores expiry (``state_at``)."""

    serial: int
    identity: str
    role: Role
    kind: Kind
    not_before: datetime
    not_after: datetime
    status: Status
    revoked_at: datetime | None
    revocation_reason: str | None
    fingerprint_sha256: str
    certificate_path: Path

    @property
    def serial_hex(self) -> str:
        """The serial number in lowercase hex, as used in file names and in the CLI."""
        return format(self.serial, "x")

    def is_valid_at(self, now: datetime) -> bool:
        """True if the certificate is unrevoked and ``now`` lies within its validity period."""
        return self.status == "active" and self.not_before <= now <= self.not_after

    def state_at(self, now: datetime) -> str:
        """``revoked``, ``expired``, ``pending`` (not yet valid) or ``active`` at ``now``, for display."""
        if self.status == "revoked":
            return "revoked"
        if now > self.not_after:
            return "expired"
        if now < self.not_before:
            return "pending"
        return "active"

    @classmethod
    def from_certificate(
        cls, certificate: x509.Certificate, *, identity: str, role: Role, kind: Kind, path: Path
    ) -> CertRecord:
        """The record of a freshly issued ``certificate`` stored at ``path``."""
        return cls(
            serial=certificate.serial_number,
            identity=identity,
            role=role,
            kind=kind,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            status="active",
            revoked_at=None,
            revocation_reason=None,
            fingerprint_sha256=fingerprint_sha256(certificate),
            certificate_path=path,
        )

    def to_json(self, base: Path | None = None) -> dict[str, Any]:
        """The record as JSON-ready data; the certificate path is made relative to ``base`` when given."""
        path = self.certificate_path
        if base is not None and path.is_relative_to(base):
            path = path.relative_to(base)
        return {
            "serial": self.serial_hex,
            "identity": self.identity,
            "role": self.role.value,
            "kind": self.kind,
            "not_before": _time_text(self.not_before),
            "not_after": _time_text(self.not_after),
            "status": self.status,
            "revoked_at": None if self.revoked_at is None else _time_text(self.revoked_at),
            "revocation_reason": self.revocation_reason,
            "fingerprint_sha256": self.fingerprint_sha256,
            "certificate_path": str(path),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], base: Path) -> CertRecord:
        """Read a record written by :meth:`to_json`; a relative certificate path is resolved against ``base``.

        Raises ``KeyError``, ``ValueError`` or ``TypeError`` on malformed data (the store reports it).
        """
        status = doc["status"]
        kind = doc["kind"]
        if status not in ("active", "revoked") or kind not in ("client", "server"):
            raise ValueError(f"bad status {status!r} or kind {kind!r}")
        revoked_at = doc.get("revoked_at")
        return cls(
            serial=int(doc["serial"], 16),
            identity=str(doc["identity"]),
            role=parse_role(doc["role"]),
            kind=kind,
            not_before=_parse_time(doc["not_before"]),
            not_after=_parse_time(doc["not_after"]),
            status=status,
            revoked_at=None if revoked_at is None else _parse_time(revoked_at),
            revocation_reason=doc.get("revocation_reason"),
            fingerprint_sha256=str(doc["fingerprint_sha256"]),
            certificate_path=base / doc["certificate_path"],
        )
