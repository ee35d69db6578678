"""Building the agent's City OS feed from its ``[northbound]`` settings: HTTP client, OAuth tokens, broker client,
the outbox mapper (in a worker process unless ``mapping_worker = false``), the registry-backed source with its stored
crowd counts, the pusher, and the City OS side of tag retention."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from cloud_agent.northbound.crowd_counts import StoredCrowdCounts
from cloud_agent.northbound.ngsi_clients import BrokerClient, NgsiLdClient, NgsiV2Client, tls_verify
from cloud_agent.northbound.oauth import ClientCredentials, TokenSource, read_secret
from cloud_agent.northbound.outbox_mapper import SERIALIZERS, OutboxMapper, RowMapper
from cloud_agent.northbound.pusher import Pusher, PusherSettings
from cloud_agent.northbound.registry_source import RegistryNorthboundSource
from cloud_agent.northbound.tag_retention import TagRetention
from cloud_agent.northbound.worker_mapper import WorkerMapper
from device_registry import Registry
from kakehashi.log import get_logger

if TYPE_CHECKING:
    from cloud_agent.config import NorthboundSection

log = get_logger(__name__)


@dataclass(frozen=True)
class NorthboundFeed:
    """The parts of the City OS feed: run the pusher and the tag retention, :meth:`aclose` when they stopped."""

    pusher: Pusher
    tag_retention: TagRetention
    source: RegistryNorthboundSource
    http: httpx.AsyncClient

    async def aclose(self) -> None:
        """Stop the mapping worker and close the HTTP client."""
        try:
            await self.source.close()
        finally:
            await self.http.aclose()


def build_feed(settings: NorthboundSection, registry: Registry, database_url: str) -> NorthboundFeed:
    """The City OS feed for ``settings`` over ``registry`` (opened at ``database_url``, which the mapping worker
    opens too)."""
    http = httpx.AsyncClient(verify=tls_verify(settings.ca_file), timeout=settings.timeout_s)
    tokens = None
    if settings.token_url:
        assert settings.client_id is not None
        assert settings.client_secret_file is not None
        credentials = ClientCredentials(
            settings.token_url, settings.client_id, read_secret(settings.client_secret_file), settings.scope
        )
        tokens = TokenSource(credentials, http)
    client: BrokerClient
    if settings.kind == "ngsi-ld":
        client = NgsiLdClient(http, settings.url, tenant=settings.tenant, tokens=tokens)
    else:
        client = NgsiV2Client(
            http, settings.url, service=settings.service, service_path=settings.service_path, tokens=tokens
        )
    if settings.pseudonym_secret_file is not None:
        secret = read_secret(settings.pseudonym_secret_file).encode()
    else:
        secret = secrets.token_bytes(32)
        log.warning(
            "northbound_pseudonym_secret_random",
            detail="no pseudonym_secret_file: consented tags get new pseudonyms at every start, and their Devices "
            "sent before a restart cannot be found to delete at the City OS; set [northbound] pseudonym_secret_file",
        )
    tag_retention_s = settings.tag_retention_h * 3600
    crowd = StoredCrowdCounts(
        registry,
        secret,
        keep_hours=settings.crowd_keep_hours,
        min_count=settings.crowd_min_count,
        sweep_s=settings.crowd_sweep_s,
        tag_retention_s=tag_retention_s,
    )
    mapper: RowMapper
    if settings.mapping_worker:
        mapper = WorkerMapper(database_url, settings.kind)
    else:
        mapper = OutboxMapper(registry, settings.kind)
    source = RegistryNorthboundSource(
        registry, mapper, SERIALIZERS[settings.kind], crowd=crowd, crowd_flush_s=settings.crowd_flush_s
    )
    pusher = Pusher(
        source,
        client,
        PusherSettings(
            batch_size=settings.batch_size,
            max_in_flight=settings.max_in_flight,
            updates_per_entity=settings.updates_per_entity,
            linger_s=settings.linger_s,
        ),
    )
    retention = TagRetention(
        registry,
        client,
        secret,
        retention_s=tag_retention_s,
        period_s=settings.tag_retention_period_s,
        batch_size=settings.batch_size,
    )
    return NorthboundFeed(pusher, retention, source, http)
