"""Gateway enrollment and renewal through the HTTPS routes, with a real CA and a real registry on both databases:
the happy paths, every token refusal, every CSR refusal (without burning the token), and renewal refusals."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from fastapi import FastAPI

from cloud_agent.api import enrollment_routes
from cloud_agent.api.errors import ErrorCounts, install_error_handlers
from cloud_agent.enrollment import renewal_opens_at
from cloud_agent.pki.authority import CertificateAuthority
from cloud_agent.runtime import AgentRuntime
from device_registry import Registry, State
from kakehashi import keys
from kakehashi.identity import Role
from tests.postgres import FakeClock, organisation
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import registry_fixture as registry_fixture

GW = "gw-enroll-0001"
OTHER = "gw-enroll-0002"


class NoActions:
    """The agent's fleet-side effects, which enrollment never needs."""

    async def desired_changed(self, gateway_id: str) -> None:
        raise AssertionError("enrollment changes no desired state")

    async def commands_changed(self, gateway_id: str) -> None:
        raise AssertionError("enrollment sends no command")

    async def identity_revoked(self, entity_id: str, reason: str) -> None:
        raise AssertionError("enrollment revokes nothing")


def make_app(runtime: AgentRuntime) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, ErrorCounts())
    app.include_router(enrollment_routes.router(runtime))
    return app


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://agent.test")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "pki")


@pytest.fixture
async def http(registry: Registry, ca: CertificateAuthority) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(make_app(AgentRuntime(registry, NoActions(), ca))) as client:
        yield client


async def registered(registry: Registry, *gateway_ids: str) -> None:
    await organisation(registry)
    for gateway_id in gateway_ids:
        await registry.create_gateway(gateway_id, "kakogawa", actor="admin")


def csr_of(key: Any, cn: str) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    request = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM).decode()


def tampered(csr_pem: str) -> str:
    """The CSR with the last byte of its signature changed: still parses, no longer verifies."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


async def enroll(http: httpx.AsyncClient, gateway_id: str, token: str, csr_pem: str) -> httpx.Response:
    return await http.post("/v1/enroll", json={"gateway_id": gateway_id, "token": token, "csr_pem": csr_pem})


def refusal(response: httpx.Response, status: int, reason: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == reason, body
    assert "\n" not in body["detail"]
    return str(body["detail"])


# ------------------------------------------------------------------------------------------------- enrollment


async def test_enrollment_issues_a_certificate_and_provisions_the_gateway(
    registry: Registry, ca: CertificateAuthority, http: httpx.AsyncClient
) -> None:
    await registered(registry, GW)
    token = await registry.create_enrollment_token(GW, actor="alice")
    key = keys.generate_private_key()
    response = await enroll(http, GW, token, keys.make_csr(key, GW).decode())
    assert response.status_code == 200, response.text
    body = response.json()
    certificate = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    assert ca.verify_client(certificate) == (Role.GATEWAY, GW)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:kakehashi:gateway:{GW}"]
    assert certificate.public_key() == key.public_key()
    assert body["serial"] == format(certificate.serial_number, "x")
    assert body["renewed"] is False
    issuing = x509.load_pem_x509_certificate(body["chain_pem"].encode())
    assert issuing == ca.issuing_certificate
    assert body["trust_bundle_pem"] == ca.trust_bundle_path.read_text()
    assert (await registry.get_gateway(GW)).state is State.PROVISIONED
    assert [c.serial for c in await registry.certificates(GW)] == [body["serial"]]
    actions = [entry.action for entry in await registry.audit(entity=GW)]
    assert {"enrollment.token_consumed", "certificate.recorded"} <= set(actions)


async def test_each_token_refusal_has_its_own_reason(
    registry: Registry, clock: FakeClock, http: httpx.AsyncClient
) -> None:
    await registered(registry, GW, OTHER)
    csr = keys.make_csr(keys.generate_private_key(), GW).decode()

    refusal(await enroll(http, GW, "not-a-token", csr), 401, "token_unknown")
    # a gateway that does not exist looks exactly like a wrong token: nobody can probe for ids
    ghost = keys.make_csr(keys.generate_private_key(), "gw-ghost").decode()
    refusal(await enroll(http, "gw-ghost", "not-a-token", ghost), 401, "token_unknown")

    others = await registry.create_enrollment_token(OTHER, actor="alice")
    refusal(await enroll(http, GW, others, csr), 401, "token_wrong_gateway")

    token = await registry.create_enrollment_token(GW, actor="alice")
    assert (await enroll(http, GW, token, csr)).status_code == 200
    again = keys.make_csr(keys.generate_private_key(), GW).decode()
    refusal(await enroll(http, GW, token, again), 401, "token_used")

    late = await registry.create_enrollment_token(OTHER, actor="alice", ttl=timedelta(hours=1))
    clock.advance(timedelta(hours=2))
    other_csr = keys.make_csr(keys.generate_private_key(), OTHER).decode()
    refusal(await enroll(http, OTHER, late, other_csr), 401, "token_expired")

    final = await registry.create_enrollment_token(OTHER, actor="alice")
    await registry.transition(OTHER, State.DECOMMISSIONED, "alice", "river works")
    refusal(await enroll(http, OTHER, final, other_csr), 409, "gateway_decommissioned")
    refused = [e.detail["refusal"] for e in await registry.audit(action="enrollment.token_refused")]
    assert refused == ["token_unknown", "token_wrong_gateway", "token_used", "token_expired", "gateway_decommissioned"]


async def test_a_bad_csr_is_refused_specifically_and_does_not_burn_the_token(
    registry: Registry, http: httpx.AsyncClient
) -> None:
    await registered(registry, GW)
    token = await registry.create_enrollment_token(GW, actor="alice")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    detail = refusal(await enroll(http, GW, token, csr_of(rsa_key, GW)), 400, "csr_key_type")
    assert "RSA 2048" in detail
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert "secp384r1" in refusal(await enroll(http, GW, token, csr_of(p384, GW)), 400, "csr_key_type")
    good_key = keys.generate_private_key()
    assert OTHER in refusal(await enroll(http, GW, token, csr_of(good_key, OTHER)), 400, "csr_subject")
    refusal(await enroll(http, GW, token, "garbage"), 400, "csr_invalid")
    detail = refusal(await enroll(http, GW, token, tampered(csr_of(good_key, GW))), 400, "csr_signature")
    assert "signature" in detail
    refusal(await enroll(http, "GW-Upper", token, csr_of(good_key, GW)), 400, "invalid_id")
    assert await registry.audit(action="enrollment.token_refused") == []

    response = await enroll(http, GW, token, csr_of(good_key, GW))
    assert response.status_code == 200, response.text


async def test_a_certificate_given_as_csr_is_named(
    registry: Registry, ca: CertificateAuthority, http: httpx.AsyncClient
) -> None:
    await registered(registry, GW)
    token = await registry.create_enrollment_token(GW, actor="alice")
    pem = ca.issuing_certificate.public_bytes(serialization.Encoding.PEM).decode()
    assert "certificate" in refusal(await enroll(http, GW, token, pem), 400, "csr_invalid")


async def test_re_enrollment_after_a_wipe_overlaps_with_the_old_certificate(
    registry: Registry, ca: CertificateAuthority, http: httpx.AsyncClient
) -> None:
    await registered(registry, GW)
    first = await enroll(
        http,
        GW,
        await registry.create_enrollment_token(GW, actor="a"),
        keys.make_csr(keys.generate_private_key(), GW).decode(),
    )
    second = await enroll(
        http,
        GW,
        await registry.create_enrollment_token(GW, actor="a"),
        keys.make_csr(keys.generate_private_key(), GW).decode(),
    )
    assert second.status_code == 200, second.text
    assert second.json()["renewed"] is True
    for response in (first, second):
        certificate = x509.load_pem_x509_certificate(response.json()["certificate_pem"].encode())
        assert ca.verify_client(certificate) == (Role.GATEWAY, GW)
    assert len(await registry.certificates(GW)) == 2


async def test_an_agent_without_a_ca_says_enrollment_is_disabled(registry: Registry) -> None:
    async with client_for(make_app(AgentRuntime(registry, NoActions(), None))) as client:
        csr = keys.make_csr(keys.generate_private_key(), GW).decode()
        refusal(await enroll(client, GW, "token", csr), 503, "enrollment_disabled")
        body = {"gateway_id": GW, "csr_pem": csr, "certificate_pem": "x", "signature": "eA=="}
        refusal(await client.post("/v1/enroll/renew", json=body), 503, "enrollment_disabled")


# ---------------------------------------------------------------------------------------------------- renewal


def current_identity(
    ca: CertificateAuthority, gateway_id: str, *, remaining: timedelta, lifetime: timedelta = timedelta(days=365)
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = datetime.now(UTC)
    key = keys.generate_private_key()
    record = ca.issue(
        keys.make_csr(key, gateway_id),
        Role.GATEWAY,
        gateway_id,
        renew=True,
        not_before=now + remaining - lifetime,
        not_after=now + remaining,
    )
    return key, ca.load_certificate(record)


async def provisioned(registry: Registry, ca: CertificateAuthority, gateway_id: str, **window: Any) -> Any:
    await registered(registry, gateway_id)
    key, certificate = current_identity(ca, gateway_id, **window)
    serial = format(certificate.serial_number, "x")
    await registry.record_certificate(gateway_id, serial, certificate.not_valid_after_utc, actor="pki")
    return key, certificate


def renewal_body(
    gateway_id: str, signer: ec.EllipticCurvePrivateKey, certificate: x509.Certificate, **extra: Any
) -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    new_key = keys.generate_private_key()
    csr = keys.make_csr(new_key, gateway_id)
    der = x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER)
    signature = signer.sign(der, ec.ECDSA(hashes.SHA256()))
    body = {
        "gateway_id": gateway_id,
        "csr_pem": csr.decode(),
        "certificate_pem": certificate.public_bytes(serialization.Encoding.PEM).decode(),
        "signature": base64.b64encode(signature).decode(),
        **extra,
    }
    return new_key, body


async def test_renewal_issues_an_overlapping_certificate_for_a_new_key(
    registry: Registry, ca: CertificateAuthority, http: httpx.AsyncClient
) -> None:
    key, old = await provisioned(registry, ca, GW, remaining=timedelta(days=20))
    new_key, body = renewal_body(GW, key, old)
    response = await http.post("/v1/enroll/renew", json=body)
    assert response.status_code == 200, response.text
    new = x509.load_pem_x509_certificate(response.json()["certificate_pem"].encode())
    assert new.public_key() == new_key.public_key()
    assert response.json()["renewed"] is True
    assert ca.verify_client(old) == ca.verify_client(new) == (Role.GATEWAY, GW)
    assert new.not_valid_after_utc > old.not_valid_after_utc
    renewed = await registry.audit(action="certificate.renewed")
    assert renewed[0].detail["old_serial"] == format(old.serial_number, "x")
    assert renewed[0].actor == GW


async def test_renewal_window_and_force(registry: Registry, ca: CertificateAuthority, http: httpx.AsyncClient) -> None:
    key, current = await provisioned(registry, ca, GW, remaining=timedelta(days=300))
    _, body = renewal_body(GW, key, current)
    opens = renewal_opens_at(current.not_valid_before_utc, current.not_valid_after_utc)
    assert opens.date().isoformat() in refusal(await http.post("/v1/enroll/renew", json=body), 409, "renewal_too_early")
    _, forced = renewal_body(GW, key, current, force=True)
    assert (await http.post("/v1/enroll/renew", json=forced)).status_code == 200


async def test_renewal_refusals(registry: Registry, ca: CertificateAuthority, http: httpx.AsyncClient) -> None:
    key, current = await provisioned(registry, ca, GW, remaining=timedelta(days=10))
    other_key, other = await provisioned(registry, ca, OTHER, remaining=timedelta(days=10))
    now = datetime.now(UTC)

    # a signature by another key than the current certificate's
    _, body = renewal_body(GW, other_key, current)
    refusal(await http.post("/v1/enroll/renew", json=body), 401, "signature_invalid")
    # another gateway's certificate
    _, body = renewal_body(GW, other_key, other)
    refusal(await http.post("/v1/enroll/renew", json=body), 403, "certificate_wrong_gateway")
    # the same key again
    body = renewal_body(GW, key, current)[1] | {"csr_pem": keys.make_csr(key, GW).decode()}
    der = x509.load_pem_x509_csr(body["csr_pem"].encode()).public_bytes(serialization.Encoding.DER)
    body["signature"] = base64.b64encode(key.sign(der, ec.ECDSA(hashes.SHA256()))).decode()
    refusal(await http.post("/v1/enroll/renew", json=body), 400, "csr_key_reused")
    # unreadable parts
    _, body = renewal_body(GW, key, current)
    refusal(await http.post("/v1/enroll/renew", json=body | {"signature": "%%%"}), 400, "signature_unreadable")
    refusal(await http.post("/v1/enroll/renew", json=body | {"certificate_pem": "x"}), 400, "certificate_unreadable")
    # a service certificate
    service_key = keys.generate_private_key()
    service = ca.load_certificate(ca.issue(keys.make_csr(service_key, "agent-9"), Role.SERVICE, "agent-9"))
    _, body = renewal_body(GW, service_key, service)
    refusal(await http.post("/v1/enroll/renew", json=body), 403, "certificate_wrong_role")
    # an expired certificate cannot renew itself
    expired_key = keys.generate_private_key()
    expired = ca.load_certificate(
        ca.issue(
            keys.make_csr(expired_key, GW),
            Role.GATEWAY,
            GW,
            renew=True,
            not_before=now - timedelta(days=30),
            not_after=now - timedelta(days=1),
        )
    )
    _, body = renewal_body(GW, expired_key, expired)
    assert "token" in refusal(await http.post("/v1/enroll/renew", json=body), 401, "certificate_expired")
    # a suspended gateway
    await registry.transition(GW, State.ACTIVE, "alice", "first message")
    await registry.transition(GW, State.SUSPENDED, "alice", "tampering suspected")
    _, body = renewal_body(GW, key, current)
    refusal(await http.post("/v1/enroll/renew", json=body), 409, "gateway_suspended")
    # a revoked certificate
    ca.revoke(OTHER, "key_compromise")
    _, body = renewal_body(OTHER, other_key, other)
    refusal(await http.post("/v1/enroll/renew", json=body), 401, "certificate_revoked")
    assert len(ca.records_for(GW)) == 2  # nothing was issued by any refused renewal


async def test_a_certificate_from_another_ca_is_untrusted(
    registry: Registry, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    await registered(registry, GW)
    foreign = CertificateAuthority.init(tmp_path / "foreign")
    key, certificate = current_identity(foreign, GW, remaining=timedelta(days=10))
    _, body = renewal_body(GW, key, certificate)
    refusal(await http.post("/v1/enroll/renew", json=body), 401, "certificate_untrusted")


async def test_a_certificate_revoked_in_the_registry_cannot_renew_before_the_ca_catches_up(
    registry: Registry, ca: CertificateAuthority, http: httpx.AsyncClient
) -> None:
    key, current = await provisioned(registry, ca, GW, remaining=timedelta(days=10))
    await registry.revoke_certificate(format(current.serial_number, "x"), actor="alice", reason="hardware stolen")
    _, body = renewal_body(GW, key, current)
    assert "hardware stolen" in refusal(await http.post("/v1/enroll/renew", json=body), 401, "certificate_revoked")


async def test_a_certificate_not_yet_valid_points_at_the_clocks(
    registry: Registry, ca: CertificateAuthority, http: httpx.AsyncClient
) -> None:
    await registered(registry, GW)
    key, future = current_identity(ca, GW, remaining=timedelta(days=400))
    _, body = renewal_body(GW, key, future)
    assert "clocks" in refusal(await http.post("/v1/enroll/renew", json=body), 401, "certificate_expired")


async def test_an_id_that_belongs_to_a_node_cannot_become_a_gateway(
    registry: Registry, ca: CertificateAuthority, http: httpx.AsyncClient
) -> None:
    ca.issue(keys.make_csr(keys.generate_private_key(), GW), Role.NODE, GW)
    await registered(registry, GW)
    token = await registry.create_enrollment_token(GW, actor="alice")
    csr = keys.make_csr(keys.generate_private_key(), GW).decode()
    assert "node" in refusal(await enroll(http, GW, token, csr), 409, "identity_conflict")


async def test_one_token_used_twice_at_once_issues_one_certificate(
    registry: Registry, ca: CertificateAuthority, http: httpx.AsyncClient
) -> None:
    await registered(registry, GW)
    token = await registry.create_enrollment_token(GW, actor="alice")
    csrs = [keys.make_csr(keys.generate_private_key(), GW).decode() for _ in range(2)]
    answers = await asyncio.gather(*(enroll(http, GW, token, csr) for csr in csrs))
    assert sorted(answer.status_code for answer in answers) == [200, 401]
    assert len(ca.records_for(GW)) == 1
