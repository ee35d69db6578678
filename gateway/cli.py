"""``kakehashi gateway``: run the gateway service and inspect its outbox."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from gateway.config import load_config
from kakehashi import ui


@click.group()
def gateway() -> None:
    """The Raspberry Pi gateway service."""


@gateway.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="gateway.toml")
def run(config_path: Path) -> None:
    """Run the gateway until SIGTERM/SIGINT: read the sources, buffer durably, forward over mutual TLS."""
    from gateway.service import Gateway, run_gateway

    config = load_config(config_path)

    def started(gw: Gateway) -> None:
        click.echo(
            f"gateway {config.gateway.id} running: sources {', '.join(s.name for s in gw.sources) or 'none'}; "
            f"outbox {config.outbox_path}; uplink mqtts://{config.uplink.host}:{config.uplink.port}",
            err=True,
        )

    asyncio.run(run_gateway(config, on_started=started))
    click.echo(f"gateway {config.gateway.id} stopped cleanly", err=True)


@gateway.command("outbox")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="gateway.toml")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def outbox(config_path: Path, as_json: bool) -> None:
    """Show the outbox: depth, oldest message, budget, drops and gaps."""
    from gateway.outbox_store import OutboxStore

    config = load_config(config_path)
    if not config.outbox_path.exists():
        ui.fail(f"no outbox at {config.outbox_path}: the gateway has not run with this config yet")
    store = OutboxStore(config.outbox_path, config.outbox.budget_bytes)
    try:
        stats = store.stats().to_json()
        drops = store.drops()
    finally:
        store.close()
    if as_json:
        ui.print_json({"outbox": stats, "gaps": [list(d) for d in drops]})
        return
    ui.print_kv(stats.items())
    if drops:
        click.echo("")
        ui.print_table(
            [{"from_seq": a, "to_seq": b, "readings": c, "reason": d} for a, b, c, d in drops],
            ["from_seq", "to_seq", "readings", "reason"],
        )
