"""Client certificate verification: chain, validity and usage, then revocation against the CRL, then identity.

``cryptography.x509.verification`` checks the chain, the dates and the clientAuth usage but not revocation, so
the CRL is checked here: it must be signed by the leaf's issuing CA, still be current, and not list the leaf.
Finally the SAN URI must name the same id as the subject CN. Each failure is a :class:`PkiError` whose
``reason`` names the failed step: ``chain``, ``expired``, ``crl``, ``crl_stale``, ``revoked`` or ``identity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import NameOID

from cloud_agent.pki.errors import PkiError
from kakehashi.errors import KakehashiError
from kakehashi.identity import SAN_URI_PREFIX, Role, parse_san_uri


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _cn(certificate: x509.Certificate) -> str | None:
    values = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _label(certificate: x509.Certificate) -> str:
    return _cn(certificate) or certificate.subject.rfc4514_string() or f"serial {certificate.serial_number:x}"


def _validity_problem(certificate: x509.Certificate, now: datetime, what: str) -> PkiError | None:
    if now > certificate.not_valid_after_utc:
        return PkiError(
            f"{what} {_label(certificate)!r} expired at {certificate.not_valid_after_utc.isoformat()}; renew it",
            reason="expired",
        )
    if now < certificate.not_valid_before_utc:
        return PkiError(
            f"{what} {_label(certificate)!r} is not valid before "
            f"{certificate.not_valid_before_utc.isoformat()}; check this machine's clock",
            reason="expired",
        )
    return None


def _check_chain(
    leaf: x509.Certificate, root: x509.Certificate, intermediates: Sequence[x509.Certificate], now: datetime
) -> list[x509.Certificate]:
    verifier = verification.PolicyBuilder().store(verification.Store([root])).time(now).build_client_verifier()
    try:
        return verifier.verify(leaf, list(intermediates)).chain
    except (verification.VerificationError, ValueError) as exc:
        problem = _validity_problem(leaf, now, "the certificate")
        for ca in (*intermediates, root):
            problem = problem or _validity_problem(ca, now, "the CA certificate")
        if problem is not None:
            raise problem from None
        raise PkiError(
            f"the certificate {_label(leaf)!r} does not chain to this fleet's CA for client use ({exc}); "
            "issue it with `kakehashi pki issue` from this PKI",
            reason="chain",
        ) from None


def _check_crl(
    leaf: x509.Certificate, issuer: x509.Certificate, crl: x509.CertificateRevocationList, now: datetime
) -> None:
    if crl.issuer != issuer.subject:
        raise PkiError(
            f"the CRL was issued by {crl.issuer.rfc4514_string()!r}, not by the certificate's issuing CA "
            f"{issuer.subject.rfc4514_string()!r}; use the CRL of this PKI",
            reason="crl",
        )
    public_key = issuer.public_key()
    try:
        valid = isinstance(public_key, ec.EllipticCurvePublicKey) and crl.is_signature_valid(public_key)
    except (InvalidSignature, ValueError, TypeError):
        valid = False
    if not valid:
        raise PkiError(
            "the CRL signature does not verify with the issuing CA's key; publish a fresh one with `kakehashi pki crl`",
            reason="crl",
        )
    next_update = crl.next_update_utc
    if next_update is None:
        raise PkiError("the CRL has no nextUpdate; publish a fresh one with `kakehashi pki crl`", reason="crl")
    if now > next_update:
        raise PkiError(
            f"the CRL expired at {next_update.isoformat()}; publish a fresh one with `kakehashi pki crl`",
            reason="crl_stale",
        )
    if now < crl.last_update_utc:
        raise PkiError(
            f"the CRL is not valid before {crl.last_update_utc.isoformat()}; check this machine's clock",
            reason="crl",
        )
    entry = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    if entry is not None:
        raise PkiError(
            f"the certificate {_label(leaf)!r} (serial {leaf.serial_number:x}) was revoked at "
            f"{entry.revocation_date_utc.isoformat()}; issue a new one after checking why",
            reason="revoked",
        )


def _check_identity(leaf: x509.Certificate) -> tuple[Role, str]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(SAN_URI_PREFIX)]
    if len(uris) != 1:
        raise PkiError(
            f"the certificate {_label(leaf)!r} must carry exactly one {SAN_URI_PREFIX}<role>:<id> SAN URI "
            f"(it has {len(uris)}); issue it with `kakehashi pki issue`",
            reason="identity",
        )
    try:
        role, identity = parse_san_uri(uris[0])
    except KakehashiError as exc:
        raise PkiError(exc.message, reason="identity") from None
    cn = _cn(leaf)
    if cn != identity:
        raise PkiError(
            f"the certificate's subject CN {cn!r} does not match the id {identity!r} in its SAN URI; "
            "issue it with `kakehashi pki issue`",
            reason="identity",
        )
    return role, identity


def verify_client_certificate(
    leaf: x509.Certificate,
    *,
    root: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    crl: x509.CertificateRevocationList,
    now: datetime,
) -> tuple[Role, str]:
    """Return ``(role, id)`` proven by ``leaf``, or raise :class:`PkiError` naming the failed check."""
    now = _utc(now)
    chain = _check_chain(leaf, root, intermediates, now)
    issuer = chain[1] if len(chain) > 1 else root
    _check_crl(leaf, issuer, crl, now)
    return _check_identity(leaf)
