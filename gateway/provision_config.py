"""The ``gateway.toml`` that provisioning writes: built from the enrolled identity, validated, then put in place.

The document is checked with the gateway's own validation twice: as data before the one-time token is used (so a
bad ``--broker`` never burns a token), and as the written file (:func:`gateway.config.load_config`) before it is
renamed over ``gateway.toml``. The file is plain TOML written here (the project has no TOML writer dependency): only
tables of strings, integers and floats, which :func:`render_toml` quotes as TOML basic strings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, load_config, parse_config
from gateway.enrollment import identity_paths, local_broker_paths
from kakehashi import keys

__all__ = ["config_document", "render_toml", "validate_document", "write_config"]

HEADER = (
    "# Kakehashi gateway configuration, written by `kakehashi gateway provision`.\n"
    "# Add sources under [sources...] (see docs/gateway.md); bind nodes in [sources.nodes]\n"
    "# (the local broker's ACL follows within a second);\n"
    "# check it with `kakehashi gateway selftest --config <this file>`.\n"
)


def config_document(
    gateway_id: str,
    identity_dir: Path,
    data_dir: Path,
    broker_host: str,
    broker_port: int,
    local_broker: tuple[str, int] | None = None,
    local_broker_dir: Path | None = None,
) -> dict[str, Any]:
    """The configuration of a freshly provisioned gateway: its id, the cloud broker, the enrolled identity, and
    (``local_broker`` = listen address and port) the local broker of its nodes with its own certificate."""
    key, cert, _chain, trust = identity_paths(identity_dir)
    doc: dict[str, Any] = {
        "gateway": {"id": gateway_id, "data_dir": str(data_dir)},
        "uplink": {
            "host": broker_host,
            "port": broker_port,
            "ca_file": str(trust),
            "cert_file": str(cert),
            "key_file": str(key),
        },
        "outbox": {"budget_mb": 256},
    }
    if local_broker is not None:
        broker_key, broker_cert = local_broker_paths(identity_dir)
        doc["local_broker"] = {
            "host": local_broker[0],
            "port": local_broker[1],
            "cert_file": str(broker_cert),
            "key_file": str(broker_key),
            "run_dir": str(local_broker_dir or data_dir.parent / "local-broker"),
        }
    return doc


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    raise TypeError(f"cannot write {type(value).__name__} to gateway.toml")


def render_toml(doc: dict[str, Any]) -> str:
    """``doc`` (tables of scalar values) as TOML text with a header comment."""
    lines = [HEADER]
    for table, values in doc.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def validate_document(doc: dict[str, Any], path: Path) -> GatewayConfig:
    """Validate ``doc`` as if it were the file at ``path``; raises :class:`~kakehashi.errors.ConfigError`."""
    return parse_config(json.loads(json.dumps(doc)), path)


def write_config(doc: dict[str, Any], path: Path) -> GatewayConfig:
    """Write ``doc`` to ``path`` through a ``.new`` file that must load with :func:`load_config` first."""
    pending = path.with_name(path.name + ".new")
    keys.write_public_file(pending, render_toml(doc).encode())
    try:
        config = load_config(pending)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    os.replace(pending, path)
    return config
