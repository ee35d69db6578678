"""Run Mosquitto as a supervised child process with the fleet's TLS and ACL policy.

``prepare`` lays out the run directory (server certificate issued by the fleet PKI, trust bundle, CRL, ACL,
generated ``mosquitto.conf``); ``sync_policy`` rewrites the CRL and ACL from the PKI; ``run_broker`` starts
Mosquitto, waits until it listens, watches the PKI for revocations and new identities (reloading Mosquitto with
SIGHUP, which re-reads the CRL and ACL without dropping connections), keeps the CRL fresh, and stops cleanly on
SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import getpass
import grp
import os
import pwd
import shutil
import signal
import socket
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
from cryptography import x509

from cloud_agent.pki.authority import CertificateAuthority
from kakehashi import keys
from kakehashi import log as khlog
from kakehashi.broker.config import BrokerLayout, ListenerSettings, render_config, validate_listener
from kakehashi.broker.policy import PROFILES, render_acl
from kakehashi.errors import KakehashiError, MissingDependencyError
from kakehashi.waiting import until_set

log = khlog.get_logger(__name__)

SERVER_NAME = "broker"
SERVER_RENEW_BEFORE = dt.timedelta(days=30)
PKI_POLL_SECONDS = 1.0
CRL_CHECK_SECONDS = 600.0
READY_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 10.0
MOSQUITTO_USER = "mosquitto"


class BrokerError(KakehashiError):
    """The broker could not be prepared, started or reloaded."""

    reason = "broker"


@dataclass(frozen=True, slots=True)
class PolicySummary:
    """What the broker enforces after a sync: CRL number, revoked serials, identities with access."""

    crl_number: int
    revoked: int
    identities: int
    crl_next_update: str


@dataclass(slots=True)
class BrokerState:
    """The run directory's ``broker.json``: how ``broker reload`` and tests find a running broker."""

    runner_pid: int
    mosquitto_pid: int
    host: str
    port: int
    pki: str
    started_at: float
    reloads: int = 0
    profile: str = "fleet"
    owner: str | None = None
    config: str | None = None
    """A gateway's local broker run from its ``gateway.toml`` (no PKI): the config's path (``pki`` is empty)."""
    restarts: int = 0
    nodes: list[str] | None = None
    crl_state: str | None = None
    crl_number: int | None = None
    crl_next_update: str | None = None

    def write(self, path: Path) -> None:
        keys.write_public_file(path, orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))

    @classmethod
    def read(cls, path: Path) -> BrokerState:
        try:
            return cls(**orjson.loads(path.read_bytes()))
        except FileNotFoundError:
            raise BrokerError(
                f"no broker state in {path.parent}: start the broker with `kakehashi broker run --dir {path.parent}`"
            ) from None
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise BrokerError(f"{path} is damaged ({exc}): restart the broker to rewrite it") from None


def find_mosquitto() -> str:
    """Path of the mosquitto executable, or a one-line error saying how to install it."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise MissingDependencyError(
            "mosquitto is not installed: run `sudo apt-get install mosquitto` (make demo / make test do it as root)"
        )
    return found


def _can_traverse(user: str, directory: Path) -> bool:
    """Whether ``user`` can reach ``directory``: every ancestor must be searchable by it."""
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    for ancestor in [directory, *directory.parents]:
        try:
            st = ancestor.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == entry.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return False
    return True


_WARNED_ROOT: set[Path] = set()


def _run_as_user(rundir: Path) -> str:
    """The user Mosquitto runs as: started as root it drops to the ``mosquitto`` user when that user can reach
    the run directory; otherwise it stays root (with a warning) rather than fail to open its files."""
    if os.geteuid() != 0:
        return getpass.getuser()
    try:
        pwd.getpwnam(MOSQUITTO_USER)
    except KeyError:
        return "root"
    if not _can_traverse(MOSQUITTO_USER, rundir.parent):
        if rundir in _WARNED_ROOT:
            return "root"
        _WARNED_ROOT.add(rundir)
        log.warning(
            "broker_runs_as_root",
            reason=f"user {MOSQUITTO_USER} cannot reach {rundir}",
            fix="put --dir under a directory the mosquitto user can enter, e.g. /var/lib/kakehashi/broker",
        )
        return "root"
    return MOSQUITTO_USER


def _hand_over(path: Path, user: str) -> None:
    """Give a file or directory to the user Mosquitto runs as (only meaningful when we are root)."""
    if os.geteuid() == 0 and user != "root":
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _server_hostnames(host: str) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1"]
    if host not in names:
        names.append(host)
    return names


def _server_certificate_usable(layout: BrokerLayout, ca: CertificateAuthority, hostnames: list[str]) -> bool:
    """Whether the run directory's server certificate is from this PKI, covers the names, and is not near expiry."""
    if not (layout.server_cert.exists() and layout.server_key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(layout.server_cert.read_bytes())
        key = keys.load_private_key(layout.server_key)
    except (ValueError, OSError, KakehashiError):
        return False
    if cert.issuer != ca.issuing_certificate.subject:
        return False
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        return False
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < SERVER_RENEW_BEFORE:
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    covered = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    covered |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return all(name in covered or name.lower() in covered for name in hostnames)


def _ensure_server_certificate(layout: BrokerLayout, ca: CertificateAuthority, host: str) -> None:
    """Make the broker's own key in the run directory and have the PKI issue its TLS server certificate."""
    hostnames = _server_hostnames(host)
    if _server_certificate_usable(layout, ca, hostnames):
        return
    key = keys.generate_private_key()
    csr = keys.make_csr(key, SERVER_NAME)
    record = ca.issue_server(csr, SERVER_NAME, hostnames)
    keys.write_secret_file(layout.server_key, keys.private_key_pem(key))
    keys.write_public_file(layout.server_cert, Path(record.certificate_path).read_bytes())
    log.info("broker_server_certificate_issued", serial=record.serial_hex, hostnames=hostnames)


@dataclass(frozen=True, slots=True)
class AccessProfile:
    """Which policy a broker enforces: the fleet's, or a gateway's local one for its nodes."""

    name: str = "fleet"
    owner: str | None = None

    def __post_init__(self) -> None:
        if self.name not in PROFILES:
            raise BrokerError(f"unknown broker profile {self.name!r}: use one of {', '.join(PROFILES)}")
        if self.name == "local" and self.owner is None:
            raise BrokerError("a local broker serves one gateway's nodes: pass --gateway <gateway id>")


def sync_policy(
    ca: CertificateAuthority,
    layout: BrokerLayout,
    *,
    user: str | None = None,
    profile: AccessProfile | None = None,
) -> PolicySummary:
    """Write the trust bundle, a fresh-enough CRL and the ACL from the PKI into the run directory."""
    user = user or _run_as_user(layout.rundir)
    ca.ensure_fresh_crl()
    crl = ca.current_crl()
    keys.write_public_file(layout.cafile, ca.trust_bundle_path.read_bytes())
    keys.write_public_file(layout.crl, ca.crl_path.read_bytes())
    profile = profile or AccessProfile()
    active = [(record.role, record.identity) for record in ca.active_records() if record.kind == "client"]
    acl = render_acl(active, profile=profile.name, owner=profile.owner)
    keys.write_public_file(layout.acl, acl.encode())
    for path in (layout.cafile, layout.crl, layout.acl):
        _hand_over(path, user)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    next_update = crl.next_update_utc
    return PolicySummary(
        crl_number=number,
        revoked=len(list(crl)),
        identities=acl.count("\nuser "),
        crl_next_update=next_update.isoformat() if next_update else "",
    )


def make_run_dir(layout: BrokerLayout, fix: str) -> None:
    """Create the run directory and its data directory (0700), or say what to do."""
    try:
        layout.rundir.mkdir(parents=True, exist_ok=True, mode=0o700)
        layout.data.mkdir(exist_ok=True, mode=0o700)
    except OSError as exc:
        raise BrokerError(f"cannot create the run directory {layout.rundir}: {exc.strerror}; {fix}") from None


def prepare(
    pki_dir: Path, rundir: Path, host: str, port: int, profile: AccessProfile | None = None
) -> tuple[CertificateAuthority, BrokerLayout]:
    """Create or refresh the run directory: server certificate, trust bundle, CRL, ACL and mosquitto.conf."""
    validate_listener(host, port)
    ca = CertificateAuthority.open(pki_dir.resolve())
    layout = BrokerLayout(rundir.resolve())
    user = _run_as_user(layout.rundir)
    make_run_dir(layout, "choose a writable --dir")
    _ensure_server_certificate(layout, ca, host)
    sync_policy(ca, layout, user=user, profile=profile)
    keys.write_public_file(layout.config, render_config(layout, ListenerSettings(host, port, user)).encode())
    for path in (layout.rundir, layout.data, layout.server_key, layout.server_cert, layout.config):
        _hand_over(path, user)
    data_files = list(layout.data.iterdir())
    for path in data_files:
        _hand_over(path, user)
    return ca, layout


def _process_is_mosquitto(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "mosquitto"
    except OSError:
        return False


def reload_broker(rundir: Path) -> PolicySummary:
    """Re-read the PKI into a running broker's CRL and ACL and signal Mosquitto to reload them (``broker reload``)."""
    layout = BrokerLayout(rundir.resolve())
    state = BrokerState.read(layout.state)
    if not _process_is_mosquitto(state.mosquitto_pid):
        raise BrokerError(
            f"no broker is running from {rundir} (pid {state.mosquitto_pid} is gone): "
            f"start it with `kakehashi broker run --dir {rundir}`"
        )
    ca = CertificateAuthority.open(Path(state.pki))
    summary = sync_policy(ca, layout, profile=AccessProfile(state.profile, state.owner))
    os.kill(state.mosquitto_pid, signal.SIGHUP)
    log.info("broker_reloaded", **asdict(summary))
    return summary


def _pki_fingerprint(ca: CertificateAuthority) -> tuple[int, ...]:
    """Changes whenever the PKI issues, revokes or publishes a CRL."""
    parts: list[int] = []
    for path in (ca.path / "index.json", ca.crl_path):
        try:
            st = path.stat()
        except FileNotFoundError:
            parts.extend((0, 0))
        else:
            parts.extend((st.st_mtime_ns, st.st_size))
    return tuple(parts)


def _check_port_free(host: str, port: int) -> None:
    """Fail early, with the fix, when another program already listens on the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BrokerError(f"port {port} on {host} is already in use: choose another --port") from None
            raise BrokerError(
                f"cannot listen on {host}:{port} ({exc.strerror}): choose another --host/--port"
            ) from None


def _port_error(port: int, host: str, tail: deque[str]) -> BrokerError | None:
    if any("Address already in use" in line for line in tail):
        return BrokerError(f"port {port} on {host} is already in use: choose another --port")
    return None


async def _wait_until_listening(
    proc: asyncio.subprocess.Process, host: str, port: int, tail: deque[str], running: asyncio.Event
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            break
        if not running.is_set():
            await asyncio.sleep(0.02)
            continue
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
    await asyncio.sleep(0)
    detail = " | ".join(tail) or "no output"
    raise _port_error(port, host, tail) or BrokerError(
        f"mosquitto did not start listening on {host}:{port} (its log: {detail})"
    )


async def _pump_output(stream: asyncio.StreamReader, tail: deque[str], logfile: Path, running: asyncio.Event) -> None:
    """Copy Mosquitto's log lines to the run directory's log file and the structured log; set ``running`` when
    Mosquitto says it has opened its listeners."""
    with logfile.open("ab") as sink:
        while line := await stream.readline():
            sink.write(line)
            sink.flush()
            text = line.decode(errors="replace").rstrip()
            tail.append(text)
            if text.startswith("mosquitto version") and text.endswith(" running"):
                running.set()
            # Refused clients are expected traffic (info); Mosquitto's own failures start with "Error".
            if text.startswith("Error"):
                log.warning("mosquitto", line=text)
            else:
                log.info("mosquitto", line=text)


async def _watch_pki(
    ca: CertificateAuthority,
    layout: BrokerLayout,
    mosquitto_pid: int,
    reload_requested: asyncio.Event,
    on_reload: Callable[[PolicySummary], None],
    profile: AccessProfile,
) -> None:
    """Reload Mosquitto whenever the PKI changes or a reload is requested; keep the CRL from going stale."""
    fingerprint = _pki_fingerprint(ca)
    last_crl_check = time.monotonic()
    while True:
        await until_set(reload_requested, within=PKI_POLL_SECONDS)
        requested = reload_requested.is_set()
        reload_requested.clear()
        if time.monotonic() - last_crl_check > CRL_CHECK_SECONDS:
            last_crl_check = time.monotonic()
            if ca.ensure_fresh_crl():
                log.info("crl_refreshed")
        current = _pki_fingerprint(ca)
        if not requested and current == fingerprint:
            continue
        fingerprint = current
        try:
            summary = sync_policy(ca, layout, profile=profile)
        except KakehashiError as exc:
            log.error("broker_reload_failed", reason=exc.message)
            continue
        os.kill(mosquitto_pid, signal.SIGHUP)
        log.info("broker_reloaded", **asdict(summary))
        on_reload(summary)


async def spawn_mosquitto(executable: str, layout: BrokerLayout) -> asyncio.subprocess.Process:
    """Start Mosquitto on the run directory's config, its log on a pipe (read it with ``_pump_output``)."""
    return await asyncio.create_subprocess_exec(
        executable,
        "-c",
        str(layout.config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )


async def stop_mosquitto(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (Mosquitto saves its persistence), then SIGKILL if it has not stopped within the time-out."""
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
            await proc.wait()
    except TimeoutError:
        log.warning("mosquitto_kill", reason="did not stop within timeout")
        proc.kill()
        await proc.wait()


def handle_signals(
    stop: asyncio.Event | None, reload_requested: asyncio.Event
) -> tuple[asyncio.Event, tuple[signal.Signals, ...]]:
    """Without an embedding ``stop`` event: SIGTERM/SIGINT stop, SIGHUP requests a reload. Returns the stop event
    and the signals to remove from the loop afterwards."""
    if stop is not None:
        return stop, ()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    return stop, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def run_broker(
    pki_dir: Path,
    rundir: Path,
    host: str,
    port: int,
    *,
    on_ready: Callable[[BrokerState, PolicySummary], None] | None = None,
    on_reload: Callable[[PolicySummary], None] | None = None,
    stop: asyncio.Event | None = None,
    profile: AccessProfile | None = None,
) -> int:
    """Run Mosquitto in the foreground until SIGTERM/SIGINT (or until ``stop`` is set, when embedded)."""
    executable = find_mosquitto()
    profile = profile or AccessProfile()
    ca, layout = prepare(pki_dir, rundir, host, port, profile)
    _check_port_free(host, port)
    summary = sync_policy(ca, layout, profile=profile)
    proc = await spawn_mosquitto(executable, layout)
    assert proc.stderr is not None
    tail: deque[str] = deque(maxlen=12)
    reload_requested = asyncio.Event()
    stop, handled_signals = handle_signals(stop, reload_requested)
    loop = asyncio.get_running_loop()
    state = BrokerState(
        os.getpid(), proc.pid, host, port, str(ca.path), time.time(), profile=profile.name, owner=profile.owner
    )

    def reloaded(summary: PolicySummary) -> None:
        state.reloads += 1
        state.write(layout.state)
        if on_reload:
            on_reload(summary)

    try:
        async with asyncio.TaskGroup() as tg:
            running = asyncio.Event()
            pump = tg.create_task(_pump_output(proc.stderr, tail, layout.log, running))
            await _wait_until_listening(proc, host, port, tail, running)
            state.write(layout.state)
            log.info("broker_ready", host=host, port=port, pid=proc.pid, **asdict(summary))
            if on_ready:
                on_ready(state, summary)
            watcher = tg.create_task(_watch_pki(ca, layout, proc.pid, reload_requested, reloaded, profile))
            stopped = tg.create_task(stop.wait())
            exited = tg.create_task(proc.wait())
            await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
            watcher.cancel()
            stopped.cancel()
            if proc.returncode is None:
                await stop_mosquitto(proc)
                await pump
                log.info("broker_stopped", returncode=proc.returncode)
                return 0
            await pump
            raise _port_error(port, host, tail) or BrokerError(
                f"mosquitto exited unexpectedly with status {proc.returncode} (its log: {' | '.join(tail)})"
            )
    finally:
        for signum in handled_signals:
            loop.remove_signal_handler(signum)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            layout.state.unlink()
    return 0
