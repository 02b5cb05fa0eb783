"""The recorder: the outbox of step outcomes and unparks, written many per transaction.

Finished steps wait here for one pass of the event loop (or engine.flush_interval_s, if set), so
one commit records all that finished in it; those finishing while a commit runs join the next
(group commit: batches grow with the load, and an idle engine adds no wait to a step). The
limiter's unparks travel the same way, after any park they answer, so a group's parks and
unparks reach the database in order. After each commit the recorder hands the journal entries
written to the replayer, frees the slots of results the fence dropped, and tells the limiter
which unparks found fewer parked tasks than it thought.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from executor import errors
from executor.engine.health import WriteHealth
from executor.engine.limits import Limiter
from executor.engine.slots import SlotPool
from executor.engine.wakeup import sleep_until
from executor.store import repository as repo
from executor.store.database import Store
from executor.store.leases import Fence
from executor.telemetry import Telemetry
from executor.vocabulary import Delivery, Outcome, OutcomeKind, Recorded, Unpark

log = logging.getLogger("executor.engine")

FLUSH_RETRY_MAX_S = 2.0
_DONE = OutcomeKind.DONE  # a module-level name: faster than the class attribute, per outcome


class Recorder:
    """Group commit of outcomes and unparks; the `flush` loop is `run`."""

    def __init__(
        self,
        db: Store,
        pool: SlotPool,
        limiter: Limiter,
        health: WriteHealth,
        *,
        deliver: Callable[[list[Delivery]], None],
        flush_interval_s: float,
        poll_interval_s: Callable[[], float],
        telemetry: Telemetry | None,
        fence: Callable[[], Fence],
    ) -> None:
        self._db = db
        self._fence = fence  # the shards we own (engine/leases.py): results of others are refused
        self.refused = 0  # outcomes refused because their shard went to another engine
        self._pool = pool
        self._limiter = limiter
        self._health = health
        self._deliver = deliver
        self._telemetry = telemetry
        self.flush_interval_s = flush_interval_s
        self._poll_interval_s = poll_interval_s  # the engine's, which SIGHUP may change
        self._outcomes: list[Outcome] = []
        self._writing = 0  # outcomes in the record transaction under way
        self._unparks: list[Unpark] = []
        self._wake = asyncio.Event()
        self._closing = False

    @property
    def unflushed(self) -> int:
        """Outcomes not committed yet: waiting, or in the transaction being written."""
        return len(self._outcomes) + self._writing

    def add(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._wake.set()

    def send_unparks(self) -> None:
        """Take the limiter's unparks into the next commit."""
        unparks = self._limiter.take_unparks()
        if unparks:
            self._unparks.extend(Unpark(group, n) for group, n in unparks)
            self._wake.set()

    def close(self) -> None:
        """Write what is left, then let `run` return (the last step of a drain)."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.0
        while True:
            if not self._outcomes and not self._unparks:
                if self._closing:
                    return
                await sleep_until(self._wake, self._poll_interval_s())
                continue
            # Let more results join this transaction: one commit for many steps.
            await asyncio.sleep(backoff or self.flush_interval_s)
            outcomes, self._outcomes = self._outcomes, []
            unparks, self._unparks = self._unparks, []
            began = time.monotonic()
            self._writing = len(outcomes)
            try:
                recorded = await self._db.run(
                    repo.record, outcomes, unparks, time.time(), self._fence()
                )
            except errors.StoreError as exc:
                self._writing = 0
                # Keep them, in order; nothing is lost.
                self._outcomes = outcomes + self._outcomes
                self._unparks = unparks + self._unparks
                backoff = min(FLUSH_RETRY_MAX_S, max(0.05, backoff * 2))
                self._health.failed(exc, "flush")
                continue
            self._writing = 0
            backoff = 0.0
            self._health.ok("flush")
            if self._telemetry is not None:
                self._telemetry.flushed(len(outcomes), time.monotonic() - began)
            self._committed(outcomes, unparks, recorded)

    def _committed(
        self, outcomes: list[Outcome], unparks: list[Unpark], recorded: Recorded
    ) -> None:
        if recorded.refused:
            self.refused += recorded.refused
            log.warning(
                "refused %d results: their shards belong to another engine now (they run again"
                " there)",
                recorded.refused,
            )
        written = {(d.run_rid, d.pos) for d in recorded.deliveries}
        for o in outcomes:
            if o.kind is _DONE and (o.run_rid, o.pos) not in written:
                self._pool.release(o.run_rid, o.pos)  # dropped by the fence: no replay
        if recorded.deliveries:
            self._deliver(recorded.deliveries)
        if unparks:
            now = time.time()
            for u in recorded.short:
                self._limiter.unpark_shortfall(u.group, u.tasks, now)
            self._pool.wake_all()  # unparked tasks may be in any shard
