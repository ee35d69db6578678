"""Certificate and CRL construction: the exact extensions of each kind of certificate the fleet CA signs.

Nothing here touches the disk or the CA database; :mod:`cloud_agent.pki.authority` decides what to issue and
records it. Every signature is ECDSA with SHA-256.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_agent.pki.errors import PkiError
from kakehashi.identity import Role, san_uri

_HOSTNAME = re.compile(r"^(\*\.)?(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")


def _name(common_name: str, organisation: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation)] if organisation else []
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def organisation_of(certificate: x509.Certificate) -> str | None:
    """The O attribute of ``certificate``'s subject, if any (leaves inherit it from the issuing CA)."""
    values = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def _ski(certificate: x509.Certificate) -> x509.SubjectKeyIdentifier:
    return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def build_root(
    key: ec.EllipticCurvePrivateKey, organisation: str, not_before: datetime, not_after: datetime
) -> x509.Certificate:
    """A self-signed root CA that may sign one level of intermediates (path length 1)."""
    name = _name(f"{organisation} Root CA", organisation)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def build_issuing(
    key: ec.EllipticCurvePrivateKey,
    root: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey,
    organisation: str,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """The online issuing intermediate, signed by the root; it may sign leaves only (path length 0)."""
    return (
        x509.CertificateBuilder()
        .subject_name(_name(f"{organisation} Issuing CA", organisation))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(root)), critical=False)
        .sign(root_key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Issuer:
    """What signing a leaf or CRL needs from the issuing CA."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(self.certificate))


def build_leaf(
    issuer: Issuer,
    public_key: ec.EllipticCurvePublicKey,
    *,
    common_name: str,
    role: Role,
    serial: int,
    not_before: datetime,
    not_after: datetime,
    usages: Sequence[x509.ObjectIdentifier],
    extra_names: Iterable[x509.GeneralName] = (),
) -> x509.Certificate:
    """An end-entity certificate: CN = id, SAN URI ``urn:kakehashi:<role>:<id>`` (+ ``extra_names``)."""
    names: list[x509.GeneralName] = [*extra_names, x509.UniformResourceIdentifier(san_uri(role, common_name))]
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organisation_of(issuer.certificate)))
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(issuer.authority_key_identifier(), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )


def client_usages(role: Role) -> list[x509.ObjectIdentifier]:
    """Extended key usages of a client certificate: services also serve TLS (clientAuth + serverAuth)."""
    if role is Role.SERVICE:
        return [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    return [ExtendedKeyUsageOID.CLIENT_AUTH]


SERVER_USAGES = [ExtendedKeyUsageOID.SERVER_AUTH]


def host_names(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries for a TLS server: IPAddress for IP literals, DNSName for host names."""
    if isinstance(hostnames, str) or not hostnames:
        raise PkiError("a server certificate needs at least one host name or IP address (for example localhost)")
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        text = host.lower().removesuffix(".")
        if len(text) > 253 or not _HOSTNAME.fullmatch(text):
            raise PkiError(f"{host!r} is neither an IP address nor a valid DNS name; give names like broker.example.jp")
        names.append(x509.DNSName(text))
    return names


def build_crl(
    issuer: Issuer,
    revoked: Iterable[tuple[int, datetime, x509.ReasonFlags]],
    *,
    number: int,
    last_update: datetime,
    next_update: datetime,
) -> x509.CertificateRevocationList:
    """A CRL listing ``(serial, revocation time, reason)`` entries, signed by the issuing CA.

    Following RFC 5280 §5.3.1, the reason code extension is left out for ``unspecified``.
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(last_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(issuer.authority_key_identifier(), critical=False)
    )
    for serial, revoked_at, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
        if reason is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(reason), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer.key, hashes.SHA256())
