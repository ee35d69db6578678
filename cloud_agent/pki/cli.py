"""``kakehashi pki``: the operator's and technician's commands for the fleet certificate authority.

``init`` creates a PKI directory, ``request`` makes a key and CSR on a device, ``issue`` signs a CSR,
``revoke`` withdraws an id's certificates, ``crl`` publishes a fresh CRL and ``show`` lists what was issued.
Expected failures are :class:`~kakehashi.errors.KakehashiError` subclasses, printed by the root command as one
``error:`` line.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cloud_agent.pki.authority import CertificateAuthority
from cloud_agent.pki.errors import PkiError
from cloud_agent.pki.records import CertRecord
from kakehashi import ui
from kakehashi.identity import parse_role, validate_id
from kakehashi.keys import FileError, generate_private_key, make_csr, write_private_key, write_public_file

DIR_ENV = "KAKEHASHI_PKI_DIR"
TABLE_COLUMNS = ["id", "role", "kind", "serial", "not_after", "status"]

_dir_option = click.option(
    "--dir",
    "directory",
    required=True,
    envvar=DIR_ENV,
    show_envvar=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="PKI directory.",
)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_input(path: Path, what: str, hint: str) -> bytes:
    """The bytes of an input file, or one line naming the file and how to fix the problem."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileError(f"{what} {path} does not exist; {hint}") from None
    except IsADirectoryError:
        raise FileError(f"{what} {path} is a directory; give the file itself") from None
    except PermissionError:
        raise FileError(f"cannot read {what} {path}: permission denied; check its owner and mode") from None
    except OSError as exc:
        raise FileError(f"cannot read {what} {path}: {exc.strerror}") from None


def _check_output(path: Path, what: str) -> None:
    """Fail before doing any work if ``path`` cannot be written (its directory is missing or read-only)."""
    directory = path.parent
    if path.is_dir():
        raise FileError(f"{what} {path} is a directory; give a file name")
    if not directory.is_dir():
        raise FileError(f"cannot write {what} {path}: the directory {directory} does not exist; create it first")
    if not os.access(directory, os.W_OK):
        raise FileError(f"cannot write {what} {path}: the directory {directory} is not writable")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def pki() -> None:
    """Fleet certificate authority: create it, issue and revoke certificates, publish CRLs, show state."""


@pki.command()
@_dir_option
@click.option("--organisation", default="Kakehashi", show_default=True, help="O= in every certificate.")
def init(directory: Path, organisation: str) -> None:
    """Create a new PKI (root CA, issuing CA, trust bundle, empty CRL) in an empty or new directory."""
    ca = CertificateAuthority.init(directory, organisation=organisation)
    crl = ca.current_crl()
    root_key = ca.path / "root" / "ca.key"
    root_until = _when(ca.root_certificate.not_valid_after_utc)
    issuing_until = _when(ca.issuing_certificate.not_valid_after_utc)
    click.echo(f"created a PKI in {ca.path}")
    ui.print_kv(
        [
            ("root CA", f"{ca.path / 'root' / 'ca.crt'} (valid until {root_until})"),
            ("root key", f"{root_key} (0600)"),
            ("issuing CA", f"{ca.path / 'issuing' / 'ca.crt'} (valid until {issuing_until})"),
            ("issuing key", f"{ca.path / 'issuing' / 'ca.key'} (0600)"),
            ("trust bundle", ca.trust_bundle_path),
            ("CRL", f"{ca.crl_path} (next update {_when(crl.next_update_utc)})"),
            ("database", ca.path / "index.json"),
        ]
    )
    click.echo(
        f"The root key is only needed to create the PKI: move {root_key} to offline storage; "
        "every other command works without it."
    )


@pki.command()
@click.option("--id", "identity", required=True, help="Id of this device, e.g. gw-kakogawa-0012.")
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path), help="Where to write the key.")
@click.option("--csr", "csr_path", required=True, type=click.Path(path_type=Path), help="Where to write the CSR.")
def request(identity: str, key_path: Path, csr_path: Path) -> None:
    """Make a private key on this machine (0600) and a certificate signing request to send to the operator."""
    validate_id(identity)
    if key_path.absolute() == csr_path.absolute():
        raise FileError(f"--key and --csr are the same file ({key_path}); give two different paths")
    if key_path.exists():
        raise FileError(
            f"key file {key_path} already exists; refusing to overwrite it (move it away or choose another --key)"
        )
    _check_output(key_path, "key file")
    _check_output(csr_path, "CSR")
    key = generate_private_key()
    write_private_key(key_path, key)
    write_public_file(csr_path, make_csr(key, identity))
    ui.print_kv([("key", f"{key_path} (0600: keep it on this machine)"), ("CSR", csr_path)])
    click.echo(
        f"Send {csr_path} to the operator, who runs "
        f"`kakehashi pki issue --role ROLE --id {identity} --csr {csr_path.name} --out CERT`."
    )


@pki.command()
@_dir_option
@click.option("--role", "role_name", required=True, help="gateway, node or service.")
@click.option("--id", "identity", required=True, help="Id the certificate is for (must be the CSR's CN).")
@click.option("--csr", "csr_path", required=True, type=click.Path(path_type=Path), help="CSR file (PEM or DER).")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Certificate to write.")
@click.option("--renew", is_flag=True, help="Issue even if the id has an active certificate (both stay valid).")
def issue(directory: Path, role_name: str, identity: str, csr_path: Path, out_path: Path, renew: bool) -> None:
    """Issue a client certificate for a gateway, node or service from its CSR."""
    role = parse_role(role_name)
    validate_id(identity)
    ca = CertificateAuthority.open(directory)
    _check_output(out_path, "certificate")
    data = _read_input(csr_path, "CSR file", f"make it on the device with `kakehashi pki request --id {identity}`")
    record = ca.issue(data, role, identity, renew=renew)
    write_public_file(out_path, record.certificate_path.read_bytes())
    click.echo(f"issued a {role.value} certificate for {identity}")
    ui.print_kv(
        [
            ("serial", record.serial_hex),
            ("not after", _when(record.not_after)),
            ("certificate", out_path),
            ("trust bundle", ca.trust_bundle_path),
        ]
    )
    click.echo(f"Install {out_path.name} and {ca.trust_bundle_path.name} beside the key on the device.")


@pki.command("issue-server")
@_dir_option
@click.option("--name", required=True, help="Service name (the CN), e.g. agent-1.")
@click.option("--host", "hosts", required=True, multiple=True, help="Host name or IP it answers on (repeatable).")
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path), help="Where to write the key.")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Certificate to write.")
def issue_server(directory: Path, name: str, hosts: tuple[str, ...], key_path: Path, out_path: Path) -> None:
    """Make a key here and issue a TLS server certificate for a service (the agent's HTTPS API)."""
    validate_id(name)
    ca = CertificateAuthority.open(directory)
    if key_path.exists():
        raise FileError(f"key file {key_path} already exists; refusing to overwrite it (choose another --key)")
    _check_output(key_path, "key file")
    _check_output(out_path, "certificate")
    key = generate_private_key()
    record = ca.issue_server(make_csr(key, name), name, list(hosts))
    write_private_key(key_path, key)
    write_public_file(
        out_path, record.certificate_path.read_bytes() + ca.issuing_certificate.public_bytes(Encoding.PEM)
    )
    click.echo(f"issued a TLS server certificate for {name} ({', '.join(hosts)})")
    ui.print_kv([("serial", record.serial_hex), ("not after", _when(record.not_after)), ("certificate", out_path)])
    click.echo(f"Clients verify it with the trust bundle {ca.trust_bundle_path}.")


@pki.command()
@_dir_option
@click.option("--id", "identity", required=True, help="Id whose active certificates are revoked.")
@click.option(
    "--reason",
    default="unspecified",
    show_default=True,
    help="unspecified, key_compromise, affiliation_changed, superseded, cessation_of_operation, "
    "certificate_hold or privilege_withdrawn.",
)
def revoke(directory: Path, identity: str, reason: str) -> None:
    """Revoke every active certificate of an id and publish a fresh CRL."""
    ca = CertificateAuthority.open(directory)
    revoked = ca.revoke(identity, reason)
    crl = ca.current_crl()
    for record in revoked:
        click.echo(f"revoked {identity} serial {record.serial_hex} ({reason})")
    click.echo(
        f"CRL #{ca.crl_number()} published to {ca.crl_path} (next update {_when(crl.next_update_utc)}); "
        "a broker run with `kakehashi broker run` reloads it within seconds."
    )


@pki.command()
@_dir_option
@click.option("--out", "out_path", type=click.Path(path_type=Path), help="Also write the CRL (PEM) here.")
def crl(directory: Path, out_path: Path | None) -> None:
    """Publish a fresh CRL (nextUpdate in 7 days) to the PKI directory and optionally to --out."""
    ca = CertificateAuthority.open(directory)
    if out_path is not None:
        _check_output(out_path, "CRL")
    revocation_list = ca.publish_crl()
    if out_path is not None:
        write_public_file(out_path, ca.crl_path.read_bytes())
    where = f"{ca.crl_path}" + ("" if out_path is None else f" and {out_path}")
    click.echo(
        f"CRL #{ca.crl_number()} with {len(list(revocation_list))} revoked serial(s) written to {where}; "
        f"next update {_when(revocation_list.next_update_utc)}"
    )


def _crl_state(ca: CertificateAuthority, now: datetime) -> dict[str, Any]:
    try:
        current = ca.current_crl()
    except PkiError as exc:
        return {"error": exc.message}
    next_update = current.next_update_utc
    number = current.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    return {
        "number": number,
        "last_update": current.last_update_utc,
        "next_update": next_update,
        "revoked": len(list(current)),
        "stale": next_update is None or now > next_update,
        "refresh_due": next_update is None or ca.policy.crl_refresh_due(next_update, now),
    }


def _subject_alt_names(certificate: x509.Certificate) -> list[str]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [f"URI:{u}" for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    names += [f"DNS:{d}" for d in san.get_values_for_type(x509.DNSName)]
    names += [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _detail(ca: CertificateAuthority, record: CertRecord, now: datetime) -> dict[str, Any]:
    doc = record.to_json(ca.path)
    doc["state"] = record.state_at(now)
    try:
        doc["san"] = _subject_alt_names(ca.load_certificate(record))
    except PkiError as exc:
        doc["san"] = None
        doc["certificate_error"] = exc.message
    return doc


@pki.command()
@_dir_option
@click.option("--id", "identity", help="Show every certificate of this id in detail.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def show(directory: Path, identity: str | None, as_json: bool) -> None:
    """List issued certificates and the CRL state."""
    ca = CertificateAuthority.open(directory)
    now = datetime.now(UTC)
    records = ca.records() if identity is None else ca.records_for(identity)
    if identity is not None and not records:
        raise PkiError(f"no certificate was ever issued for {identity!r}; see `kakehashi pki show --dir {directory}`")
    crl_state = _crl_state(ca, now)
    root_key = ca.path / "root" / "ca.key"
    if as_json:
        certificates = (
            [_detail(ca, r, now) for r in records]
            if identity is not None
            else [{**r.to_json(ca.path), "state": r.state_at(now)} for r in records]
        )
        ui.print_json(
            {
                "pki": str(ca.path),
                "root": {
                    "subject": ca.root_certificate.subject.rfc4514_string(),
                    "not_after": ca.root_certificate.not_valid_after_utc,
                    "key_online": root_key.exists(),
                },
                "issuing": {
                    "subject": ca.issuing_certificate.subject.rfc4514_string(),
                    "not_after": ca.issuing_certificate.not_valid_after_utc,
                },
                "crl": crl_state,
                "certificates": certificates,
            }
        )
        return
    if identity is None:
        rows = [
            {
                "id": r.identity,
                "role": r.role.value,
                "kind": r.kind,
                "serial": r.serial_hex,
                "not_after": _when(r.not_after),
                "status": r.state_at(now),
            }
            for r in records
        ]
        ui.print_table(rows, TABLE_COLUMNS)
    else:
        for number, record in enumerate(records):
            if number:
                click.echo()
            doc = _detail(ca, record, now)
            ui.print_kv(
                [
                    ("serial", record.serial_hex),
                    ("id", record.identity),
                    ("role", record.role.value),
                    ("kind", record.kind),
                    ("status", doc["state"]),
                    ("not before", _when(record.not_before)),
                    ("not after", _when(record.not_after)),
                    ("SAN", ", ".join(doc["san"] or []) or "-"),
                    ("fingerprint", f"SHA256 {record.fingerprint_sha256}"),
                    ("revoked at", _when(record.revoked_at)),
                    ("reason", record.revocation_reason or "-"),
                    ("file", record.certificate_path),
                ]
            )
    click.echo()
    if "error" in crl_state:
        click.echo(f"CRL: {crl_state['error']}")
    else:
        note = ""
        if crl_state["stale"]:
            note = f" EXPIRED: clients are locked out, run `kakehashi pki crl --dir {directory}`"
        elif crl_state["refresh_due"]:
            note = " (refresh due)"
        click.echo(
            f"CRL #{crl_state['number']}: {crl_state['revoked']} revoked, "
            f"next update {_when(crl_state['next_update'])}{note}"
        )
    if root_key.exists():
        click.echo(f"root key online at {root_key}: move it to offline storage")
