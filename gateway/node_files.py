"""What ``kakehashi node flash`` puts on a node besides the firmware: its identity in DER, ``node.json``, ``main.py``.

The node's key is made here (a board cannot make and export a CSR over the flashing cable in every firmware build),
its CSR signed by the fleet CA for role ``node`` (CN = node id, SAN ``urn:kakehashi:node:<id>``); the board gets
the key, the certificate and the fleet **root** CA, each as one DER file (mbedTLS reads one DER certificate per
buffer; see docs/edge.md, "Files on the device"). ``node.json`` is checked with the firmware's own settings loader
(``edge/khnode/config.py``, plain Python) before anything touches the board, so a typo fails here, not on the river.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cloud_agent.pki.authority import CertificateAuthority
from hw.node.unixport import EDGE
from kakehashi import keys
from kakehashi.errors import KakehashiError
from kakehashi.identity import Role

__all__ = ["NodeFiles", "NodeIdentity", "build_node_json", "issue_node_identity", "node_files"]

CA_DER: Final = "certs/ca.der"
CERT_DER: Final = "certs/node.der"
KEY_DER: Final = "certs/node.key.der"


class NodeFilesError(KakehashiError):
    reason = "node_files"


@dataclass(frozen=True)
class NodeIdentity:
    """A node's freshly issued identity, in memory: PEM for the host's own use, DER for the board."""

    node_id: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    root: x509.Certificate
    trust_bundle: Path
    serial: str

    def key_pem(self) -> bytes:
        return keys.private_key_pem(self.key)

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


NodeFiles = dict[str, bytes]
"""Board path (relative to its root) → content."""


def issue_node_identity(ca: CertificateAuthority, node_id: str, *, renew: bool = False) -> NodeIdentity:
    """Make the node's key, have the fleet CA sign its CSR as a node certificate."""
    key = keys.generate_private_key()
    record = ca.issue(keys.make_csr(key, node_id), Role.NODE, node_id, renew=renew)
    certificate = ca.load_certificate(record)
    bundle = x509.load_pem_x509_certificates(ca.trust_bundle_path.read_bytes())
    roots = [c for c in bundle if c.subject == c.issuer]
    if not roots:
        raise NodeFilesError(f"the trust bundle {ca.trust_bundle_path} holds no root CA certificate")
    return NodeIdentity(node_id, key, certificate, roots[0], ca.trust_bundle_path, record.serial_hex)


def _firmware_config() -> Any:
    """The firmware's ``khnode.config`` module, loaded from ``edge/`` under CPython."""
    path = EDGE / "khnode" / "config.py"
    spec = importlib.util.spec_from_file_location("_khnode_config", path)
    if spec is None or spec.loader is None or not path.exists():
        raise NodeFilesError(f"the node firmware is not at {EDGE}: run from the Kakehashi checkout")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_node_json(base: dict[str, Any], settings: dict[str, Any]) -> bytes:
    """``settings`` (from ``--settings``) under ``base`` (id, gateway, port, ...), checked by the firmware's loader."""
    doc = {**settings, **{k: v for k, v in base.items() if v is not None}}
    text = json.dumps(doc, ensure_ascii=False, sort_keys=True).encode()
    config = _firmware_config()
    with tempfile.TemporaryDirectory(prefix="kh-node-json-") as tmp:
        path = Path(tmp) / "node.json"
        path.write_bytes(text)
        try:
            _, problems = config.load(str(path))
        except config.ConfigError as exc:
            raise NodeFilesError(f"node.json would not load on the node: {exc}") from None
    if problems:
        raise NodeFilesError(
            "node.json would not load cleanly on the node: "
            + "; ".join(map(str, problems))
            + ' (fix --settings; sensors go there, e.g. {"distance": {"bus": "uart", "datum_m": 6.2}})'
        )
    return text


def node_files(identity: NodeIdentity, node_json: bytes) -> NodeFiles:
    """Everything the flash tool copies to the board's root."""
    key_der = identity.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    return {
        "main.py": (EDGE / "main.py").read_bytes(),
        "node.json": node_json,
        CA_DER: identity.root.public_bytes(serialization.Encoding.DER),
        CERT_DER: identity.certificate.public_bytes(serialization.Encoding.DER),
        KEY_DER: key_der,
    }
