"""The dispatcher: claims queued tasks for shards with free slots, oldest workflow first.

Each claim is one transaction for every shard that wants work, asking at most the shard's free
slots (the pool says which). The claim also checks the epoch: when it has moved past ours,
nothing is claimed and the engine drains.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

from executor import errors
from executor.engine.health import WriteHealth
from executor.engine.limits import Limiter
from executor.engine.runner import StepRunner
from executor.engine.slots import SlotPool
from executor.store import repository as repo
from executor.store.database import Store
from executor.store.leases import Fence
from executor.vocabulary import NEWER_EPOCH

log = logging.getLogger("executor.engine")


def claim_tokens(engine_id: int) -> Callable[[], int]:
    """Claim tokens for the dispatcher's claims and the replay commits' (replayer.py): unique
    per claim across engines, the engine id in the high bits."""
    return itertools.count((engine_id << 32) + 1).__next__


class Dispatcher:
    """The `dispatch` loop (`run`)."""

    def __init__(
        self,
        db: Store,
        engine_id: int,
        epoch: int,
        pool: SlotPool,
        runner: StepRunner,
        limiter: Limiter,
        health: WriteHealth,
        stopping: asyncio.Event,
        *,
        request_stop: Callable[[str], None],
        poll_interval_s: Callable[[], float],
        fence: Callable[[], Fence],
        next_token: Callable[[], int],
    ) -> None:
        self._db = db
        self._fence = fence  # the shards we own (engine/leases.py): claimed only there
        self._engine_id = engine_id
        self._epoch = epoch
        self._pool = pool
        self._runner = runner
        self._limiter = limiter
        self._health = health
        self._stopping = stopping
        self._request_stop = request_stop
        self._poll_interval_s = poll_interval_s  # the engine's, which SIGHUP may change
        self._next_token = next_token  # unique per claim across engines (claim_tokens)

    async def run(self) -> None:
        next_poll = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            poll = now >= next_poll
            if poll:
                next_poll = now + self._poll_interval_s()
            wants = self._pool.wants(poll)
            if wants or poll:
                try:
                    claimed = await self._db.run(
                        repo.claim,
                        self._engine_id,
                        self._epoch,
                        self._next_token(),
                        wants,
                        time.time(),
                        self._limiter.active,
                        self._fence(),
                    )
                except errors.StoreError as exc:
                    self._health.failed(exc, "dispatch")
                    claimed = []  # try again at the next poll
                else:
                    self._health.ok("dispatch")
                if claimed is None:
                    log.warning("epoch moved past ours (%d): draining", self._epoch)
                    self._request_stop(NEWER_EPOCH)
                    return
                got: dict[int, int] = {}
                for c in claimed:
                    got[c.shard] = got.get(c.shard, 0) + 1
                    self._runner.start(c)
                self._pool.claimed(wants, got)
            await self._pool.wait(max(0.0, next_poll - time.monotonic()))
