"""How the engine's loops sleep: until their event is set, or a timeout."""

from __future__ import annotations

import asyncio


async def sleep_until(event: asyncio.Event, timeout_s: float, *, clear: bool = True) -> None:
    """Return when `event` is set or after `timeout_s`; clear it (the caller consumed the wake-up)
    unless `clear` is False (a stop event, which must stay set)."""
    if not event.is_set():
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            pass
    if clear:
        event.clear()
