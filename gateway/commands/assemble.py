"""Putting the executor together for a gateway: its journal file, and one actuator per kind of device it has."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from gateway.commands.actuator import Actuator
from gateway.commands.executor import CommandExecutor
from gateway.commands.journal import CommandJournal
from gateway.commands.lpwa_actuator import LpwaActuator
from gateway.outbox import Outbox
from gateway.sources.base import Source

__all__ = ["JOURNAL_FILE", "actuators_for", "open_executor"]

JOURNAL_FILE = "commands.db"
"""The journal's file name in the gateway's data directory."""


def actuators_for(sources: Sequence[Source], lpwa_devices: Iterable[str]) -> list[Actuator]:
    """The actuators for the gateway's sources: Modbus buses, the node relay, and LPWA devices (refused).

    The Modbus and node actuators are imported only when their source module is loaded (a source of that kind is
    configured), as :func:`gateway.service.build_sources` imports source plug-ins only when configured."""
    actuators: list[Actuator] = []
    if "gateway.sources.modbus" in sys.modules:
        from gateway.commands.modbus_actuator import ModbusActuator

        actuators.append(ModbusActuator(sources))
    if "gateway.sources.nodes" in sys.modules:
        from gateway.commands.node_actuator import NodeActuator
        from gateway.sources.nodes import NodesSource

        actuators.extend(NodeActuator(source) for source in sources if isinstance(source, NodesSource))
    actuators.append(LpwaActuator(lpwa_devices))
    return actuators


async def open_executor(
    data_dir: Path,
    outbox: Outbox,
    sources: Sequence[Source],
    lpwa_devices: Iterable[str],
    reported_version: Callable[[], int],
) -> CommandExecutor:
    """Open the journal in ``data_dir`` and build the executor (call its ``start`` before the first command)."""
    journal = await CommandJournal.open(data_dir / JOURNAL_FILE)
    return CommandExecutor(journal, outbox, actuators_for(sources, lpwa_devices), reported_version)
