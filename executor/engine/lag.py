"""Event loop lag: how late the loop wakes a sleeper tells how long something blocked it.

Everything the engine does shares one event loop: a workflow or an async step that blocks it
(time.sleep, CPU-bound work, blocking I/O) stalls every other run, the heartbeat (so the lease can
run out under a live engine) and the systemd watchdog ping. The monitor measures the lag and logs
it; the instance loop names the workflow when one activation is the culprit (see instance.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from executor.engine.wakeup import sleep_until

log = logging.getLogger("executor.engine.lag")

INTERVAL_S = 0.25  # how often the monitor wakes
WARN_LAG_S = 1.0  # lag over this is logged as a warning


async def monitor(
    stop: asyncio.Event, interval_s: float = INTERVAL_S, warn_s: float = WARN_LAG_S
) -> None:
    """Log a warning whenever the loop wakes us more than `warn_s` late, until `stop` is set."""
    worst_s = 0.0
    while not stop.is_set():
        due = time.monotonic() + interval_s
        await sleep_until(stop, interval_s, clear=False)
        lag_s = time.monotonic() - due
        if lag_s > warn_s and not stop.is_set():
            worst_s = max(worst_s, lag_s)
            log.warning(
                "the event loop was blocked for %.2fs (worst so far %.2fs): some code running"
                " on it blocks (time.sleep, CPU-bound work or blocking I/O in a workflow or an"
                " async step); every run, the heartbeat and the watchdog waited meanwhile",
                lag_s,
                worst_s,
            )
