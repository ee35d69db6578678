"""Installing the gateway's systemd units during provisioning.

The units are ``deploy/kakehashi-gateway.service`` (the gateway service) and ``deploy/kakehashi-local-broker.service``
(the local broker of its nodes), each with its ``ExecStart`` pointed at this installation's ``kakehashi`` and the
config just written, and ``ReadWritePaths`` at the data directory. It is written when the systemd directory
exists and we are root. ``systemctl daemon-reload`` and ``enable`` run only when that directory is the one systemd
reads (``/etc/systemd/system``), ``systemctl`` exists and the machine was booted with systemd; otherwise the exact
commands are returned for the technician to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kakehashi import keys
from kakehashi.errors import KakehashiError
from kakehashi.log import get_logger

__all__ = ["BROKER_UNIT_NAME", "SYSTEM_UNIT_DIR", "UNIT_NAME", "UnitOutcome", "install_unit", "render_unit"]

log = get_logger(__name__)

UNIT_NAME: Final = "kakehashi-gateway.service"
BROKER_UNIT_NAME: Final = "kakehashi-local-broker.service"
SYSTEM_UNIT_DIR: Final = Path("/etc/systemd/system")
DEPLOY: Final = Path(__file__).resolve().parents[1] / "deploy"
TEMPLATE: Final = DEPLOY / UNIT_NAME
COMMANDS: Final = {UNIT_NAME: "gateway run", BROKER_UNIT_NAME: "broker run"}
"""Each unit and the ``kakehashi`` command its ``ExecStart`` runs with ``--config``."""


@dataclass
class UnitOutcome:
    """What happened to the unit: ``path`` when written, ``enabled`` when systemctl ran, commands left to run."""

    path: Path | None = None
    enabled: bool = False
    commands: list[str] = field(default_factory=list)
    note: str = ""


def _kakehashi_executable() -> str | None:
    beside = Path(sys.executable).with_name("kakehashi")
    if beside.exists():
        return str(beside)
    return shutil.which("kakehashi")


def render_unit(template: str, config_path: Path, data_dir: Path, command: str = COMMANDS[UNIT_NAME]) -> str:
    """The unit text with ``ExecStart`` running this installation's ``kakehashi <command>`` on ``config_path`` and
    ``data_dir`` writable."""
    executable = _kakehashi_executable()
    lines = []
    for line in template.splitlines():
        if line.startswith("ExecStart=") and executable is not None:
            line = f"ExecStart={executable} --log-level INFO {command} --config {config_path}"
        elif line.startswith("ExecStart="):
            line = line.replace("/etc/kakehashi/gateway.toml", str(config_path))
        elif line.startswith("ReadWritePaths="):
            line = f"ReadWritePaths={data_dir}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def install_unit(systemd_dir: Path, config_path: Path, data_dir: Path) -> UnitOutcome:
    """Write both units into ``systemd_dir`` and enable them where possible (see the module docstring);
    ``path`` is the gateway's unit."""
    enable = ["systemctl daemon-reload", f"systemctl enable {UNIT_NAME} {BROKER_UNIT_NAME}"]
    outcome = UnitOutcome()
    copy = f"cp {TEMPLATE} {DEPLOY / BROKER_UNIT_NAME}"
    if not systemd_dir.is_dir():
        outcome.note = f"{systemd_dir} does not exist: no systemd unit installed"
        outcome.commands = [f"sudo {copy} {SYSTEM_UNIT_DIR}/", *(f"sudo {c}" for c in enable)]
        return outcome
    if os.geteuid() != 0:
        outcome.note = "not root: no systemd unit installed"
        outcome.commands = [f"sudo {copy} {systemd_dir}/", *(f"sudo {c}" for c in enable)]
        return outcome
    for name, command in COMMANDS.items():
        try:
            template = (DEPLOY / name).read_text(encoding="utf-8")
        except OSError as exc:
            raise KakehashiError(
                f"cannot read the unit template {DEPLOY / name} ({exc.strerror}): run provisioning from the "
                "Kakehashi checkout",
                reason="file",
            ) from None
        path = systemd_dir / name
        keys.write_public_file(path, render_unit(template, config_path, data_dir, command).encode())
        log.info("systemd_unit_written", path=str(path))
    outcome.path = systemd_dir / UNIT_NAME
    if systemd_dir.resolve() != SYSTEM_UNIT_DIR or not _systemd_running():
        outcome.note = "units written; systemd does not read this directory or is not running here"
        outcome.commands = enable
        return outcome
    for command in enable:
        result = subprocess.run(command.split(), capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            outcome.note = f"`{command}` failed: {(result.stderr or result.stdout).strip()}"
            outcome.commands = enable
            return outcome
    outcome.enabled = True
    return outcome
