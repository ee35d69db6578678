"""Run one source plug-in so that its failures stay its own: restart with backoff, never take the gateway down."""

from __future__ import annotations

import asyncio

from gateway.sources.base import ReadingSink, Source, SourceHealth
from kakehashi.backoff import Backoff
from kakehashi.errors import KakehashiError
from kakehashi.log import get_logger

log = get_logger(__name__)


async def supervise(source: Source, sink: ReadingSink, health: SourceHealth, *, backoff: Backoff | None = None) -> None:
    """Run ``source`` until cancelled; if it raises, count it, mark it failed, wait, and start it again."""
    backoff = backoff or Backoff(base=1.0, cap=60.0)
    while True:
        started = asyncio.get_running_loop().time()
        try:
            await source.run(sink, health)
            message = "source returned unexpectedly"
        except asyncio.CancelledError:
            raise
        except KakehashiError as exc:
            message = exc.message
        except Exception as exc:  # a plug-in bug must not stop the other sources
            message = f"{type(exc).__name__}: {exc}"
            log.exception("source_crashed", source=source.name)
        health.state = "failed"
        health.count_error("crash", message)
        health.restarts += 1
        if asyncio.get_running_loop().time() - started > 60:
            backoff.reset()
        delay = backoff.next()
        log.error("source_failed", source=source.name, reason=message, restart_in_s=round(delay, 2))
        await asyncio.sleep(delay)
