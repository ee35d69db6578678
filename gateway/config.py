"""The gateway's configuration file (``gateway.toml``), validated at start with errors that name the key and the fix.

Relative paths in the file are relative to the file's own directory. Each source plug-in owns its section's model;
this module composes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.sources.ble import BleSourceConfig
from gateway.sources.lpwa import LpwaSourceConfig
from gateway.sources.modbus import ModbusSourceConfig
from gateway.sources.nodes import NodesSourceConfig
from gateway.sources.synthetic import SyntheticSourceConfig
from kakehashi.config_errors import config_error, read_toml
from kakehashi.fields import Identifier
from kakehashi.identity import local_broker_name
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity

CRL_FILE = "fleet-crl.der"

HINTS = {
    "gateway.id": "the gateway's id as enrolled, e.g. gw-kakogawa-0012",
    "uplink.port": "the cloud broker's TLS port, usually 8883",
    "uplink.ca_file": "the fleet trust bundle (chain.pem) from provisioning",
    "outbox.budget_mb": "disk the outbox may use, e.g. 256",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewaySection(_Strict):
    id: Identifier = Field(description="this gateway's id, as in its certificate")
    data_dir: Path = Field(default=Path("/var/lib/kakehashi/gateway"), description="outbox and state")


class UplinkSection(_Strict):
    host: str
    port: int = Field(default=8883, ge=1, le=65535)
    ca_file: Path
    cert_file: Path
    key_file: Path
    heartbeat_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    keepalive_s: int = Field(default=30, ge=5, le=300)
    window: int = Field(default=64, ge=1, le=1000, description="publishes awaiting PUBACK at once")

    def endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint(self.host, self.port)

    def identity(self) -> TlsIdentity:
        return TlsIdentity(self.ca_file, self.cert_file, self.key_file)


class OutboxSection(_Strict):
    budget_mb: float = Field(default=256.0, ge=0.1, le=1_000_000)
    max_readings_per_message: int = Field(default=500, ge=1, le=5000)

    @property
    def budget_bytes(self) -> int:
        return int(self.budget_mb * 1024 * 1024)


class LocalBrokerSection(_Strict):
    """``[local_broker]``: the Mosquitto of this gateway's nodes, run from the enrollment material
    (``kakehashi broker run --config gateway.toml``, :mod:`gateway.local_broker`)."""

    host: str = Field(default="0.0.0.0", description="listen address: the Pi's LAN address, or 0.0.0.0 for all")
    port: int = Field(default=8884, ge=1, le=65535, description="TLS port the nodes connect to")
    cert_file: Path = Field(description="the local broker's server certificate (local-broker.crt from provisioning)")
    key_file: Path = Field(description="its private key (local-broker.key, made on this Pi)")
    run_dir: Path = Field(default=Path("/var/lib/kakehashi/local-broker"), description="Mosquitto's files")
    stale_crl: Literal["open", "closed"] = Field(
        default="open",
        description="when the fleet CRL is past its nextUpdate: open = run without it (nodes keep reporting, "
        "revocations are not enforced), closed = keep it (Mosquitto then refuses every node)",
    )


class SourcesSection(_Strict):
    modbus: ModbusSourceConfig | None = None
    ble: BleSourceConfig | None = None
    lpwa: list[LpwaSourceConfig] = Field(default_factory=list)
    nodes: NodesSourceConfig | None = None
    synthetic: list[SyntheticSourceConfig] = Field(default_factory=list)


class GatewayConfig(_Strict):
    gateway: GatewaySection
    uplink: UplinkSection
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    sources: SourcesSection = Field(default_factory=SourcesSection)
    local_broker: LocalBrokerSection | None = None

    @property
    def outbox_path(self) -> Path:
        return self.gateway.data_dir / "outbox.db"

    def nodes_server_hostname(self) -> str | None:
        """The name the node relay verifies on the local broker's certificate: ``[sources.nodes]
        server_hostname``, else ``<gateway id>.local`` when this gateway runs its ``[local_broker]``."""
        nodes = self.sources.nodes
        if nodes is not None and nodes.server_hostname:
            return nodes.server_hostname
        return local_broker_name(self.gateway.id) if self.local_broker is not None else None

    @property
    def crl_path(self) -> Path:
        """The fleet CRL the agent publishes on ``down/crl``, as the gateway stored it (DER)."""
        return self.gateway.data_dir / CRL_FILE


def _resolve(base: Path, doc: dict[str, Any]) -> None:
    """Make the file's relative paths relative to its directory."""
    sources = doc.get("sources")
    nodes = sources.get("nodes") if isinstance(sources, dict) else None
    sections = [
        ("gateway", ("data_dir",), doc.get("gateway")),
        ("uplink", ("ca_file", "cert_file", "key_file"), doc.get("uplink")),
        ("local_broker", ("cert_file", "key_file", "run_dir"), doc.get("local_broker")),
    ]
    sections.append(("sources.nodes", ("ca_file", "cert_file", "key_file"), nodes))
    lpwa = sources.get("lpwa") if isinstance(sources, dict) else None
    for entry in lpwa if isinstance(lpwa, list) else []:
        sections.append(("sources.lpwa", ("profile_dir",), entry))
    for _section, keys, part in sections:
        if isinstance(part, dict):
            for key in keys:
                value = part.get(key)
                if isinstance(value, str) and not Path(value).is_absolute():
                    part[key] = str(base / value)


def parse_config(doc: dict[str, Any], path: Path) -> GatewayConfig:
    _resolve(path.parent, doc)
    try:
        return GatewayConfig.model_validate(doc)
    except ValidationError as exc:
        raise config_error(path, exc, HINTS) from None


def load_config(path: Path) -> GatewayConfig:
    """Read and validate ``gateway.toml``; raises :class:`ConfigError` with one clear line."""
    doc = read_toml(path, "gateway.toml")
    return parse_config(doc, path.resolve())
