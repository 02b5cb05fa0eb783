"""The event loop lag monitor (engine/lag.py): it logs a loop blocked past its threshold, and
returns as soon as its stop event is set."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from executor.engine import lag

pytestmark = pytest.mark.anyio


async def test_a_blocked_loop_is_logged_and_stop_ends_the_monitor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="executor.engine.lag")
    monitor = asyncio.create_task(lag.monitor(stop, interval_s=0.01, warn_s=0.1))
    await asyncio.sleep(0)  # the monitor starts its first wait
    time.sleep(0.3)  # noqa: ASYNC251 - the blocking call the monitor is there to notice
    deadline = time.monotonic() + 10.0
    while not any("blocked for" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the monitor never logged the blocked loop"
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(monitor, timeout=10.0)  # stays set for the monitor: it returns
    assert stop.is_set()
