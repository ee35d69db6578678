"""The fleet certificate authority: create a PKI, issue certificates from CSRs, revoke them, publish CRLs.

:class:`CertificateAuthority` is the one entry point the CLI, the broker runner and the cloud agent use. The
root key is only needed by :meth:`CertificateAuthority.init`; everything else runs with the issuing CA alone,
so the root key can be moved offline. Each mutation re-reads the CA database under the directory lock, so
several processes can work on one PKI directory safely.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from cloud_agent.pki import build, store
from cloud_agent.pki.csr import check_csr
from cloud_agent.pki.errors import PkiError
from cloud_agent.pki.policy import DEFAULT_POLICY, ValidityPolicy
from cloud_agent.pki.records import CertRecord, Kind
from cloud_agent.pki.verify import verify_client_certificate
from kakehashi.errors import KakehashiError
from kakehashi.identity import Role, local_broker_name, parse_role, validate_id
from kakehashi.keys import generate_private_key, write_public_file
from kakehashi.log import get_logger

__all__ = ["REVOCATION_REASONS", "CertRecord", "CertificateAuthority", "PkiError"]

log = get_logger(__name__)

# X.509 limits a CN to 64 characters and the CA names are "<organisation> Issuing CA"
MAX_ORGANISATION = 50

# RFC 5280 CRLReason names accepted by revoke(), in snake_case
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "certificate_hold": x509.ReasonFlags.certificate_hold,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
}


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _check_id(identity: str) -> str:
    try:
        return validate_id(identity)
    except KakehashiError as exc:
        raise PkiError(exc.message, reason="identity") from None


class CertificateAuthority:
    """A PKI directory with an offline-capable root and an online issuing CA (layout: :mod:`.store`)."""

    def __init__(self, path: Path, *, policy: ValidityPolicy = DEFAULT_POLICY) -> None:
        """Use :meth:`open` or :meth:`init` rather than calling this directly."""
        self._layout = store.PkiLayout(Path(path))
        self._policy = policy
        self._root = store.read_certificate(self._layout.root_cert)
        self._issuing = store.read_certificate(self._layout.issuing_cert)

    # ----------------------------------------------------------------------------------------- lifecycle

    @classmethod
    def init(cls, path: Path, *, organisation: str = "Kakehashi", now: datetime | None = None) -> CertificateAuthority:
        """Create a PKI in ``path`` (made with mode 0700 if missing): root, issuing CA, chain, empty CRL."""
        layout = store.PkiLayout(Path(path))
        if not organisation.strip() or len(organisation) > MAX_ORGANISATION:
            raise PkiError(
                f"the organisation name {organisation!r} must be 1-{MAX_ORGANISATION} characters "
                "(it goes into the CA names); give one such as Kakehashi"
            )
        if layout.exists():
            raise PkiError(f"a PKI already exists in {layout.base}; refusing to overwrite it (use another --dir)")
        moment = _utc(now)
        policy = DEFAULT_POLICY
        try:
            layout.make_dirs()
        except OSError as exc:
            raise PkiError(f"cannot create the PKI directory {layout.base}: {exc.strerror}") from None
        with store.locked(layout):
            if layout.exists():  # another process won the race
                raise PkiError(f"a PKI already exists in {layout.base}; refusing to overwrite it (use another --dir)")
            root_key = generate_private_key()
            root = build.build_root(root_key, organisation, *policy.window(moment, policy.root_ca))
            issuing_key = generate_private_key()
            issuing = build.build_issuing(
                issuing_key, root, root_key, organisation, *policy.window(moment, policy.issuing_ca)
            )
            store.write_ca_key(layout.root_key, root_key)
            store.write_ca_key(layout.issuing_key, issuing_key)
            store.write_certificate(layout.root_cert, root)
            store.write_certificate(layout.issuing_cert, issuing)
            write_public_file(layout.chain, store.pem_certificate(issuing) + store.pem_certificate(root))
            index = store.CaIndex()
            cls._write_crl(layout, policy, build.Issuer(issuing, issuing_key), index, moment)
            store.save_index(layout, index)  # written last: its presence marks a complete PKI
        log.info("pki_created", path=str(layout.base), organisation=organisation)
        return cls(layout.base)

    @classmethod
    def open(cls, path: Path) -> CertificateAuthority:
        """Open an existing PKI directory; a missing or incomplete one is a one-line :class:`PkiError`."""
        layout = store.PkiLayout(Path(path))
        missing = layout.missing()
        if missing:
            if not layout.exists():
                raise PkiError(f"no PKI in {layout.base}: create one with `kakehashi pki init --dir {layout.base}`")
            names = ", ".join(str(p.relative_to(layout.base)) for p in missing)
            raise PkiError(f"the PKI in {layout.base} is incomplete (missing {names}); restore it from a backup")
        return cls(layout.base)

    # ---------------------------------------------------------------------------------------- properties

    @property
    def path(self) -> Path:
        return self._layout.base

    @property
    def policy(self) -> ValidityPolicy:
        return self._policy

    @property
    def trust_bundle_path(self) -> Path:
        """``chain.pem``: the issuing and root certificates, what clients and brokers trust."""
        return self._layout.chain

    @property
    def crl_path(self) -> Path:
        return self._layout.crl

    @property
    def root_certificate(self) -> x509.Certificate:
        return self._root

    @property
    def issuing_certificate(self) -> x509.Certificate:
        return self._issuing

    # ----------------------------------------------------------------------------------------- issuance

    def issue(
        self,
        csr: bytes | x509.CertificateSigningRequest,
        role: Role,
        identity: str,
        *,
        renew: bool = False,
        now: datetime | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> CertRecord:
        """Issue a client certificate for ``identity`` in ``role`` from a PEM/DER CSR made on the device.

        Refused (one-line :class:`PkiError`) if the CSR is damaged, not ECDSA P-256 or for another id, if the
        id was ever used with another role, or if it already has an active certificate and ``renew`` is False.
        ``not_before``/``not_after`` override the policy (tests use them for expired certificates).
        """
        role = parse_role(role)
        _check_id(identity)
        request = check_csr(csr, identity)
        moment = _utc(now)
        start, end = self._validity(moment, self._policy.leaf_validity(role), not_before, not_after)
        with store.locked(self._layout):
            index = store.load_index(self._layout)
            self._check_role(index, identity, role)
            if not renew:
                self._check_no_active(index, identity, moment)
            return self._sign_and_record(
                index,
                request,
                identity=identity,
                role=role,
                kind="client",
                not_before=start,
                not_after=end,
                usages=build.client_usages(role),
            )

    def issue_server(
        self,
        csr: bytes | x509.CertificateSigningRequest,
        name: str,
        hostnames: Sequence[str],
        *,
        now: datetime | None = None,
    ) -> CertRecord:
        """Issue a TLS server certificate (serverAuth) for the service ``name`` answering on ``hostnames``.

        The CSR's subject CN must be ``name`` (make it with ``kakehashi.keys.make_csr(key, name)``). Host
        names become DNSName entries, IP literals IPAddress entries, beside the SAN URI
        ``urn:kakehashi:service:<name>``.
        Re-issuing for the same name is allowed; the name must not belong to a gateway or node.
        """
        _check_id(name)
        return self._issue_tls_server(csr, name, Role.SERVICE, build.host_names(hostnames), now)

    def issue_local_broker(
        self, csr: bytes | x509.CertificateSigningRequest, gateway_id: str, *, now: datetime | None = None
    ) -> CertRecord:
        """Issue the TLS server certificate of ``gateway_id``'s local broker (the one its nodes connect to).

        The CSR's CN must be the gateway id (a key made on the Pi for this purpose, not the gateway's client key).
        The certificate carries serverAuth only, the SAN URI ``urn:kakehashi:gateway:<id>`` and the one DNS name
        ``<id>.local``: the names come from the id, never from the request, so a gateway cannot obtain a
        certificate for the cloud broker's or the agent's name. It is recorded as the gateway's ``server``
        certificate, so revoking the gateway revokes it too.
        """
        _check_id(gateway_id)
        names = build.host_names([local_broker_name(gateway_id)])
        return self._issue_tls_server(csr, gateway_id, Role.GATEWAY, names, now)

    def _issue_tls_server(
        self,
        csr: bytes | x509.CertificateSigningRequest,
        identity: str,
        role: Role,
        names: Sequence[x509.GeneralName],
        now: datetime | None,
    ) -> CertRecord:
        """A serverAuth certificate for ``identity`` (CSR CN = identity) in ``role``, answering on ``names``."""
        request = check_csr(csr, identity)
        start, end = self._validity(_utc(now), self._policy.tls_server, None, None)
        with store.locked(self._layout):
            index = store.load_index(self._layout)
            self._check_role(index, identity, role)
            return self._sign_and_record(
                index,
                request,
                identity=identity,
                role=role,
                kind="server",
                not_before=start,
                not_after=end,
                usages=build.SERVER_USAGES,
                extra_names=names,
            )

    def _validity(
        self,
        now: datetime,
        lifetime: timedelta,
        not_before: datetime | None,
        not_after: datetime | None,
    ) -> tuple[datetime, datetime]:
        start, end = self._policy.window(now, lifetime)
        if not_after is None:
            # a leaf never outlives its issuer: near the end of the issuing CA's life, leaves get shorter
            end = min(end, self._issuing.not_valid_after_utc)
        start = start if not_before is None else _utc(not_before)
        end = end if not_after is None else _utc(not_after)
        if start >= end:
            raise PkiError(
                f"the validity period is empty (not before {start.isoformat()}, "
                f"not after {end.isoformat()}); give a not_after later than not_before"
            )
        return start, end

    @staticmethod
    def _check_role(index: store.CaIndex, identity: str, role: Role) -> None:
        for record in index.records:
            if record.identity == identity and record.role is not role:
                raise PkiError(
                    f"the id {identity!r} already belongs to a {record.role.value} "
                    f"(serial {record.serial_hex}); an id keeps one role forever: "
                    f"choose another id for this {role.value}"
                )

    @staticmethod
    def _check_no_active(index: store.CaIndex, identity: str, now: datetime) -> None:
        for record in index.records:
            if record.identity == identity and record.kind == "client" and record.is_valid_at(now):
                raise PkiError(
                    f"{identity} already has an active certificate (serial {record.serial_hex}, valid until "
                    f"{record.not_after.isoformat()}); revoke it first or pass --renew"
                )

    def _sign_and_record(
        self,
        index: store.CaIndex,
        request: x509.CertificateSigningRequest,
        *,
        identity: str,
        role: Role,
        kind: Kind,
        not_before: datetime,
        not_after: datetime,
        usages: Sequence[x509.ObjectIdentifier],
        extra_names: Sequence[x509.GeneralName] = (),
    ) -> CertRecord:
        public_key = request.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)  # check_csr guarantees it
        issuer = build.Issuer(self._issuing, store.read_issuing_key(self._layout))
        used = {record.serial for record in index.records}
        serial = x509.random_serial_number()
        while serial in used:
            serial = x509.random_serial_number()
        certificate = build.build_leaf(
            issuer,
            public_key,
            common_name=identity,
            role=role,
            serial=serial,
            not_before=not_before,
            not_after=not_after,
            usages=usages,
            extra_names=extra_names,
        )
        path = self._layout.issued_cert(serial)
        store.write_certificate(path, certificate)
        record = CertRecord.from_certificate(certificate, identity=identity, role=role, kind=kind, path=path)
        index.records.append(record)
        store.save_index(self._layout, index)
        log.info(
            "certificate_issued",
            serial=record.serial_hex,
            identity=identity,
            role=role.value,
            kind=kind,
            not_after=record.not_after.isoformat(),
        )
        return record

    # --------------------------------------------------------------------------------------- revocation

    def revoke(self, identity: str, reason: str = "unspecified", *, now: datetime | None = None) -> list[CertRecord]:
        """Revoke every unexpired certificate of ``identity``, publish a fresh CRL; return those revoked."""
        flag = REVOCATION_REASONS.get(reason)
        if flag is None:
            raise PkiError(f"unknown revocation reason {reason!r}: use one of {', '.join(REVOCATION_REASONS)}")
        _check_id(identity)
        moment = _utc(now).replace(microsecond=0)  # the CRL records whole seconds
        with store.locked(self._layout):
            index = store.load_index(self._layout)
            revoked: list[CertRecord] = []
            for position, record in enumerate(index.records):
                # certificates not yet valid are revoked too: they would become usable later
                if record.identity == identity and record.status == "active" and record.not_after >= moment:
                    updated = dataclasses.replace(record, status="revoked", revoked_at=moment, revocation_reason=reason)
                    index.records[position] = updated
                    revoked.append(updated)
            if not revoked:
                known = any(record.identity == identity for record in index.records)
                detail = "all its certificates are already revoked or expired" if known else "it was never issued one"
                raise PkiError(f"{identity} has no active certificate to revoke ({detail}); see `kakehashi pki show`")
            issuer = build.Issuer(self._issuing, store.read_issuing_key(self._layout))
            self._write_crl(self._layout, self._policy, issuer, index, moment)
            store.save_index(self._layout, index)
        for record in revoked:
            log.info("certificate_revoked", serial=record.serial_hex, identity=identity, reason=reason)
        return revoked

    @staticmethod
    def _write_crl(
        layout: store.PkiLayout,
        policy: ValidityPolicy,
        issuer: build.Issuer,
        index: store.CaIndex,
        now: datetime,
    ) -> x509.CertificateRevocationList:
        """Sign and atomically write the next CRL; bumps ``index.crl_number`` (the caller saves the index)."""
        index.crl_number += 1
        entries = [
            (
                r.serial,
                r.revoked_at or now,
                REVOCATION_REASONS.get(r.revocation_reason or "", x509.ReasonFlags.unspecified),
            )
            for r in index.records
            if r.status == "revoked"
        ]
        last_update, next_update = policy.window(now, policy.crl_lifetime)
        crl = build.build_crl(
            issuer, entries, number=index.crl_number, last_update=last_update, next_update=next_update
        )
        write_public_file(layout.crl, store.pem_crl(crl))
        return crl

    def publish_crl(self, *, now: datetime | None = None) -> x509.CertificateRevocationList:
        """Sign a fresh CRL (next number, nextUpdate = now + policy.crl_lifetime) and write ``crl.pem``."""
        moment = _utc(now)
        with store.locked(self._layout):
            index = store.load_index(self._layout)
            issuer = build.Issuer(self._issuing, store.read_issuing_key(self._layout))
            crl = self._write_crl(self._layout, self._policy, issuer, index, moment)
            store.save_index(self._layout, index)
        log.info("crl_published", number=index.crl_number, next_update=str(crl.next_update_utc))
        return crl

    def current_crl(self) -> x509.CertificateRevocationList:
        """The CRL currently in ``crl.pem``."""
        return store.read_crl(self._layout.crl)

    def ensure_fresh_crl(self, *, now: datetime | None = None) -> bool:
        """Re-publish the CRL if less than ``policy.crl_refresh_margin`` remains before its nextUpdate.

        Returns True if a new CRL was published. Call it periodically wherever CRLs are served.
        """
        moment = _utc(now)
        if not self._crl_refresh_due(moment):
            return False
        with store.locked(self._layout):
            if not self._crl_refresh_due(moment):  # another process refreshed it meanwhile
                return False
            index = store.load_index(self._layout)
            issuer = build.Issuer(self._issuing, store.read_issuing_key(self._layout))
            crl = self._write_crl(self._layout, self._policy, issuer, index, moment)
            store.save_index(self._layout, index)
        log.info("crl_refreshed", number=index.crl_number, next_update=str(crl.next_update_utc))
        return True

    def _crl_refresh_due(self, now: datetime) -> bool:
        try:
            next_update = self.current_crl().next_update_utc
        except PkiError:
            return True  # missing or damaged: publish a good one
        return next_update is None or self._policy.crl_refresh_due(next_update, now)

    # ------------------------------------------------------------------------------------------ queries

    def records(self) -> list[CertRecord]:
        """Every certificate ever issued by this CA, in issue order."""
        return list(store.load_index(self._layout).records)

    def records_for(self, identity: str) -> list[CertRecord]:
        """Every certificate ever issued for ``identity``, in issue order."""
        return [record for record in self.records() if record.identity == identity]

    def active_records(self, *, now: datetime | None = None) -> list[CertRecord]:
        """Certificates that are unrevoked and within their validity period at ``now``."""
        moment = _utc(now)
        return [record for record in self.records() if record.is_valid_at(moment)]

    def crl_number(self) -> int:
        """The number of the last CRL published."""
        return store.load_index(self._layout).crl_number

    def load_certificate(self, record: CertRecord) -> x509.Certificate:
        """The certificate a record describes, read from ``issued/``."""
        return store.read_certificate(record.certificate_path)

    # ------------------------------------------------------------------------------------- verification

    def verify_client(self, certificate: x509.Certificate, *, now: datetime | None = None) -> tuple[Role, str]:
        """Return ``(role, id)`` if ``certificate`` is a valid, unrevoked client certificate of this fleet."""
        return verify_client_certificate(
            certificate,
            root=self._root,
            intermediates=[self._issuing],
            crl=self.current_crl(),
            now=_utc(now),
        )
