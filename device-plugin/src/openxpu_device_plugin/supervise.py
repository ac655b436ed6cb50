"""Background tasks that cannot die unnoticed: an unexpected exception is logged with its
traceback and the task is restarted with capped backoff, instead of the task ending silently
while the process goes on serving what it last knew.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from openxpu_device_plugin.health import Backoff

log = logging.getLogger(__name__)

# A task that ran this long before failing starts its backoff afresh.
STABLE_SECONDS = 60.0


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    on_crash: Callable[[Exception], None] | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Run `run()` until it returns; restart it whenever it raises. Cancel to stop."""
    backoff = backoff or Backoff(initial=0.5, cap=30.0)
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except Exception as exc:
            if time.monotonic() - started > STABLE_SECONDS:
                backoff.reset()
            delay = backoff.next()
            log.error(
                "%s failed (%s: %s); restarting it in %.1fs",
                name,
                type(exc).__name__,
                exc,
                delay,
                exc_info=exc,
            )
            if on_crash is not None:
                on_crash(exc)
        await asyncio.sleep(delay)
