"""Gateway enrollment and renewal on the agent: check the request, issue the certificate, record it in the registry.

``enroll`` takes a one-time enrollment token and a CSR made on the Pi; ``renew`` takes the gateway's current
certificate, a proof that it holds the current key, and a CSR for a new key. Both return an
:class:`EnrollmentResult` (certificate, issuing CA, trust bundle). Every refusal is an :class:`EnrollmentError`
subclass with a specific ``reason`` code, a one-sentence message with the fix, and the ``http_status`` the HTTPS
API answers with. ``docs/enrollment.md`` describes the flow for technicians.

Order of checks in ``enroll``: everything that depends only on the request (id syntax, CSR format, signature, key
type, CN) comes first, so that a wrong CSR does not burn the token and reveals nothing about the fleet. Only then is
the token consumed; questions about the gateway (does it exist, is it decommissioned) are answered through the
token's refusal, so that nobody without a token can probe which gateways exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cloud_agent.pki.authority import CertificateAuthority, CertRecord
from cloud_agent.pki.csr import describe_key, parse_csr, subject_cn
from cloud_agent.pki.errors import PkiError
from device_registry import InvalidInput, NotFound, Registry, State, TokenRefused
from kakehashi.errors import KakehashiError
from kakehashi.identity import IdentityError, Role, validate_id
from kakehashi.log import get_logger

__all__ = [
    "RENEWAL_FRACTION",
    "CertificateRefused",
    "CsrRefused",
    "EnrollmentDisabled",
    "EnrollmentError",
    "EnrollmentResult",
    "EnrollmentUnavailable",
    "GatewayConflict",
    "InvalidEnrollmentRequest",
    "RenewalForbidden",
    "TokenRejected",
    "check_gateway_csr",
    "check_local_broker_csr",
    "enroll",
    "renew",
    "renewal_opens_at",
]

log = get_logger(__name__)

RENEWAL_FRACTION: Final = 1 / 3
"""Renewal is accepted once less than this fraction of the current certificate's lifetime remains (or with force)."""

_REMAKE: Final = "make a new key and CSR on the Pi (`kakehashi gateway provision` does it)"
_RENROLL: Final = "ask an asset manager for an enrollment token and enroll again"


# ------------------------------------------------------------------------------------------------------- errors


class EnrollmentError(KakehashiError):
    """An enrollment or renewal was refused; ``reason`` says which check failed, ``http_status`` how the API answers."""

    reason = "enrollment"
    http_status: ClassVar[int] = 400


class EnrollmentDisabled(EnrollmentError):
    """This agent has no certificate authority configured, so it cannot enroll gateways."""

    reason = "enrollment_disabled"
    http_status: ClassVar[int] = 503


class EnrollmentUnavailable(EnrollmentError):
    """The agent's CA cannot be used right now (``crl_stale``, ``crl_invalid``, ``ca_failure``): the fix is on the
    agent's side, not the gateway's."""

    reason = "ca_failure"
    http_status: ClassVar[int] = 503


class InvalidEnrollmentRequest(EnrollmentError):
    """The request is malformed: ``invalid_id``, ``certificate_unreadable`` or ``signature_unreadable``."""

    reason = "invalid_request"
    http_status: ClassVar[int] = 400


class CsrRefused(EnrollmentError):
    """The CSR cannot be signed: ``csr_invalid`` (not a CSR), ``csr_signature``, ``csr_key_type``, ``csr_subject``
    (CN is not the gateway id) or ``csr_key_reused`` (a renewal must bring a new key)."""

    reason = "csr_invalid"
    http_status: ClassVar[int] = 400


class TokenRejected(EnrollmentError):
    """The enrollment token does not allow this enrollment: ``token_unknown``, ``token_wrong_gateway``,
    ``token_used`` or ``token_expired``."""

    reason = "token_unknown"
    http_status: ClassVar[int] = 401


class CertificateRefused(EnrollmentError):
    """The current certificate or the proof of possession does not authenticate a renewal: ``certificate_expired``,
    ``certificate_revoked``, ``certificate_untrusted``, ``certificate_identity`` or ``signature_invalid``."""

    reason = "certificate_untrusted"
    http_status: ClassVar[int] = 401


class RenewalForbidden(EnrollmentError):
    """A valid certificate asked for what it may not: ``certificate_wrong_gateway`` or ``certificate_wrong_role``."""

    reason = "certificate_wrong_gateway"
    http_status: ClassVar[int] = 403


class GatewayConflict(EnrollmentError):
    """The gateway's state does not allow it: ``gateway_decommissioned``, ``gateway_suspended``,
    ``gateway_not_enrolled``, ``renewal_too_early`` or ``identity_conflict`` (the id belongs to another role)."""

    reason = "gateway_conflict"
    http_status: ClassVar[int] = 409


# ------------------------------------------------------------------------------------------------------- result


@dataclass(frozen=True, slots=True)
class EnrollmentResult:
    """What the gateway installs: its certificate, the issuing CA, and the fleet trust bundle (all PEM)."""

    gateway_id: str
    certificate_pem: str
    chain_pem: str
    """The issuing intermediate CA that signed the certificate."""
    trust_bundle_pem: str
    """Issuing + root CA: what the gateway trusts for the cloud broker and the agent."""
    serial: str
    """Lowercase hex, as in the registry and ``kakehashi pki show``."""
    not_before: datetime
    not_after: datetime
    renewed: bool
    """True if an earlier certificate of the gateway is still valid beside this one (they overlap)."""
    local_broker_certificate_pem: str | None = None
    """The TLS server certificate of the gateway's local broker (for its nodes), when the request asked for one."""
    local_broker_serial: str | None = None


def renewal_opens_at(not_before: datetime, not_after: datetime) -> datetime:
    """When a certificate valid ``not_before``..``not_after`` may be renewed without ``force``."""
    return not_after - (not_after - not_before) * RENEWAL_FRACTION


# ------------------------------------------------------------------------------------------------------- checks


def _gateway_id(value: str) -> str:
    try:
        return validate_id(value)
    except IdentityError as exc:
        raise InvalidEnrollmentRequest(exc.message, reason="invalid_id") from None


def check_gateway_csr(csr_pem: str | bytes, gateway_id: str) -> x509.CertificateSigningRequest:
    """The parsed CSR if it is intact, holds an ECDSA P-256 key and has subject CN = ``gateway_id``.

    Each refusal is a :class:`CsrRefused` naming what is wrong: ``csr_invalid``, ``csr_signature``,
    ``csr_key_type`` or ``csr_subject``.
    """
    data = csr_pem.encode() if isinstance(csr_pem, str) else bytes(csr_pem)
    try:
        request = parse_csr(data)
    except PkiError as exc:
        raise CsrRefused(exc.message, reason="csr_invalid") from None
    try:
        intact = request.is_signature_valid
    except Exception:  # an algorithm cryptography cannot check: treat like a broken signature
        intact = False
    if not intact:
        raise CsrRefused(
            f"the CSR's signature does not verify (it was damaged or altered); {_REMAKE}", reason="csr_signature"
        )
    key = request.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CsrRefused(
            f"the CSR holds a {describe_key(key)} key but gateways need ECDSA P-256; {_REMAKE}", reason="csr_key_type"
        )
    try:
        cn = subject_cn(request)
    except PkiError as exc:
        raise CsrRefused(exc.message, reason="csr_subject") from None
    if cn != gateway_id:
        raise CsrRefused(
            f"the CSR's subject CN is {cn!r} but the gateway is {gateway_id!r}: make the CSR for {gateway_id}",
            reason="csr_subject",
        )
    return request


def check_local_broker_csr(
    csr_pem: str | bytes, gateway_id: str, client_csr: x509.CertificateSigningRequest
) -> x509.CertificateSigningRequest:
    """The local broker's CSR: the same rules as the gateway's (P-256, CN = gateway id), with a key of its own."""
    try:
        request = check_gateway_csr(csr_pem, gateway_id)
    except CsrRefused as exc:
        raise CsrRefused(f"local broker CSR: {exc.message}", reason=exc.reason) from None
    if _public_der(request.public_key()) == _public_der(client_csr.public_key()):
        raise CsrRefused(
            "the local broker's CSR reuses the gateway's client key: make a separate key for the local broker; "
            + _REMAKE,
            reason="csr_key_reused",
        )
    return request


def _public_der(key: object) -> bytes:
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_certificate(certificate_pem: str | bytes) -> x509.Certificate:
    data = certificate_pem.encode() if isinstance(certificate_pem, str) else bytes(certificate_pem)
    try:
        return x509.load_pem_x509_certificate(data)
    except Exception:  # the Rust parser can raise unusual types for hostile input
        raise InvalidEnrollmentRequest(
            "the current certificate is not a PEM certificate: send the file the gateway uses (gateway.crt)",
            reason="certificate_unreadable",
        ) from None


def _decode_signature(signature: str | bytes) -> bytes:
    if isinstance(signature, bytes):
        return signature
    try:
        return base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidEnrollmentRequest(
            "the signature is not base64: send base64 of the DER ECDSA-SHA256 signature over the CSR's DER bytes",
            reason="signature_unreadable",
        ) from None


def _verify_possession(certificate: x509.Certificate, csr: x509.CertificateSigningRequest, signature: bytes) -> None:
    """The signature must be ECDSA-SHA256 over the CSR's DER bytes by the current certificate's key."""
    key = certificate.public_key()
    try:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        key.verify(signature, csr.public_bytes(serialization.Encoding.DER), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise CertificateRefused(
            "the signature over the CSR was not made with the current certificate's key: sign the new CSR's DER "
            "bytes with the key that belongs to gateway.crt",
            reason="signature_invalid",
        ) from None


def _authenticate(authority: CertificateAuthority, certificate: x509.Certificate, now: datetime) -> tuple[Role, str]:
    try:
        return authority.verify_client(certificate, now=now)
    except PkiError as exc:
        match exc.reason:
            case "expired" if now < certificate.not_valid_before_utc:
                raise CertificateRefused(
                    f"the current certificate is not valid before {certificate.not_valid_before_utc.isoformat()}: "
                    "check the clocks of the Pi and the agent, then retry",
                    reason="certificate_expired",
                ) from None
            case "expired":
                raise CertificateRefused(
                    f"{exc.message.removesuffix('; renew it')}: an expired certificate cannot renew itself; {_RENROLL}",
                    reason="certificate_expired",
                ) from None
            case "revoked":
                raise CertificateRefused(
                    f"the current certificate (serial {certificate.serial_number:x}) is revoked; {_RENROLL}",
                    reason="certificate_revoked",
                ) from None
            case "crl" | "crl_stale":
                log.error("enrollment_crl_unusable", reason=exc.reason, detail=exc.message)
                raise EnrollmentUnavailable(
                    "the agent cannot check revocation right now (its CRL is unusable); retry later and tell the "
                    "operator to publish a fresh CRL with `kakehashi pki crl`",
                    reason="crl_stale" if exc.reason == "crl_stale" else "crl_invalid",
                ) from None
            case "identity":
                raise CertificateRefused(f"{exc.message}; {_RENROLL}", reason="certificate_identity") from None
            case _:
                raise CertificateRefused(
                    f"the current certificate is not from this fleet's CA ({exc.reason}); {_RENROLL}",
                    reason="certificate_untrusted",
                ) from None


def _token_rejection(refusal: TokenRefused, gateway_id: str) -> EnrollmentError:
    if refusal.reason == "gateway_decommissioned":
        return GatewayConflict(
            f"gateway {gateway_id} is decommissioned and can never enroll again: register new hardware under a new id",
            reason="gateway_decommissioned",
        )
    messages = {
        "token_unknown": "the enrollment token is not known: check that it was copied completely, or ask for a new one",
        "token_wrong_gateway": f"the enrollment token was made for another gateway, not {gateway_id}: use the token "
        f"created for {gateway_id}, or check the gateway id",
        "token_used": f"the enrollment token for {gateway_id} was already used (tokens work once): ask an asset "
        "manager for a new one",
        "token_expired": f"the enrollment token for {gateway_id} has expired: ask an asset manager for a new one",
    }
    reason = refusal.reason if refusal.reason in messages else "token_unknown"
    return TokenRejected(messages[reason], reason=reason)


async def _consume_token(registry: Registry, token: str, gateway_id: str) -> None:
    try:
        await registry.consume_enrollment_token(token, gateway_id)
    except TokenRefused as refusal:
        raise _token_rejection(refusal, gateway_id) from None
    except NotFound:
        # no gateway with that id: answered like an unknown token, so that nobody can probe which ids exist
        raise TokenRejected(
            f"the enrollment token is not valid for gateway {gateway_id}: check the gateway id and the token, "
            "or ask for a new token",
            reason="token_unknown",
        ) from None


# ------------------------------------------------------------------------------------------------------ issuing


def _has_valid_certificate(authority: CertificateAuthority, gateway_id: str, now: datetime) -> bool:
    return any(r.kind == "client" and r.is_valid_at(now) for r in authority.records_for(gateway_id))


def _issue(
    authority: CertificateAuthority, request: x509.CertificateSigningRequest, gateway_id: str, *, renew: bool
) -> CertRecord:
    other_roles = {record.role for record in authority.records_for(gateway_id)} - {Role.GATEWAY}
    if other_roles:
        raise GatewayConflict(
            f"the id {gateway_id} already belongs to a {other_roles.pop().value} in the CA and an id keeps its role "
            "forever: register the gateway under another id",
            reason="identity_conflict",
        )
    try:
        return authority.issue(request, Role.GATEWAY, gateway_id, renew=renew)
    except PkiError as exc:
        log.error("enrollment_ca_failure", gateway=gateway_id, detail=exc.message)
        raise EnrollmentUnavailable(
            f"the CA could not issue the certificate ({exc.message}); retry, and tell the operator if it persists",
            reason="ca_failure",
        ) from None


async def _issue_and_record(
    registry: Registry,
    authority: CertificateAuthority,
    request: x509.CertificateSigningRequest,
    gateway_id: str,
    *,
    renew: bool,
    local_broker: x509.CertificateSigningRequest | None = None,
) -> EnrollmentResult:
    record = await asyncio.to_thread(_issue, authority, request, gateway_id, renew=renew)
    try:
        await registry.record_certificate(gateway_id, record.serial_hex, record.not_after, actor=gateway_id)
    except InvalidInput:
        # decommissioned while the CA was signing: the new certificate must not outlive the gateway
        if (await registry.get_gateway(gateway_id)).state is not State.DECOMMISSIONED:
            raise
        await asyncio.to_thread(authority.revoke, gateway_id, "cessation_of_operation")
        raise GatewayConflict(
            f"gateway {gateway_id} was decommissioned during enrollment; its certificates are revoked",
            reason="gateway_decommissioned",
        ) from None
    certificate_pem = await asyncio.to_thread(record.certificate_path.read_text)
    bundle = await asyncio.to_thread(authority.trust_bundle_path.read_text)
    chain = authority.issuing_certificate.public_bytes(serialization.Encoding.PEM).decode()
    broker: CertRecord | None = None
    if local_broker is not None:
        broker = await asyncio.to_thread(_issue_local_broker, authority, local_broker, gateway_id)
    return EnrollmentResult(
        gateway_id=gateway_id,
        certificate_pem=certificate_pem,
        chain_pem=chain,
        trust_bundle_pem=bundle,
        serial=record.serial_hex,
        not_before=record.not_before,
        not_after=record.not_after,
        renewed=renew,
        local_broker_certificate_pem=None if broker is None else broker.certificate_path.read_text(),
        local_broker_serial=None if broker is None else broker.serial_hex,
    )


def _issue_local_broker(
    authority: CertificateAuthority, request: x509.CertificateSigningRequest, gateway_id: str
) -> CertRecord:
    try:
        return authority.issue_local_broker(request, gateway_id)
    except PkiError as exc:
        log.error("enrollment_ca_failure", gateway=gateway_id, detail=exc.message, certificate="local_broker")
        raise EnrollmentUnavailable(
            f"the CA could not issue the local broker's certificate ({exc.message}); retry, and tell the operator "
            "if it persists",
            reason="ca_failure",
        ) from None


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now.astimezone(UTC)


# ------------------------------------------------------------------------------------------------ the two calls


async def enroll(
    registry: Registry,
    authority: CertificateAuthority | None,
    *,
    gateway_id: str,
    token: str,
    csr_pem: str | bytes,
    local_broker_csr_pem: str | bytes | None = None,
) -> EnrollmentResult:
    """Enroll a gateway with its one-time token and the CSR its Pi made; the gateway becomes provisioned.

    A gateway that still has a valid certificate (it was wiped and re-enrolls with a fresh token) gets a new one
    beside it: both stay valid until the old one expires (``renewed`` is True in the result). With
    ``local_broker_csr_pem`` (a second key made on the Pi) it also gets its local broker's server certificate
    (:meth:`~cloud_agent.pki.authority.CertificateAuthority.issue_local_broker`).
    """
    if authority is None:
        raise EnrollmentDisabled("this agent enrolls no gateways (it has no CA configured); use the enrolling agent")
    try:
        gateway_id = _gateway_id(gateway_id)
        request = check_gateway_csr(csr_pem, gateway_id)
        broker = None
        if local_broker_csr_pem is not None:
            broker = check_local_broker_csr(local_broker_csr_pem, gateway_id, request)
        await _consume_token(registry, token, gateway_id)
    except EnrollmentError as exc:
        log.warning("enrollment_refused", gateway=gateway_id, reason=exc.reason, detail=exc.message)
        raise
    renew = await asyncio.to_thread(_has_valid_certificate, authority, gateway_id, _now(None))
    result = await _issue_and_record(registry, authority, request, gateway_id, renew=renew, local_broker=broker)
    log.info("gateway_enrolled", gateway=gateway_id, serial=result.serial, not_after=result.not_after.isoformat())
    return result


async def renew(
    registry: Registry,
    authority: CertificateAuthority | None,
    *,
    gateway_id: str,
    csr_pem: str | bytes,
    certificate_pem: str | bytes,
    signature: str | bytes,
    force: bool = False,
    now: datetime | None = None,
    local_broker_csr_pem: str | bytes | None = None,
) -> EnrollmentResult:
    """Issue a gateway a new certificate over its current one; both stay valid until the current one expires.

    With ``local_broker_csr_pem`` the local broker's server certificate is renewed in the same call.

    ``signature`` is the DER ECDSA-SHA256 signature (bytes, or base64 text) over the new CSR's DER encoding, made
    with the current certificate's private key. Without ``force`` the renewal is refused until less than
    :data:`RENEWAL_FRACTION` of the current certificate's lifetime remains.
    """
    if authority is None:
        raise EnrollmentDisabled("this agent renews no certificates (it has no CA configured); use the enrolling agent")
    moment = _now(now)
    try:
        gateway_id = _gateway_id(gateway_id)
        current = _load_certificate(certificate_pem)
        proof = _decode_signature(signature)
        role, identity = await asyncio.to_thread(_authenticate, authority, current, moment)
        if role is not Role.GATEWAY:
            raise RenewalForbidden(
                f"the certificate belongs to a {role.value}, not a gateway: only gateways renew here",
                reason="certificate_wrong_role",
            )
        if identity != gateway_id:
            raise RenewalForbidden(
                f"the certificate is {identity}'s, not {gateway_id}'s: a gateway renews only its own certificate",
                reason="certificate_wrong_gateway",
            )
        request = check_gateway_csr(csr_pem, gateway_id)
        broker = None
        if local_broker_csr_pem is not None:
            broker = check_local_broker_csr(local_broker_csr_pem, gateway_id, request)
        _verify_possession(current, request, proof)
        await _check_renewable(registry, gateway_id, current)
        if _public_der(request.public_key()) == _public_der(current.public_key()):
            raise CsrRefused(
                f"the CSR reuses the current key: renewal needs a new key; {_REMAKE}", reason="csr_key_reused"
            )
        opens = renewal_opens_at(current.not_valid_before_utc, current.not_valid_after_utc)
        if not force and moment < opens:
            raise GatewayConflict(
                f"the current certificate is valid until {current.not_valid_after_utc.isoformat()}; renewal opens at "
                f"{opens.isoformat()} (retry then, or force it)",
                reason="renewal_too_early",
            )
    except EnrollmentError as exc:
        log.warning("renewal_refused", gateway=gateway_id, reason=exc.reason, detail=exc.message)
        raise
    result = await _issue_and_record(registry, authority, request, gateway_id, renew=True, local_broker=broker)
    await registry.append_audit(
        actor=gateway_id,
        action="certificate.renewed",
        entity_id=gateway_id,
        reason=f"certificate {current.serial_number:x} renewed by {result.serial}",
        detail={"old_serial": format(current.serial_number, "x"), "new_serial": result.serial, "forced": force},
    )
    log.info("gateway_renewed", gateway=gateway_id, old_serial=format(current.serial_number, "x"), serial=result.serial)
    return result


async def _check_renewable(registry: Registry, gateway_id: str, current: x509.Certificate) -> None:
    try:
        gateway = await registry.get_gateway(gateway_id)
    except NotFound:
        raise GatewayConflict(
            f"gateway {gateway_id} is not in the registry: ask an asset manager to register it, then enroll",
            reason="gateway_not_enrolled",
        ) from None
    serial = format(current.serial_number, "x")
    for known in await registry.certificates(gateway_id):
        if known.serial == serial and known.status == "revoked":
            # revoked in the registry (decommission, replaced hardware) even if the CA has not caught up yet
            raise CertificateRefused(
                f"the current certificate (serial {serial}) was revoked ({known.revocation_reason}); {_RENROLL}",
                reason="certificate_revoked",
            )
    if gateway.state is State.SUSPENDED:
        raise GatewayConflict(
            f"gateway {gateway_id} is suspended: an asset manager must resume it before it can renew",
            reason="gateway_suspended",
        )
    if gateway.state is State.DECOMMISSIONED:
        raise GatewayConflict(
            f"gateway {gateway_id} is decommissioned and can never renew: register new hardware under a new id",
            reason="gateway_decommissioned",
        )
