"""Commands on Modbus devices: a profile command resolved to a value and written to its point, then read back.

The device's bus is the :class:`~gateway.sources.modbus.ModbusBusSource` that polls it; the write goes through that
bus's owner between polls (never interleaving with a poll), and the bus reads the point back after writing it,
failing with ``readback_mismatch`` when the profile's point verifies read-backs and the device shows another value.
The command's parameters are ``{"value": ...}`` for commands that take an argument (a setpoint, or a choice such as
``"flood"``) and ``{}`` for fixed commands (``open``, ``close``).

Failure reasons: ``unknown_command``, ``bad_value`` (wrong parameter, outside the point's range or the command's
choices), ``not_writable``, ``unknown_point``, ``exception`` (a Modbus exception response, with its code),
``timeout``, ``crc``, ``connection``, ``not_running``, ``readback_mismatch``, ``deadline`` (the deadline passed while
the write waited for the bus: the write is withdrawn if the bus had not started it yet).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from gateway.commands.actuator import CommandFailed, Outcome
from gateway.sources.base import Source
from gateway.sources.modbus import ModbusBusSource, ModbusWriteError
from hw.modbus.model import PointValue
from kakehashi import wire
from kakehashi.log import get_logger

__all__ = ["ModbusActuator"]

log = get_logger(__name__)

_PARAMS = frozenset({"value"})


class ModbusActuator:
    """Executes profile commands on the Modbus devices of the gateway's buses."""

    kind = "modbus"

    def __init__(self, sources: Sequence[Source]) -> None:
        self._buses = {
            device_id: source
            for source in sources
            if isinstance(source, ModbusBusSource)
            for device_id in source.device_ids
        }

    def owns(self, device_id: str) -> bool:
        return device_id in self._buses

    def _resolve(self, command: wire.CommandMessage) -> tuple[ModbusBusSource, str, PointValue]:
        """The bus, point and value of ``command``; :class:`CommandFailed` if the profile cannot run it."""
        bus = self._buses[command.device_id]
        profile = bus.device_profile(command.device_id)
        if profile is None:  # the bus was built with the device: cannot happen, but say so if it does
            raise CommandFailed(f"{command.device_id} is not on {bus.name}", reason="unknown_device")
        spec = profile.commands.get(command.name)
        if spec is None:
            known = ", ".join(sorted(profile.commands)) or "none"
            raise CommandFailed(
                f"profile {profile.name} has no command {command.name!r} (commands: {known})", reason="unknown_command"
            )
        extra = sorted(set(command.params) - _PARAMS)
        if extra:
            raise CommandFailed(f"unknown parameter {extra[0]!r}: commands take only 'value'", reason="bad_value")
        argument = command.params.get("value")
        if argument is not None and not isinstance(argument, bool | int | float | str):
            raise CommandFailed(f"value must be a number, a boolean or a choice, not {argument!r}", reason="bad_value")
        try:
            return bus, spec.point, spec.resolve(argument)
        except ValueError as exc:
            raise CommandFailed(str(exc), reason="bad_value") from None

    def check(self, command: wire.CommandMessage) -> None:
        """Refuse an unknown command or parameters the profile's command cannot resolve (the point's range and type
        are checked by the bus, at the write)."""
        self._resolve(command)

    async def execute(self, command: wire.CommandMessage) -> Outcome:
        bus, point, value = self._resolve(command)
        left = command.deadline - time.time()
        if left <= 0:
            raise CommandFailed("the deadline passed before the write", reason="deadline")
        try:
            async with asyncio.timeout(left):
                read_back = await bus.write_point(command.device_id, point, value)
        except TimeoutError:
            raise CommandFailed(
                f"the deadline passed while the write of {point} waited for {bus.name}; it was withdrawn unless "
                "the bus had already started it",
                reason="deadline",
            ) from None
        except ModbusWriteError as exc:
            raise CommandFailed(exc.message, reason=exc.reason) from None
        log.info("modbus_command_done", command=command.command_id, device=command.device_id, point=point)
        return Outcome(wire.AckStatus.SUCCEEDED, result={"point": point, "written": value, "read_back": read_back})
