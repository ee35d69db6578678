"""The Pi's side of enrollment: make the key here, send only a CSR to the agent, install what comes back.

:func:`enroll_gateway` uses the one-time enrollment token (first start, or after the SD card was wiped);
:func:`renew_gateway` renews over the current certificate, proving possession of the current key by signing the new
CSR's DER bytes with it (ECDSA-SHA256). Both talk HTTPS to the cloud agent (``POST /v1/enroll``, ``/v1/enroll/renew``)
and verify its server certificate against the given CA bundle. Failures are :class:`GatewayEnrollmentError` with one
line saying what to do.

Files in the identity directory (the paths ``gateway.toml`` points at)::

    gateway.key      0600  the private key, made on this Pi, never sent anywhere
    gateway.crt      0644  the gateway's certificate
    issuing-ca.pem   0644  the issuing CA that signed it
    chain.pem        0644  the fleet trust bundle (issuing + root CA): what the uplink trusts for the cloud broker
    local-broker.key 0600  with ``local_broker``: the local broker's own key, made on this Pi
    local-broker.crt 0644  its TLS server certificate (``<gateway id>.local``) followed by the issuing CA

A renewal writes ``gateway.key.new`` and ``gateway.crt.new`` completely before renaming them over the old pair, so
the old identity stays usable until the new one is on disk; :func:`finish_interrupted_renewal` completes a renewal
a power cut interrupted between the two renames.
"""

from __future__ import annotations

import base64
import os
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from kakehashi import keys
from kakehashi.errors import KakehashiError
from kakehashi.identity import local_broker_name, validate_id
from kakehashi.log import get_logger

__all__ = [
    "GatewayEnrollmentError",
    "GatewayIdentity",
    "enroll_gateway",
    "finish_interrupted_renewal",
    "identity_paths",
    "local_broker_paths",
    "renew_gateway",
]

log = get_logger(__name__)

KEY_FILE: Final = "gateway.key"
CERT_FILE: Final = "gateway.crt"
CHAIN_FILE: Final = "issuing-ca.pem"
TRUST_FILE: Final = "chain.pem"
LOCAL_BROKER_KEY_FILE: Final = "local-broker.key"
LOCAL_BROKER_CERT_FILE: Final = "local-broker.crt"
NEW_SUFFIX: Final = ".new"
TIMEOUT_S: Final = 30.0


class GatewayEnrollmentError(KakehashiError):
    """Enrollment or renewal failed; ``reason`` is ``connection``, ``tls``, ``timeout``, ``bad_response``,
    ``identity_exists``, ``bad_url`` or the agent's own refusal code (``token_used``, ``csr_key_type``, ...)."""

    reason = "enrollment_failed"


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """The installed identity files and what the certificate says."""

    key: Path
    certificate: Path
    chain: Path
    trust_bundle: Path
    serial: str
    not_after: datetime
    local_broker_serial: str | None = None


def local_broker_paths(directory: Path) -> tuple[Path, Path]:
    """``(key, certificate)`` of the local broker's TLS server identity in ``directory``."""
    return directory / LOCAL_BROKER_KEY_FILE, directory / LOCAL_BROKER_CERT_FILE


def identity_paths(directory: Path) -> tuple[Path, Path, Path, Path]:
    """``(key, certificate, issuing CA, trust bundle)`` paths in ``directory``."""
    return directory / KEY_FILE, directory / CERT_FILE, directory / CHAIN_FILE, directory / TRUST_FILE


def _pending(path: Path) -> Path:
    return path.with_name(path.name + NEW_SUFFIX)


# ------------------------------------------------------------------------------------------------------- HTTP


def _endpoint(agent_url: str, path: str) -> str:
    if not agent_url.startswith("https://"):
        raise GatewayEnrollmentError(
            f"agent URL {agent_url!r} must start with https:// (the token and certificates must not travel in clear)",
            reason="bad_url",
        )
    return agent_url.rstrip("/") + path


def _tls(ca_bundle: Path | None) -> ssl.SSLContext | bool:
    if ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise GatewayEnrollmentError(
            f"cannot use the CA bundle {ca_bundle}: {exc}; give the agent's CA certificate file (PEM)", reason="tls"
        ) from None


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _refusal(response: httpx.Response, url: str) -> GatewayEnrollmentError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        detail = str(body.get("detail", "")).strip() or "no detail"
        return GatewayEnrollmentError(
            f"the agent refused ({response.status_code} {body['error']}): {detail}", reason=body["error"]
        )
    return GatewayEnrollmentError(
        f"the agent at {url} answered HTTP {response.status_code} without an explanation: check the agent URL",
        reason="bad_response",
    )


async def _post(
    url: str, body: dict[str, Any], ca_bundle: Path | None, transport: httpx.AsyncBaseTransport | None
) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(verify=_tls(ca_bundle), timeout=TIMEOUT_S, transport=transport) as client:
            response = await client.post(url, json=body)
    except httpx.TimeoutException:
        raise GatewayEnrollmentError(
            f"the agent at {url} did not answer within {TIMEOUT_S:g} s: check the network and retry", reason="timeout"
        ) from None
    except httpx.HTTPError as exc:
        if _is_tls_failure(exc):
            raise GatewayEnrollmentError(
                f"the agent at {url} is not trusted ({exc}): check the CA bundle and that the URL names the agent",
                reason="tls",
            ) from None
        raise GatewayEnrollmentError(
            f"cannot reach the agent at {url} ({exc or type(exc).__name__}): check the URL, the network and that "
            "the agent runs",
            reason="connection",
        ) from None
    if response.status_code != 200:
        raise _refusal(response, url)
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise GatewayEnrollmentError(f"the agent at {url} answered something that is not JSON", reason="bad_response")
    return answer


# ---------------------------------------------------------------------------------------------------- content


@dataclass(frozen=True, slots=True)
class _Bundle:
    certificate: bytes
    chain: bytes
    trust_bundle: bytes
    serial: str
    not_after: datetime
    local_broker: bytes | None = None
    local_broker_serial: str | None = None


def _same_key(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    return certificate.public_key().public_bytes(encoding, public) == key.public_key().public_bytes(encoding, public)


def _check_local_broker(answer: dict[str, Any], key: ec.EllipticCurvePrivateKey, gateway_id: str) -> x509.Certificate:
    """The local broker's certificate must be for its own key and name ``<gateway>.local`` for server use."""
    text = answer.get("local_broker_certificate_pem")
    try:
        if not isinstance(text, str):
            raise ValueError("missing")
        certificate = x509.load_pem_x509_certificate(text.encode())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, x509.ExtensionNotFound):
        raise GatewayEnrollmentError(
            "the agent's answer lacks a usable local broker certificate (is the agent older than this gateway?); "
            "nothing was installed",
            reason="bad_response",
        ) from None
    expected = local_broker_name(gateway_id)
    if (
        not _same_key(certificate, key)
        or expected not in names.get_values_for_type(x509.DNSName)
        or ExtendedKeyUsageOID.SERVER_AUTH not in usages
    ):
        raise GatewayEnrollmentError(
            f"the agent returned a local broker certificate that is not for this key, {expected} and server use; "
            "nothing was installed",
            reason="bad_response",
        )
    return certificate


def _check_answer(
    answer: dict[str, Any],
    key: ec.EllipticCurvePrivateKey,
    gateway_id: str,
    broker_key: ec.EllipticCurvePrivateKey | None = None,
) -> _Bundle:
    """The certificate must be for this id and this key, so that a confused agent cannot break the Pi."""
    try:
        texts = [answer[name] for name in ("certificate_pem", "chain_pem", "trust_bundle_pem")]
        if not all(isinstance(text, str) for text in texts):
            raise ValueError("not text")
        certificate = x509.load_pem_x509_certificate(texts[0].encode())
        x509.load_pem_x509_certificates(texts[1].encode())
        x509.load_pem_x509_certificates(texts[2].encode())
    except (KeyError, ValueError):
        raise GatewayEnrollmentError(
            "the agent's answer lacks a readable certificate, chain or trust bundle", reason="bad_response"
        ) from None
    if not _same_key(certificate, key):
        raise GatewayEnrollmentError(
            "the agent returned a certificate for another key; nothing was installed", reason="bad_response"
        )
    names = [attribute.value for attribute in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if names != [gateway_id]:
        raise GatewayEnrollmentError(
            f"the agent returned a certificate for {names}, not {gateway_id}; nothing was installed",
            reason="bad_response",
        )
    broker_pem: bytes | None = None
    broker_serial: str | None = None
    if broker_key is not None:
        broker = _check_local_broker(answer, broker_key, gateway_id)
        # the server presents its chain: nodes hold only the root CA
        broker_pem = broker.public_bytes(serialization.Encoding.PEM) + texts[1].encode()
        broker_serial = format(broker.serial_number, "x")
    return _Bundle(
        texts[0].encode(),
        texts[1].encode(),
        texts[2].encode(),
        format(certificate.serial_number, "x"),
        certificate.not_valid_after_utc,
        broker_pem,
        broker_serial,
    )


def _identity(directory: Path, bundle: _Bundle) -> GatewayIdentity:
    key, cert, chain, trust = identity_paths(directory)
    return GatewayIdentity(key, cert, chain, trust, bundle.serial, bundle.not_after, bundle.local_broker_serial)


def _write_local_broker(directory: Path, key: ec.EllipticCurvePrivateKey | None, bundle: _Bundle) -> None:
    """Install the local broker's key and certificate (key first, each written whole and renamed into place)."""
    if key is None or bundle.local_broker is None:
        return
    key_path, cert_path = local_broker_paths(directory)
    keys.write_secret_file(_pending(key_path), keys.private_key_pem(key))
    keys.write_public_file(_pending(cert_path), bundle.local_broker)
    os.replace(_pending(key_path), key_path)
    os.replace(_pending(cert_path), cert_path)


# ---------------------------------------------------------------------------------------------- the two calls


async def enroll_gateway(
    agent_url: str,
    ca_bundle: Path | None,
    gateway_id: str,
    token: str,
    out_dir: Path,
    *,
    local_broker: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
) -> GatewayIdentity:
    """Make a key on this Pi, enroll with the one-time ``token``, and install the identity in ``out_dir``.

    ``ca_bundle`` verifies the agent's HTTPS certificate (None: the system's trusted CAs). An identity already in
    ``out_dir`` is never overwritten: renew it with :func:`renew_gateway`, or move it away to enroll afresh. With
    ``local_broker`` a second key is made for the local broker of the nodes and its server certificate requested
    in the same call (``local-broker.key``, ``local-broker.crt``).
    """
    validate_id(gateway_id)
    url = _endpoint(agent_url, "/v1/enroll")
    out_dir = Path(out_dir)
    key_path, cert_path, chain_path, trust_path = identity_paths(out_dir)
    for existing in (key_path, cert_path):
        if existing.exists():
            raise GatewayEnrollmentError(
                f"{existing} already exists: this Pi has an identity (renew it, or move {out_dir} away to enroll anew)",
                reason="identity_exists",
            )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GatewayEnrollmentError(f"cannot create {out_dir}: {exc.strerror}", reason="file") from None
    key = keys.generate_private_key()
    csr = keys.make_csr(key, gateway_id).decode()
    body = {"gateway_id": gateway_id, "token": token, "csr_pem": csr}
    broker_key = keys.generate_private_key() if local_broker else None
    if broker_key is not None:
        body["local_broker_csr_pem"] = keys.make_csr(broker_key, gateway_id).decode()
    answer = await _post(url, body, ca_bundle, transport)
    bundle = _check_answer(answer, key, gateway_id, broker_key)
    _write_local_broker(out_dir, broker_key, bundle)
    keys.write_private_key(key_path, key)
    keys.write_public_file(trust_path, bundle.trust_bundle)
    keys.write_public_file(chain_path, bundle.chain)
    keys.write_public_file(cert_path, bundle.certificate)
    log.info("gateway_enrolled", gateway=gateway_id, serial=bundle.serial, not_after=bundle.not_after.isoformat())
    return _identity(out_dir, bundle)


def _swap_pending(identity_dir: Path) -> bool:
    key_path, cert_path, _, _ = identity_paths(identity_dir)
    new_key, new_cert = _pending(key_path), _pending(cert_path)
    try:
        if new_cert.exists():
            if new_key.exists():
                os.replace(new_key, key_path)
            os.replace(new_cert, cert_path)
            return True
        if new_key.exists():
            new_key.unlink()
    except OSError as exc:
        raise GatewayEnrollmentError(
            f"cannot install the renewed identity in {identity_dir}: {exc.strerror}", reason="file"
        ) from None
    return False


def finish_interrupted_renewal(identity_dir: Path) -> bool:
    """Complete (or discard) a renewal a crash interrupted; True if it completed one.

    ``gateway.crt.new`` is written after ``gateway.key.new``, so its presence means both were complete: the swap is
    finished. A lone ``gateway.key.new`` is a renewal that never got its certificate: it is removed.
    """
    completed = _swap_pending(Path(identity_dir))
    if completed:
        log.warning("renewal_completed_after_interruption", directory=str(identity_dir))
    return completed


def _read_current(identity_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key_path, cert_path, _, _ = identity_paths(identity_dir)
    key = keys.load_private_key(key_path)
    try:
        certificate = cert_path.read_text()
        x509.load_pem_x509_certificate(certificate.encode())
    except (OSError, ValueError):
        raise GatewayEnrollmentError(
            f"cannot read the current certificate {cert_path}: enroll this Pi with a token instead", reason="file"
        ) from None
    return key, certificate


async def renew_gateway(
    agent_url: str,
    ca_bundle: Path | None,
    gateway_id: str,
    identity_dir: Path,
    *,
    force: bool = False,
    local_broker: bool | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> GatewayIdentity:
    """Renew the certificate in ``identity_dir`` with a new key; the old pair stays until the new one is written.

    The local broker's certificate is renewed too (new key) when ``local_broker`` is True, or when it is None and
    the directory holds one."""
    validate_id(gateway_id)
    url = _endpoint(agent_url, "/v1/enroll/renew")
    identity_dir = Path(identity_dir)
    finish_interrupted_renewal(identity_dir)
    current_key, current_certificate = _read_current(identity_dir)
    new_key = keys.generate_private_key()
    csr_pem = keys.make_csr(new_key, gateway_id)
    csr_der = x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER)
    signature = current_key.sign(csr_der, ec.ECDSA(hashes.SHA256()))
    body = {
        "gateway_id": gateway_id,
        "csr_pem": csr_pem.decode(),
        "certificate_pem": current_certificate,
        "signature": base64.b64encode(signature).decode(),
        "force": force,
    }
    if local_broker is None:
        local_broker = local_broker_paths(identity_dir)[1].exists()
    broker_key = keys.generate_private_key() if local_broker else None
    if broker_key is not None:
        body["local_broker_csr_pem"] = keys.make_csr(broker_key, gateway_id).decode()
    answer = await _post(url, body, ca_bundle, transport)
    bundle = _check_answer(answer, new_key, gateway_id, broker_key)
    key_path, cert_path, chain_path, trust_path = identity_paths(identity_dir)
    keys.write_secret_file(_pending(key_path), keys.private_key_pem(new_key))
    keys.write_public_file(_pending(cert_path), bundle.certificate)
    keys.write_public_file(trust_path, bundle.trust_bundle)
    keys.write_public_file(chain_path, bundle.chain)
    _swap_pending(identity_dir)
    _write_local_broker(identity_dir, broker_key, bundle)
    log.info("gateway_renewed", gateway=gateway_id, serial=bundle.serial, not_after=bundle.not_after.isoformat())
    return _identity(identity_dir, bundle)
