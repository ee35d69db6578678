"""Self-test of the gateway's local broker for its nodes (``[local_broker]``): its certificate and what it enforces.

* **local broker certificate**: ``local-broker.crt`` is the pair of ``local-broker.key``, names
  ``<gateway id>.local`` (what nodes verify), is for server use, chains to the fleet trust bundle and is in date.
* **local broker policy**: the running broker's ``broker.json`` (in ``run_dir``) says which nodes its ACL admits and
  what it does with the fleet CRL. Nodes bound in ``gateway.toml`` but not yet in the ACL are a warning (the broker
  reloads within a second of a change); a stale CRL fails: either revoked nodes are admitted (``stale_crl =
  "open"``) or every node is refused (``"closed"``). No CRL received yet is a warning.

The connection itself (TLS, the relay's access) is the ``nodes' local broker`` check in :mod:`gateway.selftest_brokers`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.config import GatewayConfig
from gateway.selftest_identity import _chain_problem, _dates
from gateway.selftest_model import Check
from kakehashi import keys
from kakehashi.broker.config import BrokerLayout
from kakehashi.broker.runner import BrokerState
from kakehashi.errors import KakehashiError
from kakehashi.identity import local_broker_name

__all__ = ["local_broker_checks"]

CERTIFICATE = "local broker certificate"
POLICY = "local broker policy"
REPROVISION = "renew the gateway's identity, or run `kakehashi gateway provision --force` with a new token"


def local_broker_checks(config: GatewayConfig, now: datetime | None = None) -> list[Check]:
    """The certificate and policy checks, when ``[local_broker]`` is configured (else none)."""
    if config.local_broker is None:
        return []
    return [_certificate(config, now or datetime.now(UTC)), _policy(config)]


def _certificate(config: GatewayConfig, now: datetime) -> Check:
    section = config.local_broker
    assert section is not None
    expected = local_broker_name(config.gateway.id)
    try:
        certificate = x509.load_pem_x509_certificate(section.cert_file.read_bytes())
        key = keys.load_private_key(section.key_file)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (OSError, ValueError, x509.ExtensionNotFound, KakehashiError) as exc:
        return Check.failed(CERTIFICATE, f"{section.cert_file} / {section.key_file}: {exc}", REPROVISION)
    if certificate.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        return Check.failed(CERTIFICATE, f"{section.key_file} is not the key of {section.cert_file}", REPROVISION)
    if expected not in names.get_values_for_type(x509.DNSName) or ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        return Check.failed(CERTIFICATE, f"{section.cert_file} is not a server certificate for {expected}", REPROVISION)
    try:
        bundle = x509.load_pem_x509_certificates(config.uplink.ca_file.read_bytes())
    except (OSError, ValueError):
        bundle = []
    problem = _chain_problem(certificate, bundle, now) if bundle else f"{config.uplink.ca_file} holds no certificate"
    if problem is not None:
        return Check.failed(CERTIFICATE, problem, REPROVISION)
    dates = _dates(certificate, now, CERTIFICATE)
    if dates.status.value != "pass":
        return dates
    return Check.ok(CERTIFICATE, f"{expected}, serial {certificate.serial_number:x}; {dates.detail}")


def _policy(config: GatewayConfig) -> Check:
    section = config.local_broker
    assert section is not None
    layout = BrokerLayout(section.run_dir)
    try:
        state = BrokerState.read(layout.state)
    except KakehashiError:
        return Check.failed(
            POLICY,
            f"no local broker is running from {section.run_dir}",
            "start it: `systemctl start kakehashi-local-broker` (or `kakehashi broker run --config <gateway.toml>`)",
        )
    admitted = set(state.nodes or [])
    bound = {node.id for node in config.sources.nodes.nodes} if config.sources.nodes else set()
    nodes = f"{len(admitted)} node(s) in the ACL ({', '.join(sorted(admitted)) or 'none'})"
    crl = f"fleet CRL #{state.crl_number} (next update {state.crl_next_update})"
    if state.crl_state == "stale":
        return Check.failed(
            POLICY,
            f"{nodes}; the {crl} is stale: the broker runs without it, so revoked nodes are admitted",
            "connect the gateway to the cloud broker (the agent republishes the CRL on down/crl); unbind any node "
            "you know is compromised in [sources.nodes]",
        )
    if state.crl_state == "stale_refusing":
        return Check.failed(
            POLICY,
            f'{nodes}; the {crl} is stale and [local_broker] stale_crl = "closed": every node is refused',
            'connect the gateway to the cloud broker for a fresh CRL, or set stale_crl = "open"',
        )
    missing = sorted(bound - admitted)
    if missing:
        return Check.warning(
            POLICY,
            f"{nodes}; bound in gateway.toml but not admitted yet: {', '.join(missing)}",
            "the broker re-reads gateway.toml within a second: run the self-test again; if it persists, the file "
            "did not load (see the broker's log)",
        )
    if state.crl_state == "missing":
        return Check.warning(
            POLICY,
            f"{nodes}; no fleet CRL received yet: revoked node certificates are not refused",
            "start the gateway service: the agent's CRL arrives on down/crl as soon as it connects",
        )
    return Check.ok(POLICY, f"{nodes}; {crl} in force")
