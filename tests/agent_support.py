"""Test support for the cloud agent: its config for a test fleet, running it in-process, and a raw gateway client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from cloud_agent.config import AgentConfig, parse_config
from cloud_agent.service import AgentService, run_agent
from device_registry import Registry
from kakehashi import wire
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity
from kakehashi.mqtt_link import MqttLink, Will
from tests.conftest import Fleet

ORG = "kakogawa"


def agent_config(
    fleet: Fleet, endpoint: BrokerEndpoint, url: str, directory: Path, **sections: dict[str, Any]
) -> AgentConfig:
    doc: dict[str, Any] = {
        "agent": {"id": "agent-1"},
        "broker": {
            "host": endpoint.host,
            "port": endpoint.port,
            "ca_file": str(fleet.agent.ca_file),
            "cert_file": str(fleet.agent.cert_file),
            "key_file": str(fleet.agent.key_file),
        },
        "database": {"url": url},
        "api": {"enabled": False},
        "pki": {"dir": str(fleet.ca.path)},
        "presence": {"check_interval_s": 0.2},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    directory.mkdir(parents=True, exist_ok=True)
    return parse_config(doc, directory / "agent.toml")


async def register_gateway(registry: Registry, fleet: Fleet, gateway_id: str) -> None:
    """Register ``gateway_id`` with the certificate the test fleet issued it (so it is provisioned)."""
    with contextlib.suppress(Exception):
        await registry.create_organisation(ORG, "Kakogawa City", actor="admin")
    await registry.create_gateway(gateway_id, ORG, actor="admin")
    for record in fleet.ca.records_for(gateway_id):
        await registry.record_certificate(gateway_id, record.serial_hex, record.not_after, actor="pki")


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig, *, connected: bool = True) -> AsyncIterator[AgentService]:
    """Run the agent in this event loop until the block ends; waits for its broker connection."""
    stop = asyncio.Event()
    started: asyncio.Future[AgentService] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_agent(config, stop=stop, on_started=started.set_result))
    try:
        done, _ = await asyncio.wait({task, started}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        assert started.done(), "the agent did not start within 20 s"
        service = started.result()
        if connected:
            async with asyncio.timeout(20):
                await service.connected.wait()
        yield service
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


async def wait_for(predicate: Any, within: float = 15.0, what: Any = "condition") -> None:
    """Poll an async or sync predicate until true; ``what`` (text, or a function giving text) names it on failure."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.05)


def gateway_link(endpoint: BrokerEndpoint, identity: TlsIdentity, gateway_id: str, **kwargs: Any) -> MqttLink:
    """A gateway's raw MQTT connection, with its offline last will."""
    will = Will(
        wire.topic_for(gateway_id, wire.Channel.STATUS),
        wire.encode_status(wire.StatusMessage(wire.StatusState.OFFLINE, wire.StatusReason.WILL, time.time())),
    )
    return MqttLink(endpoint, identity, client_id=gateway_id, will=will, **kwargs)


def readings(seq: int, device: str, values: list[float], at: float | None = None) -> bytes:
    base = at if at is not None else time.time()
    return wire.encode_readings(
        wire.ReadingsMessage(
            seq=seq,
            sent_at=base,
            readings=tuple(
                wire.Reading(device, "level", value, "m", base + i * 0.001, wire.ClockQuality.SYNCED)
                for i, value in enumerate(values)
            ),
        )
    )


def status(state: wire.StatusState, reason: wire.StatusReason) -> bytes:
    return wire.encode_status(wire.StatusMessage(state, reason, time.time(), {"outbox": {"pending": 0}}))


ONE_YEAR = timedelta(days=365)
