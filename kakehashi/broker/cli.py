"""``kakehashi broker``: run the fleet broker in the foreground, and reload its CRL and ACL from the PKI."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

import click

from kakehashi import ui
from kakehashi.broker.policy import PROFILES
from kakehashi.broker.runner import AccessProfile, BrokerState, PolicySummary, reload_broker, run_broker


@click.group()
def broker() -> None:
    """Run the Mosquitto broker with the fleet's TLS and ACL policy."""


@broker.command("run")
@click.option("--pki", "pki_dir", required=True, type=click.Path(path_type=Path), help="PKI directory.")
@click.option("--dir", "rundir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--port", default=8883, show_default=True, type=int, help="TLS listener port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address.")
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default="fleet",
    show_default=True,
    help="fleet: the cloud broker; local: a gateway's broker for its edge nodes.",
)
@click.option("--gateway", "owner", default=None, help="With --profile local: the gateway that owns this broker.")
def run(pki_dir: Path, rundir: Path, port: int, host: str, profile: str, owner: str | None) -> None:
    """Generate the Mosquitto config in RUNDIR and run it until SIGTERM/SIGINT.

    The listener is TLS only and requires a client certificate from the fleet PKI; the certificate CN is the
    MQTT username, and the ACL lets each identity touch only its own topics. Revocations and new identities in the
    PKI are picked up within a second (CRL and ACL reload without dropping connections).
    """

    def ready(state: BrokerState, summary: PolicySummary) -> None:
        click.echo(
            f"broker ready on mqtts://{host}:{port} (pid {state.mosquitto_pid}): TLS with client certificates, "
            f"{summary.identities} identities in the ACL, CRL #{summary.crl_number} "
            f"({summary.revoked} revoked, next update {summary.crl_next_update})",
        )

    def reloaded(summary: PolicySummary) -> None:
        click.echo(f"reloaded: CRL #{summary.crl_number} ({summary.revoked} revoked), {summary.identities} identities")

    access = AccessProfile(profile, owner)
    asyncio.run(run_broker(pki_dir, rundir, host, port, on_ready=ready, on_reload=reloaded, profile=access))
    click.echo("broker stopped")


@broker.command("reload")
@click.option("--dir", "rundir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def reload(rundir: Path, as_json: bool) -> None:
    """Re-read the PKI into a running broker: new CRL and ACL take effect without a restart."""
    summary = reload_broker(rundir)
    if as_json:
        ui.print_json(asdict(summary))
    else:
        click.echo(
            f"reloaded: CRL #{summary.crl_number} ({summary.revoked} revoked, next update "
            f"{summary.crl_next_update}), {summary.identities} identities in the ACL"
        )
