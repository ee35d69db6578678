"""The ``kakehashi`` command: one entry point whose subcommands live with the part they drive.

Each part contributes a click group (``pki`` from ``cloud_agent.pki.cli``, ``broker`` from ``kakehashi.broker``,
...). Groups are imported lazily so that ``kakehashi --help`` stays fast. Expected failures
(:class:`~kakehashi.errors.KakehashiError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from kakehashi import __version__
from kakehashi import log as khlog
from kakehashi.errors import KakehashiError

# subcommand name -> "module:attribute" of its click command
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "pki": ("cloud_agent.pki.cli:pki", "fleet certificate authority: init, issue, revoke, CRL, show"),
    "broker": ("kakehashi.broker.cli:broker", "run the Mosquitto broker with the fleet's TLS and ACL policy"),
    "gateway": ("gateway.cli:gateway", "the Raspberry Pi gateway service: run, outbox, provision, selftest"),
    "bench": ("kakehashi.bench_cli:bench", "run a benchmark: kakehashi bench <name> --json"),
    "demo": ("kakehashi.demo:demo", "run the whole system on this machine with simulated hardware"),
    "agent": ("cloud_agent.cli:agent", "the cloud agent service: run, API tokens"),
    "device": ("cloud_agent.device_cli:device", "devices and gateways through the agent's HTTPS API"),
    "node": ("gateway.node_cli:node", "MicroPython sensor nodes: flash firmware, settings and identity"),
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target[0].partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kakehashi")
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Structured (JSON) log level on stderr.",
)
def cli(log_level: str) -> None:
    """Kakehashi: edge IoT gateway and cloud agent for smart cities."""
    khlog.configure(log_level.upper())


def _expected_failure(exc: BaseException) -> KakehashiError | None:
    """The first :class:`KakehashiError` in ``exc``, looking inside task-group exception groups."""
    if isinstance(exc, KakehashiError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _expected_failure(inner)
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: run the CLI, turning expected failures into one clear line."""
    try:
        return cli.main(args=argv, prog_name="kakehashi", standalone_mode=False)
    except BaseExceptionGroup as group:
        failure = _expected_failure(group)
        if failure is None:
            raise
        click.echo(f"error: {failure.message}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KakehashiError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
