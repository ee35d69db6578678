"""The local broker's identity and trust inputs, without a broker: its server certificate issued at enrollment and
renewed with the gateway's, the agent's checks on its CSR, and the gateway's checks on a CRL it receives."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from cloud_agent import enrollment
from cloud_agent.pki.authority import CertificateAuthority
from cloud_agent.pki.errors import PkiError
from device_registry import Registry
from gateway.enrollment import enroll_gateway, local_broker_paths, renew_gateway
from gateway.fleet_crl import CrlError, CrlState, store_crl
from kakehashi import keys
from kakehashi.identity import local_broker_name
from tests.cli_support import enrollment_api
from tests.conftest import Fleet
from tests.test_enrollment_gateway import GW
from tests.test_enrollment_gateway import registry as registry


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


async def test_enrollment_issues_a_server_only_certificate_named_by_the_agent_and_renewal_replaces_it(
    fleet: Fleet, registry: Registry, tmp_path: Path
) -> None:
    token = await registry.create_enrollment_token(GW, actor="alice")
    pki = tmp_path / "pi"
    async with enrollment_api(fleet, registry, tmp_path) as url:
        identity = await enroll_gateway(url, fleet.ca.trust_bundle_path, GW, token, pki, local_broker=True)
        key_path, cert_path = local_broker_paths(pki)
        assert key_path.stat().st_mode & 0o777 == 0o600
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
        assert [c.subject for c in chain[1:]] == [fleet.ca.issuing_certificate.subject], "leaf then issuing CA"
        server = chain[0]
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [local_broker_name(GW)], "only the name the agent chose"
        assert names.get_values_for_type(x509.IPAddress) == []
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:kakehashi:gateway:{GW}"]
        usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
        assert format(server.serial_number, "x") == identity.local_broker_serial
        assert keys.load_private_key(key_path).public_key().public_numbers() == server.public_key().public_numbers()  # type: ignore[union-attr]
        with pytest.raises(PkiError, match="EKU"):
            fleet.ca.verify_client(server)  # a broker certificate is no client identity

        renewed = await renew_gateway(url, fleet.ca.trust_bundle_path, GW, pki, force=True)
    assert renewed.local_broker_serial not in (None, identity.local_broker_serial)
    assert _certificate(cert_path).serial_number != server.serial_number
    assert _certificate(cert_path).public_key().public_numbers() != server.public_key().public_numbers()  # type: ignore[union-attr]

    fleet.ca.revoke(GW, "cessation_of_operation")  # decommissioning the gateway revokes its broker's certificates
    revoked = {entry.serial_number for entry in fleet.ca.current_crl()}
    assert {server.serial_number, _certificate(cert_path).serial_number} <= revoked


async def test_a_local_broker_csr_reusing_the_gateway_key_is_refused_before_the_token_is_used(
    fleet: Fleet, registry: Registry
) -> None:
    token = await registry.create_enrollment_token(GW, actor="alice")
    key = keys.generate_private_key()
    csr = keys.make_csr(key, GW)
    with pytest.raises(enrollment.CsrRefused, match="local broker") as refused:
        await enrollment.enroll(registry, fleet.ca, gateway_id=GW, token=token, csr_pem=csr, local_broker_csr_pem=csr)
    assert refused.value.reason == "csr_key_reused"
    other = keys.make_csr(keys.generate_private_key(), "gw-someone-else")
    with pytest.raises(enrollment.CsrRefused, match="local broker") as wrong_name:
        await enrollment.enroll(registry, fleet.ca, gateway_id=GW, token=token, csr_pem=csr, local_broker_csr_pem=other)
    assert wrong_name.value.reason == "csr_subject"
    result = await enrollment.enroll(registry, fleet.ca, gateway_id=GW, token=token, csr_pem=csr)  # token still good
    assert result.local_broker_certificate_pem is None


def test_only_the_fleets_newer_crls_are_stored(fleet: Fleet, tmp_path: Path) -> None:
    path = tmp_path / "fleet-crl.der"
    trust = fleet.ca.trust_bundle_path
    first = fleet.ca.publish_crl().public_bytes(Encoding.DER)
    stored = store_crl(first, path, trust)
    assert stored is not None
    assert stored.state() is CrlState.FRESH
    assert store_crl(first, path, trust) is None, "a retained redelivery changes nothing"
    newer = fleet.ca.publish_crl().public_bytes(Encoding.DER)
    assert store_crl(newer, path, trust) is not None
    with pytest.raises(CrlError, match="older than the stored"):
        store_crl(first, path, trust)  # a replayed old CRL would un-revoke nodes
    foreign = CertificateAuthority.init(tmp_path / "other").publish_crl().public_bytes(Encoding.DER)
    with pytest.raises(CrlError, match="not signed by a CA of"):
        store_crl(foreign, path, trust)
    with pytest.raises(CrlError, match="damaged"):
        store_crl(b"\x30\x03junk", path, trust)
    assert path.read_bytes() == newer
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
    assert stored.state(later) is CrlState.STALE
