"""Self-test of the gateway's identity files: present, key matching the certificate, in date, chained to the bundle.

The chain is built from the trust bundle (``uplink.ca_file``, the fleet's issuing and root CA) by subject and checked
signature by signature up to a self-signed root, each certificate within its dates: the same question the brokers
ask of the gateway's certificate, answered offline.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from gateway.config import GatewayConfig
from gateway.selftest_model import Check
from kakehashi import keys
from kakehashi.errors import KakehashiError

__all__ = ["EXPIRY_WARNING", "identity_checks"]

EXPIRY_WARNING: Final = timedelta(days=30)
REENROLL: Final = "enroll again: ask the asset manager for a token and run `kakehashi gateway provision --force`"


def _chain_problem(leaf: x509.Certificate, bundle: list[x509.Certificate], now: datetime) -> str | None:
    """Why ``leaf`` does not chain to a root in ``bundle``, or None when it does."""
    current = leaf
    for _ in range(len(bundle) + 1):
        issuers = [c for c in bundle if c.subject == current.issuer]
        if not issuers:
            return f"no certificate in the trust bundle issued {current.subject.rfc4514_string()}"
        issuer = issuers[0]
        try:
            current.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            return f"{current.subject.rfc4514_string()} is not signed by {issuer.subject.rfc4514_string()} ({exc})"
        if not issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc:
            return f"the CA {issuer.subject.rfc4514_string()} is outside its validity period"
        if issuer.subject == issuer.issuer:
            return None
        current = issuer
    return "the chain in the trust bundle does not end in a root CA"


def identity_checks(config: GatewayConfig, now: datetime | None = None) -> list[Check]:
    """Files present, key matches certificate, certificate of this gateway and in date (warn under 30 days), chain to
    the bundle."""
    now = now or datetime.now(UTC)
    uplink = config.uplink
    missing = [str(p) for p in (uplink.ca_file, uplink.cert_file, uplink.key_file) if not p.is_file()]
    if missing:
        return [
            Check.failed(
                "identity files",
                f"missing: {', '.join(missing)}",
                "run `kakehashi gateway provision` (or fix the paths in [uplink])",
            )
        ]
    files = (uplink.cert_file, uplink.key_file, uplink.ca_file)
    if len({p.parent for p in files}) == 1:
        seen = f"{', '.join(p.name for p in files)} in {uplink.cert_file.parent}"
    else:
        seen = ", ".join(map(str, files))
    checks = [Check.ok("identity files", seen)]
    try:
        certificate = x509.load_pem_x509_certificate(uplink.cert_file.read_bytes())
    except ValueError:
        return [*checks, Check.failed("certificate", f"{uplink.cert_file} is not a PEM certificate", REENROLL)]
    try:
        key = keys.load_private_key(uplink.key_file)
    except KakehashiError as exc:
        return [*checks, Check.failed("key matches certificate", exc.message, REENROLL)]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != certificate.public_key().public_bytes(der, public):
        checks.append(
            Check.failed(
                "key matches certificate",
                f"{uplink.key_file} is not the key of {uplink.cert_file}",
                "restore the matching pair, or " + REENROLL,
            )
        )
    else:
        checks.append(Check.ok("key matches certificate", f"serial {certificate.serial_number:x}"))
    checks.append(_names(certificate, config.gateway.id))
    checks.append(_dates(certificate, now))
    try:
        bundle = x509.load_pem_x509_certificates(uplink.ca_file.read_bytes())
    except ValueError:
        bundle = []
    problem = _chain_problem(certificate, bundle, now) if bundle else f"{uplink.ca_file} holds no PEM certificate"
    if problem is None:
        checks.append(Check.ok("certificate chain", f"verifies against {uplink.ca_file}"))
    else:
        checks.append(
            Check.failed(
                "certificate chain",
                problem,
                "the certificate is not from this fleet's CA: put the fleet's chain.pem in uplink.ca_file, or "
                + REENROLL,
            )
        )
    return checks


def _names(certificate: x509.Certificate, gateway_id: str) -> Check:
    names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if names != [gateway_id]:
        return Check.failed(
            "certificate identity",
            f"the certificate is for {', '.join(names) or 'no name'}, the config says {gateway_id}",
            "fix [gateway] id, or point [uplink] at this gateway's own certificate and key",
        )
    return Check.ok("certificate identity", f"CN={gateway_id}")


def _dates(certificate: x509.Certificate, now: datetime, name: str = "certificate dates") -> Check:
    until = certificate.not_valid_after_utc
    if now < certificate.not_valid_before_utc:
        return Check.failed(
            name,
            f"not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            "the clock is probably wrong: set it (see the clock check) and run the self-test again",
        )
    if now > until:
        return Check.failed(name, f"expired on {until:%Y-%m-%d}", REENROLL)
    left = until - now
    if left < EXPIRY_WARNING:
        return Check.warning(
            name,
            f"expires on {until:%Y-%m-%d} ({left.days} days left)",
            "renew now: the gateway renews over its current certificate (docs/enrollment.md, Renewing)",
        )
    return Check.ok(name, f"valid until {until:%Y-%m-%d} ({left.days} days left)")
