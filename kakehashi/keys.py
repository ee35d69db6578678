"""Device-side key material: make an ECDSA P-256 key on this machine, keep it private, ask for a certificate.

Gateways and nodes make their own keys; only certificate signing requests (CSRs) leave the device. This module
also holds the small file helpers every part uses to write secrets (mode 0600) and public files (mode 0644)
atomically. It must not depend on the cloud agent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kakehashi.errors import KakehashiError
from kakehashi.identity import validate_id

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


class FileError(KakehashiError):
    """A key, certificate or request file cannot be read or written."""

    reason = "file"


def _os_problem(exc: OSError) -> str:
    """A short lowercase description of an OS error ("no such file or directory")."""
    text = exc.strerror or (errno.errorcode.get(exc.errno, "") if exc.errno else "") or str(exc)
    return text[:1].lower() + text[1:]


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 (secp256r1) private key, the only key type the fleet PKI accepts."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM; protect it with file permissions, never send it anywhere."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` to a new file readable by its owner only (0600); refuse to replace an existing file.

    Losing a key is recoverable (make a new one and re-enrol); silently overwriting the key that matches an
    issued certificate is not, so an existing file is an error.
    """
    path = Path(path)
    data = private_key_pem(key)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, SECRET_MODE)
    except FileExistsError:
        raise FileError(
            f"key file {path} already exists; refusing to overwrite it (move it away or choose another path)"
        ) from None
    except OSError as exc:
        raise FileError(f"cannot create key file {path}: {_os_problem(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), SECRET_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise FileError(f"cannot write key file {path}: {_os_problem(exc)}") from None


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an unencrypted PEM ECDSA P-256 private key, with a one-line error saying what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileError(
            f"cannot read key file {path}: {_os_problem(exc)} (make a key with `kakehashi pki request`)"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise FileError(f"key file {path} is encrypted; give an unencrypted PKCS#8 PEM key") from None
    except ValueError:
        raise FileError(f"{path} is not a PEM private key; give the key made by `kakehashi pki request`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise FileError(f"key file {path} does not hold an ECDSA P-256 key; make one with `kakehashi pki request`")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, identity: str) -> bytes:
    """A PEM certificate signing request for ``identity``: subject CN = id only, signed with SHA-256.

    The CA decides every extension of the certificate, so the request carries none.
    """
    validate_id(identity)
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a temporary file beside ``path`` with ``mode``, then rename it over ``path``."""
    path = Path(path)
    directory = path.parent
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise FileError(f"cannot write {path}: {_os_problem(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise FileError(f"cannot write {path}: {_os_problem(exc)}") from None
    _sync_directory(directory)


def _sync_directory(directory: Path) -> None:
    """Make a rename durable by syncing its directory (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_secret_file(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` readable by its owner only (0600), replacing any old file."""
    _write_atomically(path, data, SECRET_MODE)


def write_public_file(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` readable by everyone (0644), replacing any old file."""
    _write_atomically(path, data, PUBLIC_MODE)
