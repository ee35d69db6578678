"""``kakehashi agent``: run the cloud agent, and manage API tokens directly in its registry (the first admin token).

Expected failures are :class:`~kakehashi.errors.KakehashiError` subclasses, printed by the root command as one
``error:`` line.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from cloud_agent.config import load_config
from kakehashi import ui

_config_option = click.option(
    "--config", "config_path", required=True, type=click.Path(path_type=Path), help="agent.toml"
)


@click.group()
def agent() -> None:
    """The cloud agent: ingest, registry, lifecycle, twin, enrollment and the HTTPS API."""


@agent.command("run")
@_config_option
def run(config_path: Path) -> None:
    """Run the agent until SIGTERM/SIGINT."""
    from cloud_agent.service import AgentService, run_agent

    config = load_config(config_path)

    def started(service: AgentService) -> None:
        api = f"https://{config.api.host}:{config.api.port}" if config.api.enabled else "disabled"
        click.echo(
            f"agent {config.agent.id} running: broker mqtts://{config.broker.host}:{config.broker.port} "
            f"(shared group {config.agent.share_group or 'none'}); "
            f"registry {_safe_url(config.database.url)}; API {api}",
            err=True,
        )

    asyncio.run(run_agent(config, on_started=started))
    click.echo(f"agent {config.agent.id} stopped cleanly", err=True)


def _safe_url(url: str) -> str:
    """The database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


async def _with_registry(config_path: Path, action: Any) -> Any:
    from device_registry import Registry

    config = load_config(config_path)
    async with await Registry.open(config.database.url) as registry:
        return await action(registry)


@agent.group("token")
def token() -> None:
    """API tokens, straight in the registry (use this for the first admin token; then the API)."""


@token.command("create")
@_config_option
@click.option("--name", required=True, help="Who holds it (the audit log's actor), e.g. tanaka@city.kakogawa.")
@click.option("--role", required=True, type=click.Choice(["admin", "asset-manager", "viewer", "city-os"]))
@click.option("--days", type=click.IntRange(1, 3650), help="Lifetime in days (default: until revoked).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def token_create(config_path: Path, name: str, role: str, days: int | None, as_json: bool) -> None:
    """Create an API token; the secret is printed once and stored only hashed."""
    ttl = None if days is None else timedelta(days=days)
    secret, created = asyncio.run(
        _with_registry(config_path, lambda r: r.create_api_token(name, role, actor="operator", ttl=ttl))
    )
    if as_json:
        ui.print_json({"name": created.name, "role": created.role.value, "token": secret})
        return
    ui.print_kv([("name", created.name), ("role", created.role.value), ("token", secret)])
    click.echo("Keep the token secret: it is shown only now. Use it as KAKEHASHI_API_TOKEN.", err=True)


@token.command("list")
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def token_list(config_path: Path, as_json: bool) -> None:
    """List API tokens (never their secrets)."""
    tokens = asyncio.run(_with_registry(config_path, lambda r: r.list_api_tokens()))
    rows = [
        {
            "name": t.name,
            "role": t.role.value,
            "created_by": t.created_by,
            "created_at": t.created_at.isoformat(timespec="seconds"),
            "expires_at": "" if t.expires_at is None else t.expires_at.isoformat(timespec="seconds"),
            "revoked_at": "" if t.revoked_at is None else t.revoked_at.isoformat(timespec="seconds"),
        }
        for t in tokens
    ]
    if as_json:
        ui.print_json(rows)
    else:
        ui.print_table(rows, ["name", "role", "created_by", "created_at", "expires_at", "revoked_at"])


@token.command("revoke")
@_config_option
@click.option("--name", required=True, help="The token's name.")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
def token_revoke(config_path: Path, name: str, reason: str) -> None:
    """Revoke an API token at once."""
    asyncio.run(_with_registry(config_path, lambda r: r.revoke_api_token(name, actor="operator", reason=reason)))
    click.echo(f"API token {name} revoked")
