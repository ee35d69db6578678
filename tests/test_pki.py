"""The fleet PKI through its API, with real keys and certificates: hierarchy, issuance checks, revocation, CRL
freshness, client verification, and the device-side key helpers."""

from __future__ import annotations

import base64
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_agent.pki.authority import REVOCATION_REASONS, CertificateAuthority, CertRecord
from cloud_agent.pki.errors import PkiError
from cloud_agent.pki.policy import DEFAULT_POLICY
from kakehashi import keys
from kakehashi.errors import KakehashiError
from kakehashi.identity import ID_PATTERN, Role, parse_san_uri, san_uri

SKEW = DEFAULT_POLICY.clock_skew
ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)


# ------------------------------------------------------------------------------------------------- helpers


def csr_for(identity: str, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    return keys.make_csr(key or keys.generate_private_key(), identity)


def csr_signed_by(key: Any, name: x509.Name, *, hashed: bool = True) -> bytes:
    algorithm = hashes.SHA256() if hashed else None  # Ed25519 signs without a separate hash
    request = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, algorithm)
    return request.public_bytes(serialization.Encoding.PEM)


def cn_name(value: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])


def certificate_of(ca: CertificateAuthority, record: CertRecord) -> x509.Certificate:
    return x509.load_pem_x509_certificate(record.certificate_path.read_bytes())


def ext(holder: Any, kind: type[ExtensionT]) -> x509.Extension[ExtensionT]:
    extensions: x509.Extensions = holder.extensions
    return extensions.get_extension_for_class(kind)


def pki_error(call: Callable[..., object], *args: Any, **kwargs: Any) -> PkiError:
    with pytest.raises(PkiError) as caught:
        call(*args, **kwargs)
    assert "\n" not in caught.value.message
    return caught.value


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """One PKI shared by the tests of this module; each test uses its own ids."""
    return CertificateAuthority.init(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture
def own_ca(tmp_path: Path) -> CertificateAuthority:
    """A PKI for tests that publish CRLs in the future or otherwise change global state."""
    return CertificateAuthority.init(tmp_path / "ca")


# ---------------------------------------------------------------------------------------------- hierarchy


def test_hierarchy_root_and_issuing_ca(ca: CertificateAuthority) -> None:
    root, issuing = ca.root_certificate, ca.issuing_certificate
    assert root.issuer == root.subject
    assert issuing.issuer == root.subject
    root_bc, issuing_bc = ext(root, x509.BasicConstraints), ext(issuing, x509.BasicConstraints)
    assert (root_bc.critical, root_bc.value.ca, root_bc.value.path_length) == (True, True, 1)
    assert (issuing_bc.critical, issuing_bc.value.ca, issuing_bc.value.path_length) == (True, True, 0)
    for cert in (root, issuing):
        usage = ext(cert, x509.KeyUsage)
        assert usage.critical
        assert usage.value.key_cert_sign
        assert usage.value.crl_sign
        assert not usage.value.digital_signature
        public_key = cert.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        assert isinstance(public_key.curve, ec.SECP256R1)
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    issuing.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    assert (
        ext(issuing, x509.AuthorityKeyIdentifier).value.key_identifier
        == ext(root, x509.SubjectKeyIdentifier).value.digest
    )
    root_life = root.not_valid_after_utc - root.not_valid_before_utc
    issuing_life = issuing.not_valid_after_utc - issuing.not_valid_before_utc
    assert root_life == DEFAULT_POLICY.root_ca + SKEW
    assert issuing_life == DEFAULT_POLICY.issuing_ca + SKEW
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Kakehashi"


def test_trust_bundle_holds_issuing_then_root(ca: CertificateAuthority) -> None:
    bundle = x509.load_pem_x509_certificates(ca.trust_bundle_path.read_bytes())
    assert bundle == [ca.issuing_certificate, ca.root_certificate]
    assert ca.trust_bundle_path == ca.path / "chain.pem"


def test_fresh_pki_has_an_empty_signed_crl(own_ca: CertificateAuthority) -> None:
    crl = own_ca.current_crl()
    assert len(list(crl)) == 0
    assert ext(crl, x509.CRLNumber).value.crl_number == 1
    assert crl.is_signature_valid(own_ca.issuing_certificate.public_key())  # type: ignore[arg-type]
    assert own_ca.crl_path == own_ca.path / "crl.pem"


def test_files_and_permissions(own_ca: CertificateAuthority) -> None:
    base = own_ca.path
    assert stat.S_IMODE(base.stat().st_mode) == 0o700
    for secret in ("root/ca.key", "issuing/ca.key", "index.json"):
        assert stat.S_IMODE((base / secret).stat().st_mode) == 0o600, secret
    for public in ("root/ca.crt", "issuing/ca.crt", "chain.pem", "crl.pem"):
        assert stat.S_IMODE((base / public).stat().st_mode) == 0o644, public


def test_init_refuses_an_existing_pki(ca: CertificateAuthority) -> None:
    error = pki_error(CertificateAuthority.init, ca.path)
    assert error.message == f"a PKI already exists in {ca.path}; refusing to overwrite it (use another --dir)"


def test_init_in_an_existing_empty_directory(tmp_path: Path) -> None:
    authority = CertificateAuthority.init(tmp_path, organisation="Kakogawa City")
    organisation = authority.root_certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert organisation[0].value == "Kakogawa City"


def test_init_refuses_a_bad_organisation(tmp_path: Path) -> None:
    assert "must be 1-50 characters" in pki_error(CertificateAuthority.init, tmp_path, organisation="x" * 51).message
    assert not (tmp_path / "index.json").exists()


def test_open_without_a_pki(tmp_path: Path) -> None:
    error = pki_error(CertificateAuthority.open, tmp_path / "nothing")
    assert error.message == (
        f"no PKI in {tmp_path / 'nothing'}: create one with `kakehashi pki init --dir {tmp_path / 'nothing'}`"
    )


def test_open_an_incomplete_pki(own_ca: CertificateAuthority) -> None:
    (own_ca.path / "chain.pem").unlink()
    assert "incomplete (missing chain.pem)" in pki_error(CertificateAuthority.open, own_ca.path).message


def test_damaged_index_is_one_clear_line(own_ca: CertificateAuthority) -> None:
    (own_ca.path / "index.json").write_text("{not json")
    assert "is damaged" in pki_error(own_ca.records).message


# ------------------------------------------------------------------------------------------------ issuing


@pytest.mark.parametrize(
    ("role", "identity", "usages"),
    [
        (Role.GATEWAY, "gw-kakogawa-0012", [ExtendedKeyUsageOID.CLIENT_AUTH]),
        (Role.NODE, "wl-0007", [ExtendedKeyUsageOID.CLIENT_AUTH]),
        (Role.SERVICE, "agent-1", [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
    ],
)
def test_leaf_certificate_contents(
    ca: CertificateAuthority, role: Role, identity: str, usages: list[x509.ObjectIdentifier]
) -> None:
    key = keys.generate_private_key()
    record = ca.issue(csr_for(identity, key), role, identity)
    cert = certificate_of(ca, record)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Kakehashi"
    assert cert.issuer == ca.issuing_certificate.subject
    assert cert.public_key() == key.public_key()
    san = ext(cert, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(f"urn:kakehashi:{role.value}:{identity}")]
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign
    assert not usage.value.key_encipherment
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == usages
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == (
        ext(ca.issuing_certificate, x509.SubjectKeyIdentifier).value.digest
    )
    assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == DEFAULT_POLICY.leaf_validity(role) + SKEW
    assert 0 < cert.serial_number < 2**159
    cert.verify_directly_issued_by(ca.issuing_certificate)
    # the record describes the certificate
    assert (record.serial, record.identity, record.role, record.kind) == (
        cert.serial_number,
        identity,
        role,
        "client",
    )
    assert (record.not_before, record.not_after) == (cert.not_valid_before_utc, cert.not_valid_after_utc)
    assert (record.status, record.revoked_at, record.revocation_reason) == ("active", None, None)
    assert record.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert record.certificate_path == ca.path / "issued" / f"{record.serial_hex}.crt"
    assert record.serial_hex == format(cert.serial_number, "x")
    assert record.is_valid_at(datetime.now(UTC))
    assert ca.verify_client(cert) == (role, identity)


def test_requested_extensions_are_ignored(ca: CertificateAuthority) -> None:
    key = keys.generate_private_key()
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(cn_name("gw-greedy"))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert = certificate_of(ca, ca.issue(request, Role.GATEWAY, "gw-greedy"))
    assert not ext(cert, x509.BasicConstraints).value.ca
    assert list(ext(cert, x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier("urn:kakehashi:gateway:gw-greedy")
    ]


def test_der_csr_is_accepted(ca: CertificateAuthority) -> None:
    request = x509.load_pem_x509_csr(csr_for("gw-der"))
    record = ca.issue(request.public_bytes(serialization.Encoding.DER), Role.GATEWAY, "gw-der")
    assert record.identity == "gw-der"


def _tampered_signature(identity: str) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(csr_for(identity)).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # last byte of the ECDSA signature's S value
    return bytes(der)


def _swapped_public_key(identity: str) -> bytes:
    signer, other = keys.generate_private_key(), keys.generate_private_key()
    der = x509.load_pem_x509_csr(csr_for(identity, signer)).public_bytes(serialization.Encoding.DER)

    def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    assert der.count(spki(signer)) == 1
    return der.replace(spki(signer), spki(other))


BAD_CSRS: dict[str, tuple[Callable[[str], bytes], str]] = {
    "tampered signature": (lambda i: _tampered_signature(i), "signature is invalid"),
    "swapped public key": (lambda i: _swapped_public_key(i), "signature is invalid"),
    "cn mismatch": (lambda i: csr_for("gw-other"), "the CSR is for 'gw-other' (its subject CN)"),
    "no cn": (
        lambda i: csr_signed_by(
            keys.generate_private_key(), x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")])
        ),
        "the CSR has no subject CN",
    ),
    "rsa": (lambda i: csr_signed_by(rsa.generate_private_key(65537, 2048), cn_name(i)), "key is RSA 2048"),
    "ed25519": (
        lambda i: csr_signed_by(ed25519.Ed25519PrivateKey.generate(), cn_name(i), hashed=False),
        "key is Ed25519",
    ),
    "p384": (
        lambda i: csr_signed_by(ec.generate_private_key(ec.SECP384R1()), cn_name(i)),
        "key is EC secp384r1",
    ),
    "garbage": (lambda i: b"this is not a certificate request at all", "cannot parse the CSR"),
    "garbage pem": (
        lambda i: b"-----BEGIN CERTIFICATE REQUEST-----\nbm9wZQ==\n-----END CERTIFICATE REQUEST-----\n",
        "cannot parse the CSR",
    ),
    "empty": (lambda i: b"", "the CSR is empty"),
    "blank": (lambda i: b" \n\n", "the CSR is empty"),
    "private key": (lambda i: keys.private_key_pem(keys.generate_private_key()), "this is a private key"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSRS))
def test_bad_csr_is_refused(ca: CertificateAuthority, case: str) -> None:
    make, expected = BAD_CSRS[case]
    error = pki_error(ca.issue, make("gw-bad-csr"), Role.GATEWAY, "gw-bad-csr")
    assert expected in error.message
    assert "kakehashi pki request" in error.message or "give the" in error.message
    assert ca.records_for("gw-bad-csr") == []


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
def test_certificate_instead_of_csr_is_refused(ca: CertificateAuthority, encoding: serialization.Encoding) -> None:
    error = pki_error(ca.issue, ca.root_certificate.public_bytes(encoding), Role.GATEWAY, "gw-cert")
    assert "this is a certificate, not a certificate signing request" in error.message


def test_role_given_as_text(ca: CertificateAuthority) -> None:
    assert ca.issue(csr_for("wl-text"), "node", "wl-text").role is Role.NODE  # type: ignore[arg-type]
    with pytest.raises(KakehashiError, match="unknown role 'valve': use one of gateway, node, service"):
        ca.issue(csr_for("wl-valve"), "valve", "wl-valve")  # type: ignore[arg-type]


def test_invalid_id_is_refused(ca: CertificateAuthority) -> None:
    error = pki_error(ca.issue, csr_for("gw-fine"), Role.GATEWAY, "GW_Bad")
    assert error.reason == "identity"
    assert "invalid id 'GW_Bad'" in error.message


def test_id_with_an_active_certificate_is_refused(ca: CertificateAuthority) -> None:
    first = ca.issue(csr_for("gw-twice"), Role.GATEWAY, "gw-twice")
    error = pki_error(ca.issue, csr_for("gw-twice"), Role.GATEWAY, "gw-twice")
    assert error.message == (
        f"gw-twice already has an active certificate (serial {first.serial_hex}, valid until "
        f"{first.not_after.isoformat()}); revoke it first or pass --renew"
    )


def test_an_id_keeps_one_role_forever(ca: CertificateAuthority) -> None:
    ca.issue(csr_for("gw-role"), Role.GATEWAY, "gw-role")
    ca.revoke("gw-role")
    error = pki_error(ca.issue, csr_for("gw-role"), Role.NODE, "gw-role")
    assert "already belongs to a gateway" in error.message
    assert "choose another id" in error.message
    server_error = pki_error(ca.issue_server, csr_for("gw-role"), "gw-role", ["localhost"])
    assert "already belongs to a gateway" in server_error.message


def test_renew_overlaps_old_and_new(ca: CertificateAuthority) -> None:
    key_old, key_new = keys.generate_private_key(), keys.generate_private_key()
    old = ca.issue(csr_for("gw-renew", key_old), Role.GATEWAY, "gw-renew")
    new = ca.issue(csr_for("gw-renew", key_new), Role.GATEWAY, "gw-renew", renew=True)
    assert old.serial != new.serial
    assert [r.serial for r in ca.records_for("gw-renew")] == [old.serial, new.serial]
    active = {r.serial for r in ca.active_records() if r.identity == "gw-renew"}
    assert active == {old.serial, new.serial}
    for record in (old, new):
        assert ca.verify_client(certificate_of(ca, record)) == (Role.GATEWAY, "gw-renew")


def test_expired_certificate_does_not_block_a_new_one(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    ca.issue(csr_for("gw-lapsed"), Role.GATEWAY, "gw-lapsed", not_before=now - timedelta(days=400), not_after=now)
    ca.issue(csr_for("gw-lapsed"), Role.GATEWAY, "gw-lapsed", now=now + timedelta(seconds=1))
    assert len(ca.records_for("gw-lapsed")) == 2


def test_empty_validity_is_refused(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    error = pki_error(ca.issue, csr_for("gw-empty"), Role.GATEWAY, "gw-empty", not_before=now, not_after=now)
    assert "validity period is empty" in error.message


def test_records_in_issue_order(own_ca: CertificateAuthority) -> None:
    ids = ["n-3", "n-1", "n-2"]
    for identity in ids:
        own_ca.issue(csr_for(identity), Role.NODE, identity)
    assert [r.identity for r in own_ca.records()] == ids
    assert [r.identity for r in own_ca.records_for("n-1")] == ["n-1"]
    assert [r.identity for r in own_ca.active_records()] == ids
    assert own_ca.active_records(now=datetime.now(UTC) + timedelta(days=731)) == []


def test_concurrent_issuers_lose_no_record(own_ca: CertificateAuthority) -> None:
    ids = [f"node-{n}" for n in range(8)]
    csrs = {identity: csr_for(identity) for identity in ids}
    errors: list[BaseException] = []

    def work(identity: str) -> None:
        try:
            CertificateAuthority.open(own_ca.path).issue(csrs[identity], Role.NODE, identity)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(identity,)) for identity in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(r.identity for r in own_ca.records()) == sorted(ids)


# ------------------------------------------------------------------------------------------ server certificat


def test_server_certificate(ca: CertificateAuthority) -> None:
    record = ca.issue_server(csr_for("broker"), "broker", ["localhost", "127.0.0.1", "::1", "MQTT.example.jp."])
    cert = certificate_of(ca, record)
    assert (record.role, record.kind) == (Role.SERVICE, "server")
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "mqtt.example.jp"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:kakehashi:service:broker"]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == DEFAULT_POLICY.tls_server + SKEW
    store = verification.Store([ca.root_certificate])
    verifier = verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName("localhost"))
    assert verifier.verify(cert, [ca.issuing_certificate])[-1] == ca.root_certificate
    # a server certificate is not a client certificate
    assert pki_error(ca.verify_client, cert).reason == "chain"
    # re-issuing for the same name is allowed
    again = ca.issue_server(csr_for("broker"), "broker", ["localhost"])
    assert again.serial != record.serial


@pytest.mark.parametrize(
    ("hostnames", "expected"),
    [([], "at least one host name"), (["bad host!"], "neither an IP address nor a valid DNS name")],
)
def test_server_certificate_needs_good_host_names(
    ca: CertificateAuthority, hostnames: list[str], expected: str
) -> None:
    assert expected in pki_error(ca.issue_server, csr_for("api"), "api", hostnames).message


# --------------------------------------------------------------------------------------------- revocation


def test_revoke_publishes_a_crl_listing_the_serials(ca: CertificateAuthority) -> None:
    before = ext(ca.current_crl(), x509.CRLNumber).value.crl_number
    old = ca.issue(csr_for("gw-stolen"), Role.GATEWAY, "gw-stolen")
    new = ca.issue(csr_for("gw-stolen"), Role.GATEWAY, "gw-stolen", renew=True)
    revoked = ca.revoke("gw-stolen", "key_compromise")
    assert [r.serial for r in revoked] == [old.serial, new.serial]
    assert all(r.status == "revoked" and r.revocation_reason == "key_compromise" for r in revoked)
    assert all(r.revoked_at is not None for r in revoked)
    assert [r.status for r in ca.records_for("gw-stolen")] == ["revoked", "revoked"]
    crl = ca.current_crl()
    assert ext(crl, x509.CRLNumber).value.crl_number == before + 1
    assert crl.issuer == ca.issuing_certificate.subject
    assert crl.is_signature_valid(ca.issuing_certificate.public_key())  # type: ignore[arg-type]
    assert ext(crl, x509.AuthorityKeyIdentifier).value.key_identifier == (
        ext(ca.issuing_certificate, x509.SubjectKeyIdentifier).value.digest
    )
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == DEFAULT_POLICY.crl_lifetime + SKEW
    for record in revoked:
        entry = crl.get_revoked_certificate_by_serial_number(record.serial)
        assert entry is not None
        assert entry.revocation_date_utc == record.revoked_at
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
            x509.ReasonFlags.key_compromise
        )
    error = pki_error(ca.revoke, "gw-stolen")
    assert "gw-stolen has no active certificate to revoke" in error.message


def test_revoke_unspecified_leaves_out_the_reason_code(ca: CertificateAuthority) -> None:
    record = ca.issue(csr_for("gw-plain"), Role.GATEWAY, "gw-plain")
    ca.revoke("gw-plain")
    entry = ca.current_crl().get_revoked_certificate_by_serial_number(record.serial)
    assert entry is not None
    with pytest.raises(x509.ExtensionNotFound):
        entry.extensions.get_extension_for_class(x509.CRLReason)


def test_revoke_refuses_unknown_reasons_and_ids(ca: CertificateAuthority) -> None:
    ca.issue(csr_for("gw-reason"), Role.GATEWAY, "gw-reason")
    error = pki_error(ca.revoke, "gw-reason", "stolen")
    assert error.message == "unknown revocation reason 'stolen': use one of " + ", ".join(REVOCATION_REASONS)
    assert "never issued one" in pki_error(ca.revoke, "gw-never").message


def test_publish_crl_increments_its_number(own_ca: CertificateAuthority) -> None:
    first = own_ca.publish_crl()
    second = own_ca.publish_crl()
    assert ext(second, x509.CRLNumber).value.crl_number == ext(first, x509.CRLNumber).value.crl_number + 1
    assert x509.load_pem_x509_crl(own_ca.crl_path.read_bytes()) == second
    assert stat.S_IMODE(own_ca.crl_path.stat().st_mode) == 0o644


def test_ensure_fresh_crl_republishes_before_next_update(own_ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    published = own_ca.current_crl()
    assert own_ca.ensure_fresh_crl(now=now) is False
    assert own_ca.ensure_fresh_crl(now=now + timedelta(days=2, hours=23)) is False  # 4 days and 1 hour left
    later = now + timedelta(days=3, hours=1)  # less than 4 days left
    assert own_ca.ensure_fresh_crl(now=later) is True
    fresh = own_ca.current_crl()
    assert ext(fresh, x509.CRLNumber).value.crl_number == ext(published, x509.CRLNumber).value.crl_number + 1
    assert fresh.next_update_utc is not None
    assert fresh.next_update_utc >= later + DEFAULT_POLICY.crl_lifetime - timedelta(seconds=1)
    assert own_ca.ensure_fresh_crl(now=later) is False
    # a missing CRL is republished too
    own_ca.crl_path.unlink()
    assert own_ca.ensure_fresh_crl(now=later) is True


# ------------------------------------------------------------------------------------------- verification


def test_verify_expired_certificate(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    record = ca.issue(
        csr_for("gw-old"),
        Role.GATEWAY,
        "gw-old",
        not_before=now - timedelta(days=400),
        not_after=now - timedelta(days=1),
    )
    error = pki_error(ca.verify_client, certificate_of(ca, record))
    assert error.reason == "expired"
    assert "expired at" in error.message


def test_verify_not_yet_valid_certificate(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    record = ca.issue(
        csr_for("gw-future"),
        Role.GATEWAY,
        "gw-future",
        not_before=now + timedelta(days=1),
        not_after=now + timedelta(days=10),
    )
    error = pki_error(ca.verify_client, certificate_of(ca, record))
    assert (error.reason, "not valid before" in error.message) == ("expired", True)


def test_verify_revoked_certificate(ca: CertificateAuthority) -> None:
    record = ca.issue(csr_for("gw-gone"), Role.GATEWAY, "gw-gone")
    cert = certificate_of(ca, record)
    assert ca.verify_client(cert) == (Role.GATEWAY, "gw-gone")
    ca.revoke("gw-gone", "cessation_of_operation")
    error = pki_error(ca.verify_client, cert)
    assert error.reason == "revoked"
    assert record.serial_hex in error.message


def test_verify_certificate_from_another_ca(ca: CertificateAuthority, own_ca: CertificateAuthority) -> None:
    foreign = own_ca.issue(csr_for("gw-foreign"), Role.GATEWAY, "gw-foreign")
    error = pki_error(ca.verify_client, certificate_of(own_ca, foreign))
    assert error.reason == "chain"
    assert "does not chain to this fleet's CA" in error.message


def test_verify_with_a_stale_crl(ca: CertificateAuthority) -> None:
    cert = certificate_of(ca, ca.issue(csr_for("gw-stale"), Role.GATEWAY, "gw-stale"))
    next_update = ca.current_crl().next_update_utc
    assert next_update is not None
    error = pki_error(ca.verify_client, cert, now=next_update + timedelta(seconds=1))
    assert error.reason == "crl_stale"
    assert error.message == (
        f"the CRL expired at {next_update.isoformat()}; publish a fresh one with `kakehashi pki crl`"
    )


def test_verify_with_a_foreign_crl(ca: CertificateAuthority, own_ca: CertificateAuthority) -> None:
    from cloud_agent.pki.verify import verify_client_certificate

    cert = certificate_of(ca, ca.issue(csr_for("gw-crl"), Role.GATEWAY, "gw-crl"))
    error = pki_error(
        verify_client_certificate,
        cert,
        root=ca.root_certificate,
        intermediates=[ca.issuing_certificate],
        crl=own_ca.current_crl(),  # same issuer name, other key
        now=datetime.now(UTC),
    )
    assert error.reason == "crl"


def test_operations_work_without_the_root_key(own_ca: CertificateAuthority) -> None:
    (own_ca.path / "root" / "ca.key").unlink()
    authority = CertificateAuthority.open(own_ca.path)
    record = authority.issue(csr_for("gw-offline"), Role.GATEWAY, "gw-offline")
    authority.issue_server(csr_for("broker"), "broker", ["localhost"])
    assert authority.verify_client(certificate_of(authority, record)) == (Role.GATEWAY, "gw-offline")
    authority.revoke("gw-offline", "superseded")
    authority.publish_crl()
    assert authority.ensure_fresh_crl(now=datetime.now(UTC) + timedelta(days=5)) is True
    assert len(authority.records()) == 2


def test_missing_issuing_key_is_one_clear_line(own_ca: CertificateAuthority) -> None:
    (own_ca.path / "issuing" / "ca.key").unlink()
    error = pki_error(own_ca.issue, csr_for("gw-nokey"), Role.GATEWAY, "gw-nokey")
    assert error.message.startswith(f"the issuing CA key {own_ca.path / 'issuing' / 'ca.key'} is missing")


# ----------------------------------------------------------------------------------------- device key files


def test_private_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    key = keys.generate_private_key()
    keys.write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_private_key(path).private_numbers() == key.private_numbers()
    with pytest.raises(KakehashiError) as caught:
        keys.write_private_key(path, keys.generate_private_key())
    assert caught.value.message == (
        f"key file {path} already exists; refusing to overwrite it (move it away or choose another path)"
    )
    assert keys.load_private_key(path).private_numbers() == key.private_numbers()


def test_load_private_key_errors(tmp_path: Path) -> None:
    with pytest.raises(KakehashiError, match="cannot read key file"):
        keys.load_private_key(tmp_path / "missing.key")
    rsa_path = tmp_path / "rsa.key"
    rsa_path.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KakehashiError, match="does not hold an ECDSA P-256 key"):
        keys.load_private_key(rsa_path)
    junk = tmp_path / "junk.key"
    junk.write_text("junk")
    with pytest.raises(KakehashiError, match="is not a PEM private key"):
        keys.load_private_key(junk)


def test_secret_and_public_files_are_atomic_and_overwritable(tmp_path: Path) -> None:
    secret, public = tmp_path / "s", tmp_path / "p"
    for data in (b"one", b"two"):
        keys.write_secret_file(secret, data)
        keys.write_public_file(public, data)
        assert secret.read_bytes() == public.read_bytes() == data
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "s"]  # no temporary files left behind
    with pytest.raises(KakehashiError, match="cannot write"):
        keys.write_public_file(tmp_path / "no-such-dir" / "f", b"x")


def test_make_csr_names_only_the_id() -> None:
    request = x509.load_pem_x509_csr(csr_for("wl-0007"))
    assert request.subject == cn_name("wl-0007")
    assert request.is_signature_valid
    assert isinstance(request.signature_hash_algorithm, hashes.SHA256)
    assert len(request.extensions) == 0
    with pytest.raises(KakehashiError, match="invalid id"):
        keys.make_csr(keys.generate_private_key(), "Not An Id")


# ----------------------------------------------------------------------------------------------- properties

ids = st.from_regex(ID_PATTERN, fullmatch=True)


@given(role=st.sampled_from(list(Role)), identity=ids)
def test_san_uri_round_trips(role: Role, identity: str) -> None:
    assert parse_san_uri(san_uri(role, identity)) == (role, identity)


@pytest.fixture(scope="module")
def property_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("pki") / "property-ca")


# one private key for every example: key generation is not what is under test
_PROPERTY_KEY = keys.generate_private_key()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(identity=ids)
def test_issued_identity_verifies(property_ca: CertificateAuthority, identity: str) -> None:
    role = list(Role)[len(identity) % 3]  # an id keeps one role, so derive it from the id
    record = property_ca.issue(csr_for(identity, _PROPERTY_KEY), role, identity, renew=True)
    assert property_ca.verify_client(certificate_of(property_ca, record)) == (role, identity)


_PEM_ARMOURED = st.binary(max_size=300).map(
    lambda b: b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(b) + b"-----END CERTIFICATE REQUEST-----\n"
)
_VALID_DER = x509.load_pem_x509_csr(csr_for("n-fuzz", _PROPERTY_KEY)).public_bytes(serialization.Encoding.DER)


def _flip(position: int, mask: int) -> bytes:
    return _VALID_DER[:position] + bytes([_VALID_DER[position] ^ mask]) + _VALID_DER[position + 1 :]


_MUTATED_DER = st.builds(_flip, st.integers(0, len(_VALID_DER) - 1), st.integers(1, 255))


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(st.binary(max_size=600), _PEM_ARMOURED, _MUTATED_DER))
def test_random_or_damaged_bytes_are_refused_with_pki_error(property_ca: CertificateAuthority, data: bytes) -> None:
    """Never another exception than PkiError. A damaged CSR may only pass if the damage sits in a byte the DER
    parser tolerates (such as the unused-bits count of the signature); it then still certifies exactly the
    original key and id."""
    outcome: PkiError | CertRecord
    try:
        outcome = property_ca.issue(data, Role.NODE, "n-fuzz", renew=True)
    except PkiError as exc:
        outcome = exc
    if isinstance(outcome, PkiError):
        assert "\n" not in outcome.message
    else:
        cert = certificate_of(property_ca, outcome)
        assert cert.public_key() == _PROPERTY_KEY.public_key()
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "n-fuzz"
