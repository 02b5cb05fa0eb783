"""Retention: the daemon purges finished runs older than [retention] finished_days.

A named background task of the daemon, beside the engine: every `interval_s` it purges, in batches
of `batch` runs (one short transaction each, so the engine keeps committing), the runs that
finished more than `finished_days` ago, with their journal, replay entries, timers and the
payloads only they referred to, and gives the space back to the file system as it goes
(`Client.purge_runs`). A purge cut short (a stop, a crash) continues at the next pass. It reads
the settings at every pass, so a SIGHUP that changes them applies at the next one.

It works through its own connection, so a slow purge never holds up the engine's own thread.
Failures are logged and retried at the next pass: retention is housekeeping, never a reason to
stop the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from executor import config, errors
from executor.client import Client
from executor.runfilter import FINISHED, RunFilter

log = logging.getLogger("executor.retention")

DAY_S = 86400.0
SPEC = "retention"  # every pass continues the unfinished purge of the one before


async def purge_once(client: Client, cfg: config.RetentionConfig, now: float) -> int:
    """One pass: purge what is due; the number of runs purged."""
    where = RunFilter(statuses=FINISHED, finished_before=now - cfg.finished_days * DAY_S)
    report = await client.purge_runs(where, batch_size=cfg.batch, spec=SPEC)
    await client.forget_actions(before=now - max(cfg.finished_days * DAY_S, DAY_S))
    return report.acted


async def run(settings: Callable[[], config.Config], stop: asyncio.Event) -> None:
    """Purge on every interval until `stop` is set (or the task is cancelled)."""
    cfg = settings()
    async with Client(cfg.database) as client:
        while not stop.is_set():
            cfg = settings()
            if cfg.retention.finished_days > 0:
                started = time.monotonic()
                try:
                    purged = await purge_once(client, cfg.retention, time.time())
                except errors.ExecutorError as exc:
                    log.warning("retention: purge failed, trying again later: %s", exc)
                else:
                    if purged:
                        log.info(
                            "retention: purged %d runs finished more than %g days ago in %.1fs",
                            purged,
                            cfg.retention.finished_days,
                            time.monotonic() - started,
                        )
            try:
                async with asyncio.timeout(cfg.retention.interval_s):
                    await stop.wait()
            except TimeoutError:
                pass
