"""The cloud agent's configuration file (``agent.toml``), validated at start with errors that name the key and the fix.

Relative paths are relative to the file's own directory. A minimal file names the agent's service identity, the
broker and the database; everything else has a default fit for one city::

    [agent]
    id = "agent-1"                       # its service certificate's CN, also the MQTT client id

    [broker]
    host = "mqtt.example.city"
    ca_file = "pki/chain.pem"
    cert_file = "agent-1.crt"
    key_file = "agent-1.key"

    [database]
    url = "sqlite+aiosqlite:///var/lib/kakehashi/registry.db"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kakehashi.config_errors import config_error, read_toml
from kakehashi.errors import ConfigError
from kakehashi.fields import Identifier
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity

HINTS = {
    "agent.id": "the agent's service identity as issued by `kakehashi pki issue --role service`, e.g. agent-1",
    "broker.port": "the broker's TLS port, usually 8883",
    "database.url": "sqlite+aiosqlite:///path/registry.db or postgresql+asyncpg://user:password@host/db",
    "api.certfile": "a TLS server certificate, e.g. from `kakehashi pki issue-server`",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSection(_Strict):
    id: Identifier = Field(description="the agent's service identity (certificate CN); also its MQTT client id")
    share_group: Identifier | None = Field(
        default=None,
        description="agents of one group split the uplinks (MQTT 5 shared subscription); unset: this agent takes all",
    )


class BrokerSection(_Strict):
    host: str
    port: int = Field(default=8883, ge=1, le=65535)
    ca_file: Path
    cert_file: Path
    key_file: Path
    keepalive_s: int = Field(default=30, ge=5, le=300)
    session_expiry_s: int = Field(
        default=86_400, ge=60, le=30 * 86_400, description="how long the broker keeps our queue while we are away"
    )
    receive_window: int = Field(
        default=512, ge=16, le=65_535, description="uplink messages received but not yet stored and acknowledged"
    )

    def endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint(self.host, self.port)

    def identity(self) -> TlsIdentity:
        return TlsIdentity(self.ca_file, self.cert_file, self.key_file)


class DatabaseSection(_Strict):
    url: str = Field(default="sqlite+aiosqlite:///registry.db")

    @field_validator("url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite:///", "postgresql+asyncpg://")):
            raise ValueError(f"{value!r} is not a registry URL")
        return value


class IngestSection(_Strict):
    batch_messages: int = Field(default=32, ge=1, le=1000, description="messages stored per transaction at most")
    batch_wait_ms: float = Field(default=10.0, ge=0.0, le=1000.0, description="wait this long to fill a batch")
    retry_max_s: float = Field(default=10.0, ge=0.1, le=300.0, description="longest pause between database retries")


class PresenceSection(_Strict):
    heartbeat_timeout_s: float = Field(
        default=95.0, ge=1.0, le=86_400.0, description="a gateway silent this long is offline (3 heartbeats + slack)"
    )
    check_interval_s: float = Field(default=5.0, ge=0.05, le=3600.0)


class CommandsSection(_Strict):
    sweep_s: float = Field(default=5.0, ge=0.05, le=3600.0, description="how often to expire, dispatch and resend")
    resend_after_s: float = Field(
        default=15.0, ge=0.1, le=3600.0, description="publish a sent command again if not acknowledged by then"
    )


class NorthboundSection(_Strict):
    kind: Literal["ngsi-ld", "ngsi-v2"] = Field(description="the City OS broker's API")
    url: str = Field(description="the broker's base URL, e.g. https://cityos.example (no /ngsi-ld/v1 or /v2)")
    tenant: str | None = Field(default=None, description="NGSI-LD: the NGSILD-Tenant header")
    service: str | None = Field(default=None, description="NGSI v2: the Fiware-Service header")
    service_path: str | None = Field(default=None, description="NGSI v2: the Fiware-ServicePath header")
    ca_file: Path | None = Field(default=None, description="trust bundle for the broker's HTTPS certificate")
    token_url: str | None = Field(default=None, description="OAuth 2.0 token endpoint (client credentials)")
    client_id: str | None = None
    client_secret_file: Path | None = Field(default=None, description="a file holding the client secret")
    scope: str | None = None
    pseudonym_secret_file: Path | None = Field(
        default=None,
        description="secret for watch-tag pseudonyms (HMAC); unset: a random one per start (unstable pseudonyms)",
    )
    crowd_flush_s: float = Field(default=60.0, ge=0.1, le=3600.0, description="how often crowd counts go out")
    crowd_keep_hours: int = Field(
        default=24, ge=1, le=24 * 31, description="hours of crowd counts recounted (late sightings corrected)"
    )
    crowd_min_count: int = Field(
        default=1, ge=1, le=1000, description="k-anonymity: a zone-hour with fewer distinct tags is held back"
    )
    crowd_sweep_s: float = Field(
        default=600.0, ge=1.0, le=86_400.0, description="how often all crowd_keep_hours are recounted"
    )
    tag_retention_h: float = Field(
        default=24.0, gt=0.0, le=24.0 * 366, description="a tag's pseudonymised Device is deleted after this unseen"
    )
    tag_retention_period_s: float = Field(
        default=60.0, ge=1.0, le=3600.0, description="how often tags are checked for City OS deletions"
    )
    batch_size: int = Field(default=100, ge=1, le=1000, description="entities per request at most")
    max_in_flight: int = Field(default=4, ge=1, le=64, description="requests in flight at once")
    updates_per_entity: int = Field(
        default=10, ge=1, le=100, description="consecutive updates of one entity one request may carry, in order"
    )
    linger_s: float = Field(
        default=0.02, ge=0.0, le=5.0, description="how long a short batch may wait for more while others are in flight"
    )
    timeout_s: float = Field(default=10.0, ge=0.5, le=300.0)
    mapping_worker: bool = Field(
        default=True, description="map stored messages to entities in a worker process (a second core), not the loop"
    )

    @field_validator("url", "token_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


class ContextSourceSection(_Strict):
    broker_url: str = Field(description="the City OS NGSI-LD broker to register with (base URL)")
    endpoint: str = Field(description="this agent's public HTTPS base URL, which the broker forwards queries to")
    mode: Literal["inclusive", "redirect", "auxiliary"] = "inclusive"
    tenant: str | None = None
    agent_token_file: Path | None = Field(
        default=None, description="a city-os API token the broker sends back to the agent (kept in a file)"
    )
    ca_file: Path | None = Field(default=None, description="trust bundle for the broker's HTTPS certificate")
    retry_s: float = Field(default=60.0, ge=1.0, le=86_400.0, description="pause before trying to register again")

    @field_validator("broker_url", "endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


class ApiSection(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    certfile: Path | None = None
    keyfile: Path | None = None


class PkiSection(_Strict):
    dir: Path | None = Field(default=None, description="the fleet CA directory; enables enrollment and revocation")


class RetentionSection(_Strict):
    purge_interval_s: float = Field(default=3600.0, ge=1.0, le=7 * 86_400.0)


class AgentConfig(_Strict):
    agent: AgentSection
    broker: BrokerSection
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    presence: PresenceSection = Field(default_factory=PresenceSection)
    commands: CommandsSection = Field(default_factory=CommandsSection)
    northbound: NorthboundSection | None = None
    context_source: ContextSourceSection | None = None
    api: ApiSection = Field(default_factory=ApiSection)
    pki: PkiSection = Field(default_factory=PkiSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)


def _resolve(base: Path, doc: dict[str, Any]) -> None:
    """Make the file's relative paths (and a relative SQLite path) relative to its directory."""
    for section, keys in (
        ("broker", ("ca_file", "cert_file", "key_file")),
        ("api", ("certfile", "keyfile")),
        ("pki", ("dir",)),
        ("northbound", ("ca_file", "client_secret_file", "pseudonym_secret_file")),
        ("context_source", ("agent_token_file", "ca_file")),
    ):
        part = doc.get(section)
        if isinstance(part, dict):
            for key in keys:
                value = part.get(key)
                if isinstance(value, str) and not Path(value).is_absolute():
                    part[key] = str(base / value)
    database = doc.get("database")
    url = database.get("url") if isinstance(database, dict) else None
    prefix = "sqlite+aiosqlite:///"
    if isinstance(url, str) and url.startswith(prefix) and not url[len(prefix) :].startswith("/"):
        database["url"] = prefix + str(base / url[len(prefix) :])  # type: ignore[index]
    elif database is None or url is None:
        doc.setdefault("database", {})["url"] = prefix + str(base / "registry.db")


def parse_config(doc: dict[str, Any], path: Path) -> AgentConfig:
    _resolve(path.parent, doc)
    try:
        config = AgentConfig.model_validate(doc)
    except ValidationError as exc:
        raise config_error(path, exc, HINTS) from None
    northbound = config.northbound
    if northbound is not None and northbound.token_url and not (northbound.client_id and northbound.client_secret_file):
        raise ConfigError(
            f"{path}: northbound: token_url needs client_id and client_secret_file (OAuth 2.0 client credentials)"
        )
    if config.api.enabled and (config.api.certfile is None or config.api.keyfile is None):
        raise ConfigError(
            f"{path}: api: certfile and keyfile are required (the API speaks HTTPS only); "
            "issue one with `kakehashi pki issue-server`, or set api.enabled = false"
        )
    return config


def load_config(path: Path) -> AgentConfig:
    """Read and validate ``agent.toml``; raises :class:`ConfigError` with one clear line."""
    doc = read_toml(path, "agent.toml")
    return parse_config(doc, path.resolve())
