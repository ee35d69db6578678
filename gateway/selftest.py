"""``kakehashi gateway selftest``: a pass/fail checklist of everything the gateway needs on site.

In order: the config loads; the identity (files, key, dates, chain); the clock; the cloud broker over mutual TLS;
the nodes' local broker (its connection with a probe round trip, its certificate and its policy); each source's
hardware; the disk for the outbox budget; the outbox itself. A config that does not load stops the list there
(nothing else can be checked). Each check reports progress as it starts, and every check that does not pass names
the next step. The self-test changes no file, holds no broker session, and does not poll a serial bus the running
gateway owns; its only message is one probe on its own topic of the local broker.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gateway.config import load_config
from gateway.selftest_brokers import broker_check, nodes_broker_check
from gateway.selftest_identity import identity_checks
from gateway.selftest_local_broker import local_broker_checks
from gateway.selftest_model import Check, Status
from gateway.selftest_sources import source_checks
from gateway.selftest_system import clock_check, disk_check, outbox_check
from kakehashi.errors import ConfigError
from kakehashi.log import get_logger

__all__ = ["exit_code", "run_selftest"]

log = get_logger(__name__)

Progress = Callable[[str], None]


async def run_selftest(config_path: Path, progress: Progress) -> list[Check]:
    """Run every check for the gateway configured in ``config_path``."""
    progress(f"config {config_path}")
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return [Check.failed("config valid", exc.message, "fix the file and run the self-test again")]
    checks = [Check.ok("config valid", f"{config_path} (gateway {config.gateway.id})")]
    progress("identity")
    checks.extend(identity_checks(config))
    progress("clock")
    checks.append(clock_check())
    progress(f"cloud broker {config.uplink.host}:{config.uplink.port}")
    checks.append(await broker_check(config))
    nodes = await nodes_broker_check(config)
    if nodes is not None:
        checks.append(nodes)
    checks.extend(local_broker_checks(config))
    progress("sources")
    checks.extend(await source_checks(config))
    progress("disk and outbox")
    checks.append(disk_check(config))
    checks.append(outbox_check(config))
    failed = [c.name for c in checks if c.status is Status.FAIL]
    log.info("selftest_done", gateway=config.gateway.id, checks=len(checks), failed=failed)
    return checks


def exit_code(checks: list[Check]) -> int:
    """0 when nothing failed, 1 otherwise (warnings and unknowns do not fail the self-test)."""
    return 1 if any(c.status is Status.FAIL for c in checks) else 0
