"""Checks on a certificate signing request before the CA signs anything: format, signature, key type, subject.

Each refusal is a one-line :class:`PkiError` saying what is wrong with the request and how to make a good one.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from cloud_agent.pki.errors import PkiError

_REMAKE = "make a new key and CSR on the device with `kakehashi pki request`"


def describe_key(key: object) -> str:
    """A short human name for a public key type: ``RSA 2048``, ``Ed25519``, ``EC secp384r1``."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    return type(key).__name__


def _not_a_csr_hint(data: bytes) -> str:
    """Explain what ``data`` looks like when it is not a CSR."""
    head = data.lstrip()[:64]
    if b"CERTIFICATE-----" in head and b"REQUEST" not in head:
        return "this is a certificate, not a certificate signing request: give the CSR file"
    if b"PRIVATE KEY-----" in head:
        return "this is a private key, not a CSR: keep it on the device and give the CSR file"
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return "it is neither PEM nor DER CSR data: give the file written by `kakehashi pki request --csr`"
    return "this is a certificate, not a certificate signing request: give the CSR file"


def parse_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR, raising :class:`PkiError` (never anything else) if it is not one."""
    if not data.strip():
        raise PkiError(f"the CSR is empty; {_REMAKE}")
    try:
        is_pem = data.lstrip().startswith(b"-----BEGIN")
        csr = x509.load_pem_x509_csr(data) if is_pem else x509.load_der_x509_csr(data)
        # touch the lazily parsed parts now, so that damage is reported here as an unparsable CSR
        csr.subject.rfc4514_string()
        csr.public_key()
    except (ValueError, TypeError):
        raise PkiError(f"cannot parse the CSR: {_not_a_csr_hint(data)}") from None
    except Exception as exc:  # the Rust parser can surface unusual exception types for hostile input
        raise PkiError(f"cannot parse the CSR ({type(exc).__name__}); {_REMAKE}") from None
    return csr


def subject_cn(csr: x509.CertificateSigningRequest) -> str | None:
    """The single subject CN of ``csr``, or None if it has none (several CNs are an error)."""
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    if len(names) > 1:
        raise PkiError(f"the CSR subject has {len(names)} CNs; it must have exactly one (the id): {_REMAKE}")
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def check_csr(csr: bytes | x509.CertificateSigningRequest, identity: str) -> x509.CertificateSigningRequest:
    """The parsed CSR if it is signed correctly, holds an ECDSA P-256 key and names ``identity`` as CN."""
    request = csr if isinstance(csr, x509.CertificateSigningRequest) else parse_csr(bytes(csr))
    try:
        signature_ok = request.is_signature_valid
    except Exception:  # an unsupported signature algorithm cannot be checked: treat it as invalid
        signature_ok = False
    if not signature_ok:
        raise PkiError(f"the CSR signature is invalid (the request was damaged or altered in transit); {_REMAKE}")
    key = request.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PkiError(f"the CSR's key is {describe_key(key)}, but fleet certificates need ECDSA P-256; {_REMAKE}")
    cn = subject_cn(request)
    if cn is None:
        raise PkiError(f"the CSR has no subject CN; make one for this id with `kakehashi pki request --id {identity}`")
    if cn != identity:
        raise PkiError(
            f"the CSR is for {cn!r} (its subject CN) but the certificate was asked for {identity!r}: "
            f"check the id, or make a CSR with `kakehashi pki request --id {identity}`"
        )
    return request
