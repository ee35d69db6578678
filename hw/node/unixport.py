"""Host-side runner for the node firmware on the MicroPython unix port (tests and ``kakehashi bench node``).

* ``umqtt_sources``: umqtt.simple (micropython-umqtt.simple 1.3.4) and umqtt.robust (pycopy-umqtt.robust 1.0.2)
  from their PyPI sdists. Neither has a setup.py, so ``pip download`` refuses them after unpacking; with
  ``--no-clean`` and a private TMPDIR the unpacked files stay behind. Cached outside the repo.
* ``MipIndex``: a local index laid out like micropython-lib's (``package/py/<name>/latest.json``, ``file/<hh>/<hash>``)
  plus ``edge/``, served over HTTP on loopback, so the firmware is installed with the real ``mip``.
* ``Device``: a node's filesystem in a directory (``node.json``, DER certificates, ``data/``) and its wakes, each a
  ``micropython main.py`` process with the ``hw/node`` fakes first on MICROPYPATH.

CPython only (it drives the unix port); the firmware never imports it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hw.node import FAKES_DIR

EDGE = FAKES_DIR.parents[1] / "edge"  # the firmware, in the source tree
MICROPYTHON = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")
CACHE = Path(os.environ.get("KH_EDGE_CACHE", Path.home() / ".cache" / "kakehashi-edge"))
PIP_DOWNLOAD = [sys.executable, "-m", "pip", "download", "--quiet", "--no-clean", "--no-deps", "--no-binary", ":all:"]
SOURCES = {
    "umqtt/simple.py": "micropython-umqtt.simple==1.3.4",
    "umqtt/robust.py": "pycopy-umqtt.robust==1.0.2",
}


def _fetch(requirement: str, member: str, into: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TMPDIR": tmp}
        subprocess.run(
            [*PIP_DOWNLOAD, "-d", str(Path(tmp) / "dl"), requirement],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        found = sorted(Path(tmp).glob(f"pip-download-*/*/{member}"))
        if found:
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found[0], into)


@functools.cache
def umqtt_sources() -> dict[str, Path]:
    """The umqtt files that could be had: ``{"umqtt/simple.py": path, ...}`` (empty when PyPI is out of reach)."""
    found: dict[str, Path] = {}
    for member, requirement in SOURCES.items():
        path = CACHE / requirement / member
        if not path.exists():
            _fetch(requirement, member, path)
        if path.exists():
            found[member] = path
    return found


class MipIndex:
    """A micropython-lib style index and the edge package, served over HTTP on 127.0.0.1."""

    def __init__(self, root: Path, sources: dict[str, Path]) -> None:
        self.root = root
        index = root / "index"
        for member, path in sources.items():
            name = "umqtt." + Path(member).stem
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            target = index / "file" / digest[:2] / digest[:8]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            package: dict[str, Any] = {"hashes": [[member, digest[:8]]], "version": "test"}
            if name == "umqtt.robust":
                package["deps"] = [["umqtt.simple", "latest"]]
            doc = index / "package" / "py" / name / "latest.json"
            doc.parent.mkdir(parents=True, exist_ok=True)
            doc.write_text(json.dumps(package))
        shutil.copytree(EDGE, root / "edge", ignore=shutil.ignore_patterns("__pycache__"))
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def install(self, target: Path, package: str | None = None) -> str:
        """``mip.install`` into ``target`` (the edge package by default); returns mip's output."""
        package = package or f"{self.url}/edge/package.json"
        code = f"import mip; mip.install({package!r}, index={self.url + '/index'!r}, target={str(target)!r}, mpy=False)"
        assert MICROPYTHON
        result = subprocess.run([MICROPYTHON, "-c", code], capture_output=True, text=True, timeout=60, check=False)
        return result.stdout + result.stderr

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def der_files(ca_file: Path, cert_file: Path, key_file: Path, certs: Path) -> None:
    """Write the fleet root CA (from the PEM trust bundle) and the node's certificate and key in DER."""
    certs.mkdir(parents=True, exist_ok=True)
    chain = x509.load_pem_x509_certificates(ca_file.read_bytes())
    root = next(c for c in chain if c.subject == c.issuer)
    (certs / "ca.der").write_bytes(root.public_bytes(serialization.Encoding.DER))
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    (certs / "node.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    (certs / "node.key.der").write_bytes(
        key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )


@dataclass
class Device:
    """A node's filesystem on the host, and its wakes on the unix port."""

    root: Path
    lib: Path
    outputs: list[str] = field(default_factory=list)

    @property
    def scenario(self) -> Path:
        return self.root / "scenario.json"

    def configure(self, **settings: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"samples": 5, "wdt_ms": 20000, "ack_wait_ms": 2500, "timeout_s": 5, "wifi_wait_ms": 100}
        doc.update(settings)
        (self.root / "node.json").write_text(json.dumps(doc))
        return doc

    def script(self, steps: list[dict[str, Any]], **extra: Any) -> None:
        """A new scenario; the sleeps recorded so far are kept, so steps continue after the wakes already run."""
        done = self.sleeps()
        self.scenario.write_text(json.dumps({"steps": [{}] * len(done) + steps, **extra}))

    def state(self) -> dict[str, Any]:
        path = self.root / "scenario.json.state"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def sleeps(self) -> list[list[Any]]:
        return list(self.state().get("sleeps", []))

    def wake(self, timeout: float = 25.0, script: str = "main.py", options: tuple[str, ...] = ()) -> str:
        """One wake: a ``main.py`` process that ends in deep sleep (or a fatal error); returns its output."""
        assert MICROPYTHON
        env = {
            **os.environ,
            "MICROPYPATH": f"{FAKES_DIR}:{self.lib}:.frozen",
            "KH_SCENARIO": str(self.scenario),
        }
        result = subprocess.run(
            [MICROPYTHON, *options, script],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = result.stdout + result.stderr
        self.outputs.append(output)
        return output

    def wakes(self, count: int, timeout: float = 25.0) -> list[str]:
        return [self.wake(timeout) for _ in range(count)]

    def ring(self) -> list[Path]:
        path = self.root / "data" / "ring"
        return sorted(path.iterdir()) if path.exists() else []


def make_device(root: Path, lib: Path, ca_file: Path, cert_file: Path, key_file: Path) -> Device:
    """A node filesystem in ``root`` with ``main.py`` and the DER certificates; ``lib`` holds the installed firmware."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EDGE / "main.py", root / "main.py")
    der_files(ca_file, cert_file, key_file, root / "certs")
    return Device(root, lib)


@contextlib.contextmanager
def serving(root: Path, sources: dict[str, Path]) -> Iterator[MipIndex]:
    index = MipIndex(root, sources)
    try:
        yield index
    finally:
        index.close()
