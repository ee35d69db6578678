"""``kakehashi gateway provision``: bring a Raspberry Pi into the fleet in one step.

1. Check everything that does not need the agent (id, URL, broker, existing files, the config it will write), so a
   mistake never burns the one-time token.
2. Enroll (:func:`gateway.enrollment.enroll_gateway`): the key is made here and never leaves the Pi.
3. Write ``gateway.toml`` (validated by the gateway's own loader before it is put in place).
4. Hand the key and the data directory to the service user when it exists, install the systemd unit.

Existing files are never overwritten silently: an existing ``gateway.toml`` or identity stops provisioning before
the token is used. With ``force`` they are moved aside (``gateway.toml.replaced-<UTC time>``,
``pki/replaced-<UTC time>/``), never deleted; if enrollment then fails, the old identity is moved back.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from gateway.enrollment import enroll_gateway, identity_paths, local_broker_paths
from gateway.provision_config import config_document, validate_document, write_config
from gateway.provision_systemd import SYSTEM_UNIT_DIR, UnitOutcome, install_unit
from kakehashi.errors import KakehashiError
from kakehashi.identity import local_broker_name, validate_id
from kakehashi.log import get_logger

__all__ = ["ProvisionError", "ProvisionRequest", "ProvisionResult", "parse_broker", "provision"]

log = get_logger(__name__)

SERVICE_USER: Final = "kakehashi"
DEFAULT_BROKER_PORT: Final = 8883
DEFAULT_LOCAL_BROKER_PORT: Final = 8884

Progress = Callable[[str], None]


class ProvisionError(KakehashiError):
    """Provisioning stopped; the message says what to do."""

    reason = "provision"


@dataclass(frozen=True)
class ProvisionRequest:
    """Everything ``kakehashi gateway provision`` was told."""

    gateway_id: str
    token: str
    agent_url: str
    ca_bundle: Path | None = None
    broker: str | None = None
    config_dir: Path = Path("/etc/kakehashi")
    data_dir: Path = Path("/var/lib/kakehashi")
    systemd_dir: Path = SYSTEM_UNIT_DIR
    systemd: bool = True
    force: bool = False
    local_broker_host: str = "0.0.0.0"  # the nodes reach it over the site's LAN
    local_broker_port: int = DEFAULT_LOCAL_BROKER_PORT

    @property
    def config_path(self) -> Path:
        return self.config_dir / "gateway.toml"

    @property
    def identity_dir(self) -> Path:
        return self.config_dir / "pki"

    @property
    def gateway_data_dir(self) -> Path:
        return self.data_dir / "gateway"

    @property
    def local_broker_dir(self) -> Path:
        return self.data_dir / "local-broker"


@dataclass
class ProvisionResult:
    """What provisioning did, for the summary and ``--json``."""

    gateway_id: str
    serial: str
    not_after: str
    config: Path
    identity_dir: Path
    data_dir: Path
    unit: UnitOutcome | None
    owner: str | None
    moved_aside: list[Path] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        unit = self.unit
        return {
            "gateway": self.gateway_id,
            "serial": self.serial,
            "not_after": self.not_after,
            "config": str(self.config),
            "identity_dir": str(self.identity_dir),
            "data_dir": str(self.data_dir),
            "unit": None
            if unit is None
            else {"path": str(unit.path) if unit.path else None, "enabled": unit.enabled, "note": unit.note},
            "owner": self.owner,
            "moved_aside": [str(p) for p in self.moved_aside],
            "next_steps": self.next_steps,
        }


def parse_broker(value: str | None, agent_url: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (default: the agent's host name, port 8883)."""
    if not value:
        host = urlsplit(agent_url).hostname
        if not host:
            raise ProvisionError(f"cannot take the broker's host from the agent URL {agent_url!r}: pass --broker HOST")
        return host, DEFAULT_BROKER_PORT
    host, sep, port_text = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    if not sep:
        return value.strip("[]"), DEFAULT_BROKER_PORT
    if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ProvisionError(f"--broker {value!r} is not HOST[:PORT]: e.g. mqtt.city.example:8883")
    return host, int(port_text)


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _existing_identity(directory: Path) -> list[Path]:
    return [path for path in (*identity_paths(directory), *local_broker_paths(directory)) if path.exists()]


def _move_aside(request: ProvisionRequest) -> tuple[list[Path], Path | None]:
    """Move an existing identity into ``pki/replaced-<time>/``; returns what moved and the backup directory."""
    found = _existing_identity(request.identity_dir)
    if not found:
        return [], None
    backup = request.identity_dir / f"replaced-{_stamp()}"
    backup.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in found:
        os.replace(path, backup / path.name)
    log.warning("identity_moved_aside", backup=str(backup))
    return [backup], backup


def _restore(backup: Path, identity_dir: Path) -> None:
    for path in backup.iterdir():
        os.replace(path, identity_dir / path.name)
    backup.rmdir()


def _check_not_overwriting(request: ProvisionRequest) -> None:
    if request.force:
        return
    if request.config_path.exists():
        raise ProvisionError(
            f"{request.config_path} already exists: this Pi is provisioned (check it with `kakehashi gateway "
            "selftest`); pass --force to move it and the identity aside and provision anew"
        )
    existing = _existing_identity(request.identity_dir)
    if existing:
        raise ProvisionError(
            f"{existing[0]} already exists: this Pi has an identity; pass --force to move it aside and enroll anew"
        )


def _hand_to_service_user(request: ProvisionRequest) -> str | None:
    """Give the identity and data directory to the ``kakehashi`` user (the unit's ``User=``) when we can."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    paths = [
        request.identity_dir,
        *identity_paths(request.identity_dir),
        *local_broker_paths(request.identity_dir),
        request.data_dir,
        request.gateway_data_dir,
        request.local_broker_dir,
    ]
    for path in paths:
        if path.exists():
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return SERVICE_USER


def _next_steps(request: ProvisionRequest, unit: UnitOutcome | None, owner: str | None) -> list[str]:
    steps: list[str] = []
    if owner is None and os.geteuid() == 0:
        steps.append(
            f"create the service user: useradd --system --groups dialout,bluetooth {SERVICE_USER} && "
            f"chown -R {SERVICE_USER}: {request.identity_dir} {request.data_dir}"
        )
    if unit is not None:
        steps.extend(unit.commands)
    if unit is not None:
        steps.append("systemctl start kakehashi-local-broker   (the nodes' broker)")
    else:
        steps.append(f"kakehashi broker run --config {request.config_path}   (the nodes' broker)")
    steps.append(f"kakehashi gateway selftest --config {request.config_path}")
    if unit is not None:
        steps.append("systemctl start kakehashi-gateway   (once the self-test passes)")
    else:
        steps.append(f"kakehashi gateway run --config {request.config_path}   (once the self-test passes)")
    return steps


async def provision(request: ProvisionRequest, progress: Progress) -> ProvisionResult:
    """Provision this machine as ``request.gateway_id`` (see the module docstring)."""
    validate_id(request.gateway_id)
    if not request.token.strip():
        raise ProvisionError("--token is empty: give the one-time enrollment token from the asset manager")
    if not request.agent_url.startswith("https://"):
        raise ProvisionError(f"--agent {request.agent_url!r} must start with https://")
    host, port = parse_broker(request.broker, request.agent_url)
    _check_not_overwriting(request)
    doc = config_document(
        request.gateway_id,
        request.identity_dir,
        request.gateway_data_dir,
        host,
        port,
        (request.local_broker_host, request.local_broker_port),
        request.local_broker_dir,
    )
    validate_document(doc, request.config_path)
    progress(f"checked: config for {request.gateway_id} with broker {host}:{port}")

    try:
        request.config_dir.mkdir(parents=True, exist_ok=True)
        request.gateway_data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        request.local_broker_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"cannot create {exc.filename}: {exc.strerror}") from None
    moved, backup = _move_aside(request) if request.force else ([], None)
    progress(f"making a key here and enrolling {request.gateway_id} at {request.agent_url}")
    try:
        identity = await enroll_gateway(
            request.agent_url,
            request.ca_bundle,
            request.gateway_id,
            request.token,
            request.identity_dir,
            local_broker=True,
        )
    except BaseException:
        if backup is not None:
            _restore(backup, request.identity_dir)
            log.warning("identity_restored", directory=str(request.identity_dir))
        raise
    progress(
        f"enrolled: certificate {identity.serial} valid until {identity.not_after:%Y-%m-%d}; local broker "
        f"certificate {identity.local_broker_serial} for {local_broker_name(request.gateway_id)}"
    )

    if request.config_path.exists():
        aside = request.config_path.with_name(f"{request.config_path.name}.replaced-{_stamp()}")
        os.replace(request.config_path, aside)
        moved.append(aside)
    write_config(doc, request.config_path)
    progress(f"wrote {request.config_path}")
    owner = _hand_to_service_user(request)
    unit: UnitOutcome | None = None
    if request.systemd:
        unit = install_unit(request.systemd_dir, request.config_path, request.data_dir)
        progress(f"systemd: {unit.note or 'unit installed and enabled'}")
    log.info("gateway_provisioned", gateway=request.gateway_id, serial=identity.serial, config=str(request.config_path))
    return ProvisionResult(
        gateway_id=request.gateway_id,
        serial=identity.serial,
        not_after=identity.not_after.isoformat(),
        config=request.config_path,
        identity_dir=request.identity_dir,
        data_dir=request.gateway_data_dir,
        unit=unit,
        owner=owner,
        moved_aside=moved,
        next_steps=_next_steps(request, unit, owner),
    )
