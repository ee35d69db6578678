"""The gateway's local Mosquitto for its nodes, run from what enrollment gave the Pi: no CA key, no PKI directory.

``kakehashi broker run --config gateway.toml`` (``[local_broker]``) builds everything from the gateway's own files:

* **trust**: the fleet trust bundle from enrollment (``[uplink] ca_file``, issuing + root CA) verifies node
  certificates, so a node flashed with ``kakehashi node flash --pki <fleet CA>`` is accepted and any other
  certificate is refused during the TLS handshake;
* **server certificate**: ``local-broker.crt``/``.key``, a server-only certificate for ``<gateway id>.local``
  issued at enrollment for a second key made on the Pi (:meth:`CertificateAuthority.issue_local_broker`);
* **revocation**: the fleet CRL the agent publishes retained on ``kh/v1/<gw>/down/crl``, which the gateway service
  checks and stores as ``<data_dir>/fleet-crl.der`` (:mod:`gateway.fleet_crl`);
* **ACL**: the nodes bound in ``[sources.nodes]``: each may publish only ``kn/v1/<node>/up/#`` and read only
  ``kn/v1/<node>/down/#``; the gateway's own identity (its relay) may read and write ``kn/v1/#``; every other
  certificate of the fleet connects but may do nothing.

The runner polls these files every second. A changed ACL (a node bound or unbound in ``gateway.toml``) or a
refreshed CRL with the same revocations is applied with SIGHUP, without dropping connections. A CRL that revokes
something new **restarts** Mosquitto (its persistence keeps the sessions and queued messages): Mosquitto checks
the CRL only at the handshake, so restarting is what cuts off a revoked node that is still connected. A listener or
server certificate change also restarts it.

**A stale CRL** (past its nextUpdate) would make Mosquitto refuse every client. With ``stale_crl = "open"`` (the
default) the runner then restarts Mosquitto *without* a CRL: nodes keep reporting (a site offline for a week during a
flood must not lose its water levels), revocations are not enforced until a fresh CRL arrives, and the runner logs
``local_broker_crl_stale`` as an error and records ``crl_state: stale`` in ``broker.json``, which ``kakehashi
gateway selftest`` reports as a failure. Unbinding a node in ``gateway.toml`` still shuts it out through the ACL.
With ``stale_crl = "closed"`` the stale CRL is kept and every node is refused until a fresh CRL arrives (state
``stale_refusing``, logged as an error and failed by the self-test). A CRL not valid yet (the Pi's clock is
behind) is treated the same way. No CRL received yet: Mosquitto runs without one (state ``missing``, a warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509

from gateway.config import GatewayConfig, load_config
from gateway.fleet_crl import CrlError, CrlInfo, CrlState, read_stored_crl
from kakehashi import keys
from kakehashi.broker.config import BrokerLayout, ListenerSettings, render_config, validate_listener
from kakehashi.broker.policy import render_acl
from kakehashi.broker.runner import (
    BrokerError,
    BrokerState,
    _check_port_free,
    _hand_over,
    _port_error,
    _pump_output,
    _run_as_user,
    _wait_until_listening,
    find_mosquitto,
    handle_signals,
    make_run_dir,
    spawn_mosquitto,
    stop_mosquitto,
)
from kakehashi.errors import KakehashiError
from kakehashi.identity import Role, local_broker_name
from kakehashi.log import get_logger
from kakehashi.waiting import until_set

__all__ = ["LocalPolicy", "load_policy", "request_reload", "run_local_broker", "write_policy"]

log = get_logger(__name__)

POLL_SECONDS: Final = 1.0
CERT_WARN_BEFORE: Final = dt.timedelta(days=30)

Listener = tuple[str, int]


@dataclass(frozen=True)
class LocalPolicy:
    """Everything the local broker enforces, read from ``gateway.toml`` and the files it names."""

    owner: str
    nodes: tuple[str, ...]
    listener: Listener
    run_dir: Path
    trust_bundle: bytes
    server_cert: bytes
    server_key: bytes
    crl: CrlInfo | None
    crl_state: CrlState
    stale_crl: str
    watched: tuple[Path, ...] = field(compare=False)
    fingerprint: tuple[int, ...] = field(compare=False)

    @property
    def use_crl(self) -> bool:
        """Whether Mosquitto gets the CRL: when fresh, or when unusable but ``stale_crl = "closed"``."""
        if self.crl is None:
            return False
        return self.crl_state is CrlState.FRESH or self.stale_crl == "closed"

    @property
    def state_name(self) -> str:
        """``fresh``, ``missing``, ``stale`` (running without the CRL) or ``stale_refusing`` (every node refused)."""
        if self.crl_state in (CrlState.FRESH, CrlState.MISSING):
            return self.crl_state.value
        return "stale_refusing" if self.use_crl else "stale"

    def restart_key(self) -> tuple[object, ...]:
        """What Mosquitto takes only at start (listener, certificates), or must cut off at once (new revocations)."""
        revoked = self.crl.revoked if self.use_crl and self.crl is not None else frozenset()
        tls = hashlib.sha256(self.trust_bundle + self.server_cert + self.server_key).hexdigest()
        return (self.listener, self.use_crl, revoked, tls)

    def acl(self) -> str:
        identities = [(Role.GATEWAY, self.owner), *((Role.NODE, node) for node in self.nodes)]
        return render_acl(identities, profile="local", owner=self.owner)


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def _fingerprint(paths: tuple[Path, ...]) -> tuple[int, ...]:
    return tuple(part for path in paths for part in _stat(path))


def _read(path: Path, what: str, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BrokerError(f"cannot read {what} {path} ({exc.strerror}): {fix}") from None


def _check_server_certificate(config: GatewayConfig, cert_pem: bytes, key_pem: bytes) -> None:
    """The server certificate must be this gateway's local broker certificate, for this key, and in date."""
    section = config.local_broker
    assert section is not None
    reprovision = "renew the gateway's identity or re-run `kakehashi gateway provision --force`"
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        key = keys.load_private_key(section.key_file)
    except (ValueError, x509.ExtensionNotFound, KakehashiError) as exc:
        raise BrokerError(
            f"the local broker certificate {section.cert_file} is unusable ({exc}): {reprovision}"
        ) from None
    expected = local_broker_name(config.gateway.id)
    if expected not in names.get_values_for_type(x509.DNSName):
        raise BrokerError(f"{section.cert_file} does not name {expected}: {reprovision}")
    if certificate.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise BrokerError(f"{section.cert_file} and {section.key_file} are not a pair: {reprovision}")
    left = certificate.not_valid_after_utc - dt.datetime.now(dt.UTC)
    if left <= dt.timedelta(0):
        raise BrokerError(f"the local broker certificate {section.cert_file} has expired: {reprovision}")
    if left < CERT_WARN_BEFORE:
        log.warning("local_broker_certificate_expiring", days_left=left.days, fix=reprovision)


def load_policy(
    config_path: Path,
    *,
    previous: LocalPolicy | None = None,
    host: str | None = None,
    port: int | None = None,
    now: dt.datetime | None = None,
) -> LocalPolicy:
    """Read ``gateway.toml`` and the files it names into a policy; raises :class:`KakehashiError` with the fix.

    A stored CRL that cannot be used any more (damaged on disk) keeps ``previous``'s CRL, so a bad file never
    un-revokes a node that was refused before.
    """
    config = load_config(config_path)
    section = config.local_broker
    if section is None:
        raise BrokerError(
            f"{config_path} has no [local_broker] section: re-run `kakehashi gateway provision`, or add one "
            "naming local-broker.crt and local-broker.key (docs/broker.md)"
        )
    listener = (host or section.host, port or section.port)
    validate_listener(*listener)
    server_cert = _read(section.cert_file, "the local broker certificate", "re-run provisioning")
    server_key = _read(section.key_file, "the local broker key", "re-run provisioning")
    _check_server_certificate(config, server_cert, server_key)
    trust = _read(config.uplink.ca_file, "the fleet trust bundle", "re-run provisioning")
    try:
        crl = read_stored_crl(config.crl_path, config.uplink.ca_file)
    except CrlError as exc:
        crl = previous.crl if previous is not None else None
        log.error("local_broker_crl_unusable", path=str(config.crl_path), reason=exc.message, kept=crl is not None)
    nodes = tuple(sorted(node.id for node in config.sources.nodes.nodes)) if config.sources.nodes else ()
    watched = (config_path, config.crl_path, config.uplink.ca_file, section.cert_file, section.key_file)
    return LocalPolicy(
        owner=config.gateway.id,
        nodes=nodes,
        listener=listener,
        run_dir=section.run_dir,
        trust_bundle=trust,
        server_cert=server_cert,
        server_key=server_key,
        crl=crl,
        crl_state=CrlState.MISSING if crl is None else crl.state(now),
        stale_crl=section.stale_crl,
        watched=watched,
        fingerprint=_fingerprint(watched),
    )


def write_policy(policy: LocalPolicy, layout: BrokerLayout, user: str) -> None:
    """Write the trust bundle, server identity, CRL (when used), ACL and ``mosquitto.conf`` into the run directory."""
    keys.write_public_file(layout.cafile, policy.trust_bundle)
    keys.write_public_file(layout.server_cert, policy.server_cert)
    keys.write_secret_file(layout.server_key, policy.server_key)
    if policy.use_crl and policy.crl is not None:
        keys.write_public_file(layout.crl, policy.crl.pem())
    else:
        layout.crl.unlink(missing_ok=True)
    keys.write_public_file(layout.acl, policy.acl().encode())
    settings = ListenerSettings(policy.listener[0], policy.listener[1], user)
    keys.write_public_file(layout.config, render_config(layout, settings, crl=policy.use_crl).encode())
    for path in (layout.rundir, layout.data, *layout.data.iterdir()):
        _hand_over(path, user)
    for path in (layout.cafile, layout.server_cert, layout.server_key, layout.acl, layout.config):
        _hand_over(path, user)
    if policy.use_crl:
        _hand_over(layout.crl, user)


def _log_crl(policy: LocalPolicy) -> None:
    crl = policy.crl
    detail = {
        "crl_state": policy.state_name,
        "crl_number": crl.number if crl else None,
        "next_update": crl.next_update.isoformat() if crl and crl.next_update else None,
    }
    if policy.state_name == "stale":
        log.error(
            "local_broker_crl_stale",
            **detail,
            effect="running without the CRL: nodes are admitted, revoked ones too, until a fresh CRL arrives",
            fix="reconnect the gateway to the cloud broker (the agent republishes the CRL on down/crl)",
        )
    elif policy.state_name == "stale_refusing":
        log.error(
            "local_broker_crl_stale",
            **detail,
            effect="stale_crl = closed: Mosquitto refuses every node until a fresh CRL arrives",
            fix='reconnect the gateway to the cloud broker, or set [local_broker] stale_crl = "open"',
        )
    elif policy.state_name == "missing":
        log.warning(
            "local_broker_crl_missing",
            **detail,
            effect="no revocation checking until the gateway receives the fleet CRL on down/crl",
        )


def _update_state(state: BrokerState, policy: LocalPolicy) -> None:
    state.nodes = list(policy.nodes)
    state.crl_state = policy.state_name
    state.crl_number = policy.crl.number if policy.crl else None
    next_update = policy.crl.next_update if policy.crl else None
    state.crl_next_update = next_update.isoformat() if next_update else None


def request_reload(rundir: Path) -> BrokerState:
    """Ask a running local broker (``broker reload --dir``) to re-read its ``gateway.toml`` and CRL now."""
    layout = BrokerLayout(rundir.resolve())
    state = BrokerState.read(layout.state)
    try:
        os.kill(state.runner_pid, signal.SIGHUP)
    except ProcessLookupError:
        raise BrokerError(
            f"no broker is running from {rundir} (pid {state.runner_pid} is gone): start it with "
            f"`kakehashi broker run --config {state.config}`"
        ) from None
    return state


def _crl_turns_stale(policy: LocalPolicy) -> bool:
    """True once a CRL that was fresh has passed its nextUpdate (time alone changes the decision)."""
    if policy.crl is None or policy.crl_state is not CrlState.FRESH:
        return False
    return policy.crl.state() is not CrlState.FRESH


def _prepare(
    config_path: Path, rundir: Path | None, host: str | None, port: int | None
) -> tuple[Path, LocalPolicy, BrokerLayout, str]:
    """Read the policy, make the run directory, check the port: everything before Mosquitto starts."""
    config_path = config_path.resolve()
    policy = load_policy(config_path, host=host, port=port)
    layout = BrokerLayout((rundir or policy.run_dir).resolve())
    make_run_dir(layout, "set a writable [local_broker] run_dir (or --dir)")
    user = _run_as_user(layout.rundir)
    _check_port_free(*policy.listener)
    return config_path, policy, layout, user


async def run_local_broker(
    config_path: Path,
    rundir: Path | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[BrokerState], None] | None = None,
    on_reload: Callable[[BrokerState], None] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run the local broker of the gateway configured in ``config_path`` until SIGTERM/SIGINT (or ``stop``)."""
    executable = find_mosquitto()
    config_path, policy, layout, user = _prepare(config_path, rundir, host, port)
    reload_requested = asyncio.Event()
    stop, handled = handle_signals(stop, reload_requested)
    loop = asyncio.get_running_loop()
    state = BrokerState(
        os.getpid(), 0, *policy.listener, "", time.time(), profile="local", owner=policy.owner, config=str(config_path)
    )
    first = True
    try:
        while True:
            write_policy(policy, layout, user)
            _log_crl(policy)
            proc = await spawn_mosquitto(executable, layout)
            assert proc.stderr is not None
            tail: deque[str] = deque(maxlen=12)
            running = asyncio.Event()
            pump = asyncio.create_task(_pump_output(proc.stderr, tail, layout.log, running))
            try:
                await _wait_until_listening(proc, *policy.listener, tail, running)
                state.mosquitto_pid = proc.pid
                state.host, state.port = policy.listener
                _update_state(state, policy)
                state.write(layout.state)
                log.info(
                    "local_broker_ready",
                    host=state.host,
                    port=state.port,
                    pid=proc.pid,
                    nodes=list(policy.nodes),
                    crl_state=policy.state_name,
                )
                if first and on_ready:
                    on_ready(state)
                elif on_reload:
                    on_reload(state)
                first = False
                restart, policy = await _watch(
                    config_path, policy, layout, user, proc, stop, reload_requested, state, (host, port)
                )
                if proc.returncode is not None and not restart:
                    await pump
                    raise _port_error(state.port, state.host, tail) or BrokerError(
                        f"mosquitto exited unexpectedly with status {proc.returncode} (its log: {' | '.join(tail)})"
                    )
                await stop_mosquitto(proc)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            if not restart:
                log.info("broker_stopped", returncode=proc.returncode)
                return 0
            state.restarts += 1
            log.info("local_broker_restarting", reason="listener, certificates or revocations changed")
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        with contextlib.suppress(FileNotFoundError):
            layout.state.unlink()


async def _watch(
    config_path: Path,
    policy: LocalPolicy,
    layout: BrokerLayout,
    user: str,
    proc: asyncio.subprocess.Process,
    stop: asyncio.Event,
    reload_requested: asyncio.Event,
    state: BrokerState,
    overrides: tuple[str | None, int | None],
) -> tuple[bool, LocalPolicy]:
    """Until stop or Mosquitto's exit: apply changes; returns ``(restart needed, newest policy)``."""
    while not stop.is_set() and proc.returncode is None:
        await until_set(reload_requested, within=POLL_SECONDS)
        requested = reload_requested.is_set()
        reload_requested.clear()
        if stop.is_set() or proc.returncode is not None:
            break
        current = _fingerprint(policy.watched)
        if not (requested or current != policy.fingerprint or _crl_turns_stale(policy)):
            continue
        try:
            new = load_policy(config_path, previous=policy, host=overrides[0], port=overrides[1])
        except KakehashiError as exc:
            log.error("local_broker_reload_failed", reason=exc.message, effect="the previous policy stays in force")
            policy = dataclasses.replace(policy, fingerprint=current)
            continue
        if new.restart_key() != policy.restart_key():
            return True, new
        if new != policy:
            write_policy(new, layout, user)
            os.kill(proc.pid, signal.SIGHUP)
            state.reloads += 1
            _update_state(state, new)
            state.write(layout.state)
            log.info("broker_reloaded", nodes=list(new.nodes), crl_state=new.state_name)
            if new.state_name != policy.state_name:
                _log_crl(new)
        policy = new
    return False, policy
