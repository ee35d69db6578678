"""The fleet CRL on the gateway: received on ``down/crl``, checked, stored, and judged fresh or stale.

The agent publishes the fleet CRL (DER) retained on every gateway's ``kh/v1/<gw>/down/crl``
(:class:`cloud_agent.fleet_actions.CrlPublisher`). The gateway keeps it as ``<data_dir>/fleet-crl.der`` so that its
local broker can refuse revoked node certificates while the gateway is offline (:mod:`gateway.local_broker`).

A CRL is stored only if it is signed by a CA of the gateway's trust bundle (a CRL from elsewhere would make
Mosquitto refuse every node: OpenSSL finds no CRL for the nodes' issuer) and its CRL number is not lower than the
stored one's (a replayed old CRL would un-revoke nodes). A stale CRL (past its nextUpdate) is stored like any other
newer one: what to do with it is the local broker's decision (``[local_broker] stale_crl``).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from kakehashi import keys
from kakehashi.errors import KakehashiError
from kakehashi.log import get_logger

__all__ = ["CrlError", "CrlInfo", "CrlState", "check_crl", "read_stored_crl", "store_crl"]

log = get_logger(__name__)


class CrlError(KakehashiError):
    """A CRL cannot be used: damaged, or not signed by a CA of the fleet trust bundle."""

    reason = "crl"


class CrlState(enum.StrEnum):
    """``fresh``: usable; ``stale``: past its nextUpdate (Mosquitto would refuse every client with it);
    ``not_yet_valid``: its thisUpdate is in the future (this machine's clock is behind); ``missing``: none yet."""

    FRESH = "fresh"
    STALE = "stale"
    NOT_YET_VALID = "not_yet_valid"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class CrlInfo:
    """A checked CRL: its DER bytes and what the local broker needs to know about it."""

    der: bytes
    number: int
    last_update: dt.datetime
    next_update: dt.datetime | None
    revoked: frozenset[int]

    def state(self, now: dt.datetime | None = None) -> CrlState:
        moment = now or dt.datetime.now(dt.UTC)
        if moment < self.last_update:
            return CrlState.NOT_YET_VALID
        if self.next_update is not None and moment >= self.next_update:
            return CrlState.STALE
        return CrlState.FRESH

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_der_x509_crl(self.der).public_bytes(Encoding.PEM)


def _trusted(trust_bundle: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(trust_bundle.read_bytes())
    except (OSError, ValueError) as exc:
        raise CrlError(f"cannot read the trust bundle {trust_bundle} ({exc}): re-run provisioning") from None


def check_crl(der: bytes, trust_bundle: Path) -> CrlInfo:
    """Parse ``der`` and check that a CA of ``trust_bundle`` signed it; raises :class:`CrlError` otherwise."""
    try:
        crl = x509.load_der_x509_crl(der)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise CrlError(f"the CRL is damaged or has no CRL number ({exc})") from None
    for ca in _trusted(trust_bundle):
        key = ca.public_key()
        if ca.subject == crl.issuer and isinstance(key, ec.EllipticCurvePublicKey) and crl.is_signature_valid(key):
            return CrlInfo(
                der=der,
                number=number,
                last_update=crl.last_update_utc,
                next_update=crl.next_update_utc,
                revoked=frozenset(entry.serial_number for entry in crl),
            )
    raise CrlError(
        f"the CRL from {crl.issuer.rfc4514_string()} is not signed by a CA of {trust_bundle}: not this fleet's CRL"
    )


def read_stored_crl(path: Path, trust_bundle: Path) -> CrlInfo | None:
    """The stored CRL, checked; None when there is none yet. A damaged one raises :class:`CrlError`."""
    try:
        der = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CrlError(f"cannot read {path}: {exc.strerror}") from None
    return check_crl(der, trust_bundle)


def store_crl(der: bytes, path: Path, trust_bundle: Path) -> CrlInfo | None:
    """Check a received CRL and store it atomically at ``path``; returns it, or None when it changes nothing.

    Raises :class:`CrlError` for a CRL that is not the fleet's, or older (lower number) than the stored one.
    """
    received = check_crl(der, trust_bundle)
    try:
        stored = read_stored_crl(path, trust_bundle)
    except CrlError as exc:
        log.warning("crl_stored_unusable", path=str(path), reason=exc.message)
        stored = None
    if stored is not None:
        if stored.der == der:
            return None
        if received.number < stored.number:
            raise CrlError(f"CRL #{received.number} is older than the stored CRL #{stored.number}: kept the stored one")
    keys.write_public_file(path, der)
    log.info(
        "crl_stored",
        path=str(path),
        number=received.number,
        revoked=len(received.revoked),
        next_update=received.next_update.isoformat() if received.next_update else None,
        state=received.state().value,
    )
    return received
