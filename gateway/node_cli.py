"""``kakehashi node``: the field technician's commands for MicroPython sensor nodes (``flash``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click

from kakehashi import ui
from kakehashi.errors import ConfigError


@click.group()
def node() -> None:
    """MicroPython sensor nodes: flash firmware, settings and identity."""


def _settings(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read --settings {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"--settings {path} is not JSON ({exc}): fix it") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"--settings {path} must hold a JSON object of node.json keys (docs/edge.md)")
    return doc


@node.command("flash")
@click.option("--port", required=True, help="The board's serial port (/dev/ttyUSB0), or unix:<dir> for the unix port.")
@click.option("--id", "node_id", required=True, help="The node's id, e.g. wl-0007.")
@click.option("--gateway", required=True, help="Address of the gateway's local broker, as the node reaches it.")
@click.option("--gateway-port", default=8884, show_default=True, type=click.IntRange(1, 65535))
@click.option("--server-hostname", default=None, help="Name on the local broker's certificate (default: --gateway).")
@click.option("--pki", required=True, type=click.Path(path_type=Path, file_okay=False), help="The fleet CA directory.")
@click.option(
    "--settings",
    "settings_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="node.json keys (JSON file).",
)
@click.option("--wifi-ssid", default=None, help="Wi-Fi network the node joins.")
@click.option(
    "--wifi-key", default=None, envvar="KH_WIFI_KEY", help="Its key (or the KH_WIFI_KEY environment variable)."
)
@click.option("--ntp", default=None, help="NTP server for the node (usually the gateway).")
@click.option("--power", type=click.Choice(["battery", "mains"]), default=None, help="Default: battery.")
@click.option("--package", default=None, help="Firmware package.json (path or URL); default: edge/package.json.")
@click.option("--index", default=None, help="mip index for umqtt (default: micropython-lib).")
@click.option("--no-mpy", is_flag=True, help="Install dependencies as .py (for an index without .mpy files).")
@click.option("--renew", is_flag=True, help="Reflash a node that already has a valid certificate (issues a new one).")
@click.option("--wait-s", default=120.0, show_default=True, type=click.FloatRange(0), help="0: do not wait.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def flash(
    port: str,
    node_id: str,
    gateway: str,
    gateway_port: int,
    server_hostname: str | None,
    pki: Path,
    settings_path: Path | None,
    wifi_ssid: str | None,
    wifi_key: str | None,
    ntp: str | None,
    power: str | None,
    package: str | None,
    index: str | None,
    no_mpy: bool,
    renew: bool,
    wait_s: float,
    as_json: bool,
) -> None:
    """Install the firmware with mip, copy node.json and a new node identity, reset, wait for the first report.

    Exit status 0 when the gateway received the node's first report (or --wait-s 0), 1 when it did not arrive,
    2 when nothing was flashed (no board, bad settings, PKI problem).
    """
    from gateway.node_boards import open_board
    from gateway.node_flash import DEFAULT_PACKAGE, FlashRequest, flash_node

    if wifi_key and not wifi_ssid:
        raise ConfigError("--wifi-key without --wifi-ssid: give the network's name too")
    request = FlashRequest(
        node_id=node_id,
        gateway=gateway,
        pki=pki,
        gateway_port=gateway_port,
        server_hostname=server_hostname,
        package=package or DEFAULT_PACKAGE,
        index=index,
        mpy=not no_mpy,
        settings=_settings(settings_path),
        wifi={"ssid": wifi_ssid, "key": wifi_key or ""} if wifi_ssid else None,
        ntp=ntp,
        power=power,
        renew=renew,
        wait_s=wait_s,
    )
    result = asyncio.run(flash_node(request, open_board(port), ui.progress))
    if as_json:
        ui.print_json(result.to_json())
    elif result.reported:
        click.echo(
            f"Node {node_id} is flashed ({result.board}; certificate {result.serial}) and its first report reached "
            f"the gateway after {result.waited_s:.0f} s (the relay stored and acknowledged the node's message seq "
            f"{result.seq})."
        )
    elif result.reported is None:
        click.echo(f"Node {node_id} is flashed ({result.board}; certificate {result.serial}) and was reset.")
    else:
        click.echo(f"Node {node_id} is flashed ({result.board}; certificate {result.serial}), but: {result.problem}.")
    if not as_json:
        click.echo("Next:" if result.reported is not False else "Check:")
        for step in result.next_steps:
            click.echo(f"  - {step}")
    if result.reported is False:
        raise SystemExit(1)
