"""``kakehashi broker``: run the fleet broker in the foreground, and reload its CRL and ACL from the PKI."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

import click

from kakehashi import ui
from kakehashi.broker.policy import PROFILES
from kakehashi.broker.runner import (
    AccessProfile,
    BrokerError,
    BrokerState,
    PolicySummary,
    reload_broker,
    run_broker,
)


@click.group()
def broker() -> None:
    """Run the Mosquitto broker with the fleet's TLS and ACL policy."""


@broker.command("run")
@click.option("--pki", "pki_dir", type=click.Path(path_type=Path), help="PKI directory (the fleet broker).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A gateway's gateway.toml: run its local broker from the enrollment material ([local_broker]).",
)
@click.option("--dir", "rundir", type=click.Path(path_type=Path), help="Run directory.")
@click.option("--port", default=None, type=int, help="TLS listener port [default: 8883; with --config its port].")
@click.option("--host", default=None, help="Listen address [default: 127.0.0.1; with --config its host].")
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default=None,
    help="fleet: the cloud broker; local: a gateway's broker for its edge nodes [default: fleet; local with --config].",
)
@click.option("--gateway", "owner", default=None, help="With --pki and --profile local: the owning gateway.")
def run(
    pki_dir: Path | None,
    config_path: Path | None,
    rundir: Path | None,
    port: int | None,
    host: str | None,
    profile: str | None,
    owner: str | None,
) -> None:
    """Generate the Mosquitto config in RUNDIR and run it until SIGTERM/SIGINT.

    The listener is TLS only and requires a client certificate from the fleet PKI; the certificate CN is the
    MQTT username, and the ACL lets each identity touch only its own topics. With --pki, revocations and new
    identities in the PKI are picked up within a second (CRL and ACL reload without dropping connections). With
    --config, a gateway's local broker runs from what enrollment gave the Pi (no CA key): the fleet trust bundle,
    the local broker certificate, the fleet CRL received on down/crl and the nodes bound in gateway.toml, each
    change picked up within a second (docs/broker.md).
    """
    if config_path is not None:
        _run_local(config_path, pki_dir, rundir, host, port, profile, owner)
        return
    if pki_dir is None or rundir is None:
        raise BrokerError(
            "give --pki and --dir (the fleet broker, or a test/demo local broker), or --config gateway.toml "
            "(a gateway's local broker from its enrollment material)"
        )
    host = host or "127.0.0.1"
    port = port or 8883

    def ready(state: BrokerState, summary: PolicySummary) -> None:
        click.echo(
            f"broker ready on mqtts://{host}:{port} (pid {state.mosquitto_pid}): TLS with client certificates, "
            f"{summary.identities} identities in the ACL, CRL #{summary.crl_number} "
            f"({summary.revoked} revoked, next update {summary.crl_next_update})",
        )

    def reloaded(summary: PolicySummary) -> None:
        click.echo(f"reloaded: CRL #{summary.crl_number} ({summary.revoked} revoked), {summary.identities} identities")

    access = AccessProfile(profile or "fleet", owner)
    asyncio.run(run_broker(pki_dir, rundir, host, port, on_ready=ready, on_reload=reloaded, profile=access))
    click.echo("broker stopped")


def _describe(state: BrokerState) -> str:
    nodes = ", ".join(state.nodes or []) or "none"
    crl = state.crl_state
    if state.crl_number is not None:
        crl = f"{crl} (CRL #{state.crl_number}, next update {state.crl_next_update})"
    return f"nodes in the ACL: {nodes}; fleet CRL: {crl}"


def _run_local(
    config_path: Path,
    pki_dir: Path | None,
    rundir: Path | None,
    host: str | None,
    port: int | None,
    profile: str | None,
    owner: str | None,
) -> None:
    from gateway.local_broker import run_local_broker

    if pki_dir is not None or owner is not None or profile == "fleet":
        raise BrokerError(
            "--config runs a gateway's local broker from gateway.toml: leave out --pki, --gateway and "
            "--profile fleet (the owner and nodes come from the file)"
        )

    def ready(state: BrokerState) -> None:
        click.echo(
            f"broker ready on mqtts://{state.host}:{state.port} (pid {state.mosquitto_pid}): local broker of "
            f"{state.owner} from {config_path}; {_describe(state)}"
        )

    def restarted(state: BrokerState) -> None:
        click.echo(f"restarted (pid {state.mosquitto_pid}): {_describe(state)}")

    asyncio.run(run_local_broker(config_path, rundir, host=host, port=port, on_ready=ready, on_reload=restarted))
    click.echo("broker stopped")


@broker.command("reload")
@click.option("--dir", "rundir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def reload(rundir: Path, as_json: bool) -> None:
    """Re-read the PKI into a running broker: new CRL and ACL take effect without a restart.

    For a local broker run with --config, ask it to re-read gateway.toml and the fleet CRL at once."""
    state = BrokerState.read(rundir.resolve() / "broker.json")
    if state.config:
        from gateway.local_broker import request_reload

        request_reload(rundir)
        if as_json:
            ui.print_json({"requested": True, "config": state.config})
        else:
            click.echo(f"reload requested: the local broker re-reads {state.config} and the fleet CRL")
        return
    summary = reload_broker(rundir)
    if as_json:
        ui.print_json(asdict(summary))
    else:
        click.echo(
            f"reloaded: CRL #{summary.crl_number} ({summary.revoked} revoked, next update "
            f"{summary.crl_next_update}), {summary.identities} identities in the ACL"
        )
