"""Waking the dispatcher when tasks released with a not_before fall due."""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable


class WakeTimer:
    """Wakes the dispatcher when released tasks fall due, rather than at its next poll."""

    def __init__(self, wake: Callable[[set[int]], None]) -> None:
        self._wake = wake
        self._heap: list[tuple[float, int]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def at(self, when: float, shard: int) -> None:
        """Wake `shard`'s claims at UNIX time `when`."""
        heapq.heappush(self._heap, (when, shard))
        if when < self._armed_for:
            self._arm()

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._heap:
            self._armed_for = math.inf
            return
        self._armed_for = self._heap[0][0]
        # +1 ms: loop timers are rounded to the millisecond and may fire a hair early.
        delay = max(0.0, self._armed_for - time.time()) + 0.001
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = time.time()
        shards: set[int] = set()
        while self._heap and self._heap[0][0] <= now:
            shards.add(heapq.heappop(self._heap)[1])
        if shards:
            self._wake(shards)
        self._arm()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._heap.clear()
        self._armed_for = math.inf
