"""``kakehashi pki`` as a user runs it: exit codes, one-line errors on stderr, files written, JSON output."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from kakehashi.cli import main
from tests.cli_support import Result

Runner = Callable[..., Result]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Runner:
    def invoke(*args: str | Path) -> Result:
        capsys.readouterr()
        try:
            main(["pki", *map(str, args)])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def pki(run: Runner, tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    assert run("init", "--dir", directory).code == 0
    return directory


def request(run: Runner, tmp_path: Path, identity: str) -> tuple[Path, Path]:
    key, csr = tmp_path / f"{identity}.key", tmp_path / f"{identity}.csr"
    result = run("request", "--id", identity, "--key", key, "--csr", csr)
    assert result.code == 0, result.err
    return key, csr


def test_init_reports_files_and_offline_root(run: Runner, tmp_path: Path) -> None:
    directory = tmp_path / "new"
    result = run("init", "--dir", directory)
    assert result.code == 0
    assert f"created a PKI in {directory}" in result.out
    assert str(directory / "chain.pem") in result.out
    assert "offline" in result.out
    assert (directory / "root" / "ca.crt").is_file()
    again = run("init", "--dir", directory)
    assert again.error_line == (
        f"error: a PKI already exists in {directory}; refusing to overwrite it (use another --dir)"
    )


def test_request_makes_a_private_key_and_csr(run: Runner, tmp_path: Path) -> None:
    key, csr = request(run, tmp_path, "gw-kakogawa-0012")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    subject = x509.load_pem_x509_csr(csr.read_bytes()).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-kakogawa-0012"
    before = key.read_bytes()
    again = run("request", "--id", "gw-kakogawa-0012", "--key", key, "--csr", csr)
    assert "refusing to overwrite it" in again.error_line
    assert key.read_bytes() == before
    same = run("request", "--id", "gw-1", "--key", tmp_path / "x", "--csr", tmp_path / "x")
    assert "are the same file" in same.error_line
    bad = run("request", "--id", "Bad Id", "--key", tmp_path / "y.key", "--csr", tmp_path / "y.csr")
    assert "invalid id 'Bad Id'" in bad.error_line


def test_issue_show_revoke_crl(run: Runner, pki: Path, tmp_path: Path) -> None:
    _, csr = request(run, tmp_path, "gw-1")
    out = tmp_path / "gw-1.crt"
    issued = run("issue", "--dir", pki, "--role", "gateway", "--id", "gw-1", "--csr", csr, "--out", out)
    assert issued.code == 0, issued.err
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    serial = format(cert.serial_number, "x")
    assert serial in issued.out
    assert str(pki / "chain.pem") in issued.out
    assert "not after" in issued.out

    refused = run("issue", "--dir", pki, "--role", "gateway", "--id", "gw-1", "--csr", csr, "--out", out)
    assert "already has an active certificate" in refused.error_line
    assert "--renew" in refused.error_line
    renewed = run("issue", "--dir", pki, "--role", "gateway", "--id", "gw-1", "--csr", csr, "--out", out, "--renew")
    assert renewed.code == 0

    table = run("show", "--dir", pki)
    assert table.code == 0
    header = table.out.splitlines()[0].split()
    assert header == ["ID", "ROLE", "KIND", "SERIAL", "NOT_AFTER", "STATUS"]
    assert serial in table.out
    assert "CRL #1" in table.out

    revoked = run("revoke", "--dir", pki, "--id", "gw-1", "--reason", "key_compromise")
    assert revoked.code == 0
    assert serial in revoked.out
    assert "CRL #2" in revoked.out

    detail = run("show", "--dir", pki, "--id", "gw-1")
    assert detail.code == 0
    assert "URI:urn:kakehashi:gateway:gw-1" in detail.out
    assert "key_compromise" in detail.out
    assert cert.fingerprint(hashes.SHA256()).hex() in detail.out

    crl_out = tmp_path / "crl.pem"
    published = run("crl", "--dir", pki, "--out", crl_out)
    assert published.code == 0
    crl = x509.load_pem_x509_crl(crl_out.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert crl_out.read_bytes() == (pki / "crl.pem").read_bytes()

    doc = json.loads(run("show", "--dir", pki, "--json").out)
    assert doc["certificates"][0]["serial"] == serial
    assert {c["state"] for c in doc["certificates"]} == {"revoked"}
    assert doc["crl"]["number"] == 3
    assert doc["crl"]["stale"] is False
    assert doc["root"]["key_online"] is True
    detail_doc = json.loads(run("show", "--dir", pki, "--id", "gw-1", "--json").out)
    assert detail_doc["certificates"][0]["san"] == ["URI:urn:kakehashi:gateway:gw-1"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--role", "gw", "--id", "gw-1"], "error: unknown role 'gw': use one of gateway, node, service"),
        (["--role", "node", "--id", "No"], "error: invalid id 'No'"),
        (["--role", "node", "--id", "wl-1", "--csr", "missing.csr"], "missing.csr does not exist"),
        (["--role", "node", "--id", "wl-1", "--csr", "garbage.csr"], "cannot parse the CSR"),
        (["--role", "node", "--id", "wl-1", "--csr", "empty.csr"], "the CSR is empty"),
        (["--role", "node", "--id", "wl-2", "--csr", "wl-1.csr"], "the CSR is for 'wl-1'"),
        (["--role", "node", "--id", "wl-1", "--csr", "."], "is a directory"),
        (["--role", "node", "--id", "wl-1", "--out", "no/such/dir.crt"], "does not exist; create it first"),
    ],
)
def test_issue_errors_are_one_line(run: Runner, pki: Path, tmp_path: Path, args: list[str], expected: str) -> None:
    request(run, tmp_path, "wl-1")
    (tmp_path / "garbage.csr").write_bytes(b"\x00\x01 not a csr")
    (tmp_path / "empty.csr").write_bytes(b"")
    if "--csr" not in args:
        args = [*args, "--csr", "wl-1.csr"]
    if "--out" not in args:
        args = [*args, "--out", "out.crt"]
    args = [str(tmp_path / a) if a.endswith((".csr", ".crt")) or a == "." else a for a in args]
    result = run("issue", "--dir", pki, *args)
    assert expected in result.error_line
    assert not (tmp_path / "out.crt").exists()
    assert json.loads(run("show", "--dir", pki, "--json").out)["certificates"] == []  # nothing was issued


def test_revoke_errors(run: Runner, pki: Path, tmp_path: Path) -> None:
    _, csr = request(run, tmp_path, "wl-9")
    issued = run("issue", "--dir", pki, "--role", "node", "--id", "wl-9", "--csr", csr, "--out", tmp_path / "c")
    assert issued.code == 0
    bad_reason = run("revoke", "--dir", pki, "--id", "wl-9", "--reason", "stolen")
    assert "unknown revocation reason 'stolen'" in bad_reason.error_line
    assert "never issued one" in run("revoke", "--dir", pki, "--id", "wl-8").error_line
    assert run("revoke", "--dir", pki, "--id", "wl-9").code == 0
    assert "already revoked or expired" in run("revoke", "--dir", pki, "--id", "wl-9").error_line


def test_show_errors_and_missing_pki(run: Runner, pki: Path, tmp_path: Path) -> None:
    assert "no certificate was ever issued for 'gw-x'" in run("show", "--dir", pki, "--id", "gw-x").error_line
    missing = tmp_path / "elsewhere"
    assert run("show", "--dir", missing).error_line == (
        f"error: no PKI in {missing}: create one with `kakehashi pki init --dir {missing}`"
    )
    empty = json.loads(run("show", "--dir", pki, "--json").out)
    assert empty["certificates"] == []


def test_dir_from_environment(run: Runner, pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAKEHASHI_PKI_DIR", str(pki))
    result = run("crl")
    assert result.code == 0
    assert "CRL #2" in result.out


def test_console_script_exit_code_and_stderr(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "kakehashi"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "kakehashi"]
    result = subprocess.run(
        [*command, "pki", "show", "--dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    missing = tmp_path / "none"
    assert result.stderr.splitlines() == [
        f"error: no PKI in {missing}: create one with `kakehashi pki init --dir {missing}`"
    ]
