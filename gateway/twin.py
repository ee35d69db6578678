"""Desired configuration from the cloud: apply a versioned delta, refuse stale versions, report what happened.

A desired delta is a flat JSON object of settings, e.g. ``{"heartbeat_s": 60, "sources.modbus.poll_interval_s":
{"em-0001": 5}, "sources.ble.window_s": 20}``. Keys under ``sources.<name>.`` go to that source's ``reconfigure``;
the others are gateway settings. Each key is applied or rejected with a reason; the outcome is reported on
``up/reported`` with the version, through the outbox like any other uplink message. The last applied version is kept
in ``twin.json`` so a restart does not re-apply or accept an older delta.

A device's desired change arrives as ``{"devices": {"<device>": {...}}}`` (the registry's shape for a device's
twin). It goes to the gateway's :class:`DeviceSettings` (the node relay's :mod:`gateway.sources.nodes_settings`),
which answers per key (``devices.<device>.<key>``); the reported document then carries ``devices``, each device's
settings as the device acknowledged them, and is reported again when a device's acknowledgement changes it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from gateway.model import Priority
from gateway.outbox import Outbox
from gateway.outbox_store import PendingMessage
from kakehashi import wire
from kakehashi.log import get_logger

log = get_logger(__name__)


@runtime_checkable
class Reconfigurable(Protocol):
    """A source that can change settings while running; returns per-key results ("applied" or "rejected: why")."""

    def reconfigure(self, settings: Mapping[str, Any]) -> dict[str, str]: ...


@runtime_checkable
class DeviceSettings(Protocol):
    """Devices behind the gateway that take desired settings (the bound nodes)."""

    async def apply_desired(self, devices: Mapping[str, Any]) -> dict[str, str]:
        """Per-key results (``devices.<device>[.<key>]``: "relayed: ...", "rejected: why", ...)."""
        ...

    def reported(self) -> dict[str, Any]:
        """The ``devices`` part of the reported document."""
        ...


GatewaySetter = Callable[[Any], str]


class Twin:
    def __init__(
        self,
        state_path: Path,
        outbox: Outbox,
        *,
        sources: Mapping[str, object],
        gateway_settings: Mapping[str, GatewaySetter],
        effective: Callable[[], dict[str, Any]],
        devices: DeviceSettings | None = None,
    ) -> None:
        self._path = state_path
        self._devices = devices
        self._outbox = outbox
        self._sources = sources
        self._gateway_settings = gateway_settings
        self._effective = effective
        self.version = self._load()

    def _load(self) -> int:
        try:
            return int(orjson.loads(self._path.read_bytes()).get("desired_version", 0))
        except FileNotFoundError:
            return 0
        except (orjson.JSONDecodeError, ValueError, AttributeError):
            log.warning("twin_state_damaged", path=str(self._path))
            return 0

    def _save(self) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"desired_version": self.version, "at": time.time()}))
        os.replace(tmp, self._path)

    async def _apply(self, delta: Mapping[str, Any]) -> dict[str, str]:
        results: dict[str, str] = {}
        per_source: dict[str, dict[str, Any]] = {}
        for key, value in delta.items():
            if key == "devices":
                results.update(await self._apply_devices(value))
            elif key.startswith("sources."):
                # source names may contain dots (modbus:10.0.0.5:502); setting names never do
                name, _, setting = key[len("sources.") :].rpartition(".")
                if not name or not setting:
                    results[key] = "rejected: use sources.<source name>.<setting>"
                    continue
                per_source.setdefault(name, {})[setting] = value
            elif key in self._gateway_settings:
                try:
                    results[key] = self._gateway_settings[key](value)
                except (TypeError, ValueError) as exc:
                    results[key] = f"rejected: {exc}"
            else:
                results[key] = f"rejected: unknown setting (known: {', '.join(sorted(self._gateway_settings))})"
        for name, settings in per_source.items():
            source = self._sources.get(name)
            if source is None:
                for setting in settings:
                    results[f"sources.{name}.{setting}"] = "rejected: no source of that name on this gateway"
            elif not isinstance(source, Reconfigurable):
                for setting in settings:
                    results[f"sources.{name}.{setting}"] = "rejected: this source has no live settings"
            else:
                for setting, outcome in source.reconfigure(settings).items():
                    results[f"sources.{name}.{setting}"] = outcome
        return results

    async def _apply_devices(self, devices: Any) -> dict[str, str]:
        if not isinstance(devices, dict):
            return {"devices": "rejected: devices must be an object of device id to settings"}
        if self._devices is None:
            return {
                f"devices.{device}": "rejected: no device behind this gateway takes settings (no node relay)"
                for device in devices
            }
        return await self._devices.apply_desired(devices)

    async def handle(self, payload: bytes) -> None:
        """Apply one desired message (already known to be on our desired topic) and report the outcome."""
        message = wire.decode_desired(payload)
        if message.version <= self.version:
            log.warning("desired_stale", version=message.version, current=self.version)
            await self.report({"stale_desired_version": message.version})
            return
        results = await self._apply(message.delta)
        self.version = message.version
        self._save()
        log.info("desired_applied", version=message.version, results=results)
        await self.report({"results": results})

    async def report(self, extra: Mapping[str, Any] | None = None) -> None:
        state: dict[str, Any] = {"desired_version": self.version, "settings": self._effective()}
        if self._devices is not None:
            devices = self._devices.reported()
            if devices:
                state["devices"] = devices
        if extra:
            state.update(extra)
        version = self.version

        def encode(seq: int) -> bytes:
            return wire.encode_reported(
                wire.ReportedMessage(seq=seq, sent_at=time.time(), version=version, state=state)
            )

        await self._outbox.append([PendingMessage(wire.Channel.REPORTED, Priority.EVENT, 0, encode)])


async def ignore_downlink(channel: wire.Channel, payload: bytes) -> None:
    """The handler for channels a gateway does not act on."""
    del channel, payload


DownlinkHandler = Callable[[wire.Channel, bytes], Awaitable[None]]
