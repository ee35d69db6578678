"""``kakehashi bench <name>``: run a benchmark from ``bench/`` and print its result (table, or JSON on request)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import click

from kakehashi import ui

BENCHMARKS = {
    "gateway": "readings/s through outbox and broker with PUBACK, RSS, replay after an outage, loss",
    "ble": "BLE advertisements parsed and aggregated per second on one core",
    "agent": "readings/s ingested per cloud agent process, p99 publish-to-stored latency, loss, duplicates",
    "actuation": "command round trip API → agent → gateway → Modbus write → succeeded, p50/p99",
    "northbound": "entity updates/s from the agent to a City OS (NGSI-LD and NGSI v2 stand-ins), latency, loss",
    "node": "MicroPython heap (gc.mem_alloc peak) of the edge node's report cycle on the unix port",
    "vs-thingsboard": "Modbus readings/s of this gateway vs thingsboard-gateway on one bus and broker (ratio, loss)",
}
MODULES = {"vs-thingsboard": "vs_thingsboard"}
"""Benchmarks whose module in ``bench/`` is not named like the benchmark."""


def _flatten(doc: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in doc.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


@click.command()
@click.argument("name", type=click.Choice(sorted(BENCHMARKS)))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quick", is_flag=True, help="A smaller run (for smoke tests); figures are less stable.")
@click.option("--db", type=click.Choice(["sqlite", "postgresql"]), help="Registry database (agent benchmark).")
@click.option("--agents", type=click.IntRange(1, 8), help="Agent processes sharing the load (agent benchmark).")
def bench(name: str, as_json: bool, quick: bool, db: str | None, agents: int | None) -> None:
    """Run benchmark NAME on this machine (loopback only, bounded, stops by itself)."""
    module = importlib.import_module(f"bench.{MODULES.get(name, name)}")
    kwargs: dict[str, Any] = {"progress": ui.progress}
    if quick:
        kwargs.update(getattr(module, "QUICK", {}))
    accepted = inspect.signature(module.run).parameters
    for option, value in (("db", db), ("agents", agents)):
        if value is not None:
            if option not in accepted:
                raise click.UsageError(f"--{option} does not apply to the {name} benchmark")
            kwargs[option] = value
    result: dict[str, Any] = module.run(**kwargs)
    if as_json:
        ui.print_json(result)
    else:
        ui.print_kv(_flatten(result))
