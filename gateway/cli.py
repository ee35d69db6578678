"""``kakehashi gateway``: run the gateway service, inspect its outbox, provision the Pi and self-test it on site."""

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


@gateway.command("provision")
@click.option("--token", required=True, help="The one-time enrollment token from the asset manager.")
@click.option("--agent", "agent_url", required=True, help="The cloud agent's URL, https://...")
@click.option("--id", "gateway_id", required=True, help="This gateway's id, as registered (gw-kakogawa-0012).")
@click.option("--ca", "ca_bundle", type=click.Path(path_type=Path, dir_okay=False), help="CA bundle for the agent.")
@click.option("--broker", default=None, help="The cloud broker HOST[:PORT] (default: the agent's host, 8883).")
@click.option("--config-dir", type=click.Path(path_type=Path), default=Path("/etc/kakehashi"), show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("/var/lib/kakehashi"), show_default=True)
@click.option("--systemd-dir", type=click.Path(path_type=Path), default=Path("/etc/systemd/system"), show_default=True)
@click.option("--no-systemd", is_flag=True, help="Do not install the systemd unit.")
@click.option("--force", is_flag=True, help="Move an existing config and identity aside and provision anew.")
@click.option(
    "--local-broker-host",
    default="0.0.0.0",
    show_default=True,
    help="Address the nodes' local broker listens on (this Pi's LAN address, or 0.0.0.0 for all).",
)
@click.option("--local-broker-port", default=8884, show_default=True, type=click.IntRange(1, 65535))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def provision_command(
    token: str,
    agent_url: str,
    gateway_id: str,
    ca_bundle: Path | None,
    broker: str | None,
    config_dir: Path,
    data_dir: Path,
    systemd_dir: Path,
    no_systemd: bool,
    force: bool,
    local_broker_host: str,
    local_broker_port: int,
    as_json: bool,
) -> None:
    """Make the keys here, enroll with the one-time token, write gateway.toml, install the systemd units."""
    from gateway.provision import ProvisionRequest, provision

    request = ProvisionRequest(
        gateway_id=gateway_id,
        token=token,
        agent_url=agent_url,
        ca_bundle=ca_bundle,
        broker=broker,
        config_dir=config_dir.absolute(),
        data_dir=data_dir.absolute(),
        systemd_dir=systemd_dir,
        systemd=not no_systemd,
        force=force,
        local_broker_host=local_broker_host,
        local_broker_port=local_broker_port,
    )
    result = asyncio.run(provision(request, ui.progress))
    if as_json:
        ui.print_json(result.to_json())
        return
    click.echo(
        f"Gateway {result.gateway_id} is provisioned: certificate {result.serial} (valid until "
        f"{result.not_after[:10]}), key made on this machine in {result.identity_dir}, config {result.config}."
    )
    if result.moved_aside:
        click.echo("Moved aside (kept): " + ", ".join(str(p) for p in result.moved_aside))
    unit = result.unit
    if unit is not None:
        if unit.enabled:
            click.echo(f"The systemd unit {unit.path} is installed and enabled.")
        elif unit.path is not None:
            click.echo(f"The systemd unit is written to {unit.path} ({unit.note}).")
        else:
            click.echo(f"No systemd unit installed: {unit.note}.")
    click.echo("Next:")
    for step in result.next_steps:
        click.echo(f"  {step}")


@gateway.command("selftest")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path), help="gateway.toml")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for remote collection).")
def selftest_command(config_path: Path, as_json: bool) -> None:
    """Check identity, clock, brokers, sources, disk and outbox: a pass/fail list with the next step for each failure.

    Exit status 0 when nothing failed, 1 when a check failed.
    """
    from gateway.selftest import exit_code, run_selftest

    checks = asyncio.run(run_selftest(config_path, lambda step: ui.progress(f"checking {step}")))
    code = exit_code(checks)
    if as_json:
        ui.print_json({"ok": code == 0, "checks": [c.to_json() for c in checks]})
    else:
        ui.print_table(
            [{"check": c.name, "result": c.status.value.upper(), "detail": c.detail} for c in checks],
            ["check", "result", "detail"],
        )
        failures = [c for c in checks if c.fix]
        click.echo("")
        if code == 0 and not failures:
            click.echo(f"All {len(checks)} checks passed. Start the service: systemctl start kakehashi-gateway")
        else:
            failed = sum(c.status.value == "fail" for c in checks)
            click.echo(f"{failed} of {len(checks)} checks failed. Next steps:" if failed else "Passed, with notes:")
            for check in failures:
                click.echo(f"  - {check.name}: {check.fix}")
            if failed:
                click.echo("Fix these, then run the self-test again.")
    if code:
        raise SystemExit(code)
