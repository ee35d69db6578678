"""``kakehashi gateway run``: the gateway service in one asyncio task group.

Sources run under supervisors (a failing source fails alone), submit to the intake, which group-commits to the
outbox; the uplink forwards the outbox to the cloud broker and hands downlinks to the twin (desired settings) and
the command executor (:mod:`gateway.commands`: at most once, per-device order, deadlines). SIGTERM/SIGINT stop it
cleanly: running commands are acknowledged interrupted, sources stop, everything already submitted is committed,
in-flight publishes get a moment to be acknowledged, the retained status says offline, and the outbox is closed
consistent. Nothing accepted is lost at any point, including kill -9, because acceptance means committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.commands.assemble import open_executor
from gateway.commands.executor import CommandExecutor
from gateway.config import GatewayConfig
from gateway.fleet_crl import CrlError, store_crl
from gateway.health import base_health
from gateway.intake import Intake
from gateway.outbox import Outbox
from gateway.sources.base import Source, SourceHealth
from gateway.supervisor import supervise
from gateway.twin import Twin
from gateway.uplink import Uplink, UplinkSettings
from kakehashi import wire
from kakehashi.errors import ConfigError
from kakehashi.log import get_logger
from kakehashi.mqtt import client_tls_context

if TYPE_CHECKING:
    from gateway.sources.nodes_settings import NodeSettingsRelay

log = get_logger(__name__)


def build_sources(config: GatewayConfig) -> list[Source]:
    """Instantiate the configured source plug-ins (imported only when configured)."""
    sources: list[Source] = []
    section = config.sources
    if section.modbus is not None:
        from gateway.sources.modbus import build_modbus_source

        sources.extend(build_modbus_source(section.modbus))
    if section.ble is not None:
        from gateway.sources.ble import build_ble_source

        sources.append(build_ble_source(section.ble))
    for lpwa in section.lpwa:
        from gateway.sources.lpwa import build_lpwa_source

        sources.append(build_lpwa_source(lpwa))
    if section.nodes is not None:
        from gateway.sources.nodes import build_nodes_source

        sources.append(
            build_nodes_source(
                section.nodes,
                config.gateway.id,
                config.uplink.identity(),
                config.gateway.data_dir,
                config.nodes_server_hostname(),
            )
        )
    for synthetic in section.synthetic:
        from gateway.sources.synthetic import SyntheticSource

        sources.append(SyntheticSource(synthetic))
    names = [source.name for source in sources]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"two sources are both named {duplicates[0]!r}: give each source a distinct name")
    return sources


@dataclass
class Gateway:
    """A running gateway: its parts, for the CLI, the demo and tests to observe."""

    config: GatewayConfig
    outbox: Outbox
    intake: Intake
    uplink: Uplink
    sources: list[Source]
    health: dict[str, SourceHealth]
    twin: Twin
    commands: CommandExecutor
    started_at: float = field(default_factory=time.time)

    @property
    def commands_rejected(self) -> int:
        """Commands answered failed or expired without anything being sent to a device (expired, precondition
        failed, unknown device or command, bad value, LPWA): see :class:`gateway.commands.stats.CommandStats`."""
        return self.commands.stats.refused

    async def health_document(self) -> dict[str, Any]:
        stats = await self.outbox.stats()
        return {
            **base_health(self.started_at, self.config.gateway.data_dir),
            "outbox": stats.to_json(),
            "uplink": self.uplink.stats.to_json(),
            "sources": {name: h.to_json() for name, h in self.health.items()},
            "commands": self.commands.stats.to_json(),
        }

    async def on_downlink(self, channel: wire.Channel, payload: bytes) -> None:
        if channel is wire.Channel.DESIRED:
            await self.twin.handle(payload)
        elif channel is wire.Channel.COMMANDS:
            await self.commands.handle(payload)
        elif channel is wire.Channel.CRL:
            try:
                store_crl(wire.decode_crl(payload), self.config.crl_path, self.config.uplink.ca_file)
            except CrlError as exc:  # acknowledged anyway: a redelivery would be refused the same way
                log.warning("crl_refused", reason=exc.message)


def _node_settings(sources: list[Source]) -> NodeSettingsRelay | None:
    """The node relay's desired-settings part, if a nodes source is configured."""
    if "gateway.sources.nodes" not in sys.modules:
        return None
    from gateway.sources.nodes import NodesSource

    return next((s.settings for s in sources if isinstance(s, NodesSource) and s.settings is not None), None)


async def open_gateway(config: GatewayConfig) -> Gateway:
    """Open the outbox and build every part, without starting anything."""
    client_tls_context(config.uplink.identity())  # certificate, key and trust bundle usable: else one clear line now
    try:
        config.gateway.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create data_dir {config.gateway.data_dir} ({exc.strerror}): choose a writable [gateway] data_dir"
        ) from None
    sources = build_sources(config)
    outbox = await Outbox.open(config.outbox_path, config.outbox.budget_bytes)
    intake = Intake(outbox, max_readings_per_message=config.outbox.max_readings_per_message)
    health = {source.name: SourceHealth(source.name) for source in sources}
    settings = UplinkSettings(
        window=config.uplink.window, heartbeat_s=config.uplink.heartbeat_s, keepalive_s=config.uplink.keepalive_s
    )
    holder: dict[str, Gateway] = {}

    async def provide_health() -> dict[str, Any]:
        return await holder["gw"].health_document()

    async def downlink(channel: wire.Channel, payload: bytes) -> None:
        await holder["gw"].on_downlink(channel, payload)

    uplink = Uplink(
        config.gateway.id,
        config.uplink.endpoint(),
        config.uplink.identity(),
        outbox,
        health=provide_health,
        on_downlink=downlink,
        settings=settings,
    )

    def set_heartbeat(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 3600:
            return "rejected: heartbeat_s must be a number of seconds between 1 and 3600"
        settings.heartbeat_s = float(value)
        return "applied"

    gateway_settings: dict[str, Callable[[Any], str]] = {"heartbeat_s": set_heartbeat}
    node_settings = _node_settings(sources)
    twin = Twin(
        config.gateway.data_dir / "twin.json",
        outbox,
        sources={source.name: source for source in sources},
        gateway_settings=gateway_settings,
        effective=lambda: {"heartbeat_s": settings.heartbeat_s},
        devices=node_settings,
    )
    if node_settings is not None:
        node_settings.on_change = twin.report
    lpwa_devices = [device.id for lpwa in config.sources.lpwa for device in lpwa.devices]
    commands = await open_executor(config.gateway.data_dir, outbox, sources, lpwa_devices, lambda: twin.version)
    gateway = Gateway(config, outbox, intake, uplink, sources, health, twin, commands)
    holder["gw"] = gateway
    return gateway


async def run_gateway(
    config: GatewayConfig,
    *,
    stop: asyncio.Event | None = None,
    on_started: Callable[[Gateway], None] | None = None,
) -> Gateway:
    """Run until SIGTERM/SIGINT (or ``stop``); returns the gateway after a clean shutdown."""
    gateway = await open_gateway(config)
    loop = asyncio.get_running_loop()
    own_signals = stop is None
    stop = stop or asyncio.Event()
    if own_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    uplink_stop = asyncio.Event()
    log.info("gateway_starting", gateway=config.gateway.id, sources=[s.name for s in gateway.sources])
    try:
        await gateway.commands.start()
        async with asyncio.TaskGroup() as tg:
            intake_task = tg.create_task(gateway.intake.run())
            uplink_task = tg.create_task(gateway.uplink.run(uplink_stop))
            source_tasks = [
                tg.create_task(supervise(source, gateway.intake, gateway.health[source.name]))
                for source in gateway.sources
            ]
            if on_started:
                on_started(gateway)
            await stop.wait()
            log.info("gateway_stopping", gateway=config.gateway.id)
            await gateway.commands.stop()
            for task in source_tasks:
                task.cancel()
            await asyncio.gather(*source_tasks, return_exceptions=True)
            await gateway.intake.drain()
            intake_task.cancel()
            uplink_stop.set()
            await uplink_task
    finally:
        if own_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        with contextlib.suppress(Exception):
            await gateway.commands.close()
        with contextlib.suppress(Exception):
            await gateway.outbox.close()
    log.info("gateway_stopped", gateway=config.gateway.id)
    return gateway
