"""The on-disk form of a PKI directory: where each file lives, the CA database (``index.json``), and the lock.

Layout of a PKI directory ``D``::

    D/root/ca.crt  D/root/ca.key (0600)      offline-capable root; nothing but ``init`` needs its key
    D/issuing/ca.crt  D/issuing/ca.key (0600)  online issuing intermediate that signs leaves and CRLs
    D/chain.pem                                trust bundle: issuing + root certificates
    D/crl.pem                                  current CRL, signed by the issuing CA
    D/issued/<serial-hex>.crt                  every certificate ever issued
    D/index.json                               the CA database: one record per certificate
    D/.lock                                    flock(2) target serialising every mutation

Every mutation runs under an exclusive lock, and the index and CRL are replaced atomically, so concurrent CLI
invocations and readers never see half-written state.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cloud_agent.pki.errors import PkiError
from cloud_agent.pki.records import CertRecord
from kakehashi.errors import KakehashiError
from kakehashi.keys import write_public_file, write_secret_file

INDEX_FORMAT = 1
PRIVATE_DIR_MODE = 0o700


@dataclass(frozen=True)
class PkiLayout:
    """The paths of every file in the PKI directory ``base``."""

    base: Path

    @property
    def root_dir(self) -> Path:
        return self.base / "root"

    @property
    def root_cert(self) -> Path:
        return self.root_dir / "ca.crt"

    @property
    def root_key(self) -> Path:
        return self.root_dir / "ca.key"

    @property
    def issuing_dir(self) -> Path:
        return self.base / "issuing"

    @property
    def issuing_cert(self) -> Path:
        return self.issuing_dir / "ca.crt"

    @property
    def issuing_key(self) -> Path:
        return self.issuing_dir / "ca.key"

    @property
    def chain(self) -> Path:
        return self.base / "chain.pem"

    @property
    def crl(self) -> Path:
        return self.base / "crl.pem"

    @property
    def issued_dir(self) -> Path:
        return self.base / "issued"

    @property
    def index(self) -> Path:
        return self.base / "index.json"

    @property
    def lock(self) -> Path:
        return self.base / ".lock"

    def issued_cert(self, serial: int) -> Path:
        return self.issued_dir / f"{serial:x}.crt"

    def markers(self) -> list[Path]:
        """Files whose presence means a PKI lives (or half-lives) here."""
        return [self.root_cert, self.issuing_cert, self.index]

    def exists(self) -> bool:
        return any(p.exists() for p in self.markers())

    def missing(self) -> list[Path]:
        """Files an initialised PKI must have (the root key is allowed to be offline)."""
        return [p for p in (self.root_cert, self.issuing_cert, self.chain, self.index) if not p.exists()]

    def make_dirs(self) -> None:
        """Create ``base`` and its subdirectories, private to the owner."""
        for directory in (self.base, self.root_dir, self.issuing_dir, self.issued_dir):
            directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)


@dataclass
class CaIndex:
    """The CA database: the last CRL number used and every certificate record, in issue order."""

    crl_number: int = 0
    records: list[CertRecord] = field(default_factory=list)


@contextlib.contextmanager
def locked(layout: PkiLayout) -> Iterator[None]:
    """Hold an exclusive lock on the PKI directory (blocking until other writers are done)."""
    try:
        fd = os.open(layout.lock, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:
        raise PkiError(f"cannot lock {layout.lock}: {exc.strerror}; check the permissions of {layout.base}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def load_index(layout: PkiLayout) -> CaIndex:
    """Read ``index.json``; a missing or damaged index is a one-line :class:`PkiError`."""
    try:
        raw = layout.index.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"no PKI in {layout.base}: create one with `kakehashi pki init --dir {layout.base}`") from None
    except OSError as exc:
        raise PkiError(f"cannot read {layout.index}: {exc.strerror}") from None
    try:
        doc = orjson.loads(raw)
        if doc.get("format") != INDEX_FORMAT:
            raise ValueError(f"unknown format {doc.get('format')!r}")
        records = [CertRecord.from_json(item, layout.base) for item in doc["certificates"]]
        return CaIndex(crl_number=int(doc["crl_number"]), records=records)
    except (ValueError, KeyError, TypeError, AttributeError, KakehashiError) as exc:
        raise PkiError(f"the CA database {layout.index} is damaged ({exc}); restore it from a backup") from None


def save_index(layout: PkiLayout, index: CaIndex) -> None:
    """Atomically replace ``index.json`` (call with the lock held)."""
    doc: dict[str, Any] = {
        "format": INDEX_FORMAT,
        "crl_number": index.crl_number,
        "certificates": [record.to_json(layout.base) for record in index.records],
    }
    write_secret_file(layout.index, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


def pem_certificate(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def pem_crl(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def write_certificate(path: Path, certificate: x509.Certificate) -> None:
    write_public_file(path, pem_certificate(certificate))


def write_ca_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_secret_file(
        path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def read_certificate(path: Path) -> x509.Certificate:
    """Load a PEM certificate from the PKI directory, with a one-line error if it is missing or damaged."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"{path} is missing; the PKI directory is incomplete, restore it from a backup") from None
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate; restore it from a backup") from None


def read_issuing_key(layout: PkiLayout) -> ec.EllipticCurvePrivateKey:
    """Load the issuing CA's private key, needed to sign certificates and CRLs."""
    path = layout.issuing_key
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PkiError(
            f"the issuing CA key {path} is missing; this machine cannot issue certificates or CRLs "
            "(run the command where the issuing key lives, or restore it)"
        ) from None
    except OSError as exc:
        raise PkiError(f"cannot read the issuing CA key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise PkiError(f"{path} is not an unencrypted PEM private key; restore it from a backup") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an ECDSA key; restore the issuing CA key from a backup")
    return key


def read_crl(path: Path) -> x509.CertificateRevocationList:
    """Load the PEM CRL at ``path``."""
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"the CRL {path} is missing; publish one with `kakehashi pki crl`") from None
    except OSError as exc:
        raise PkiError(f"cannot read the CRL {path}: {exc.strerror}") from None
    except ValueError:
        raise PkiError(f"{path} is not a PEM CRL; publish a fresh one with `kakehashi pki crl`") from None
