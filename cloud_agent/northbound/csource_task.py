"""The agent's context-source registration as a task: register at start (retrying until the broker takes it),
keep it current, and remove it when the agent stops."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

from cloud_agent.northbound.context_source_entities import EntitySource
from cloud_agent.northbound.ngsi_clients import tls_verify
from cloud_agent.northbound.oauth import read_secret
from cloud_agent.northbound.registration import Registrar, RegistrationConfig, RegistrationError, served_information
from device_registry import Registry, RegistryError
from kakehashi.log import get_logger
from kakehashi.waiting import until_set

if TYPE_CHECKING:
    from cloud_agent.config import ContextSourceSection

log = get_logger(__name__)

DEREGISTER_WITHIN_S = 10.0


async def run_registration(settings: ContextSourceSection, registry: Registry, stop: asyncio.Event) -> None:
    """Register the agent as a context source with ``settings.broker_url`` until ``stop``; then deregister."""
    token = None if settings.agent_token_file is None else read_secret(settings.agent_token_file)
    config = RegistrationConfig(
        broker_url=settings.broker_url,
        endpoint=settings.endpoint,
        mode=settings.mode,
        tenant=settings.tenant,
        agent_token=token,
    )
    async with httpx.AsyncClient(verify=tls_verify(settings.ca_file), timeout=10.0) as http:
        registrar = Registrar(config, http)
        registered = False
        while not stop.is_set():
            try:
                information = await served_information(EntitySource(registry).scan())
                if information:
                    registration_id = await registrar.register(information)
                    registered = True
                    log.info("context_source_registered", broker=settings.broker_url, id=registration_id,
                             types=[entry["entities"][0]["type"] for entry in information])  # fmt: skip
            except (RegistrationError, RegistryError, httpx.HTTPError, OSError) as exc:
                log.warning("context_source_registration_failed", broker=settings.broker_url, error=str(exc)[:300])
            await until_set(stop, within=settings.retry_s)
        if registered:
            try:
                async with asyncio.timeout(DEREGISTER_WITHIN_S):
                    await registrar.deregister()
                log.info("context_source_deregistered", broker=settings.broker_url)
            except (RegistrationError, httpx.HTTPError, OSError, TimeoutError) as exc:
                log.warning("context_source_deregistration_failed", error=str(exc)[:300])
