"""Leases: the shards this engine owns, at which epoch, and the tick that keeps them.

The only writer of the owned set. Its tick runs in upkeep's heartbeat loop, one transaction
(store/leases.tick): renew what we hold, hand back the shards we have drained, take the free or
expired shards rendezvous hashing (bounded loads) gives us. In between ticks:

- the slot pool claims only for shards we own and are not handing over (`SlotPool.own`);
- a shard we should no longer own (a daemon joined, or we are stopping) is drained first: no new
  claims, its in-flight steps finish and are recorded (up to engine.drain_timeout_s, then they are
  cancelled and run again on the new owner), then the next tick hands it back;
- a shard the tick did not renew was taken by another engine while we could not tick (a pause, a
  slow database): its in-flight steps are cancelled, its live workflows dropped; whatever we
  would still write for it is refused by the fences in the store;
- if no tick succeeds for 0.8 of a lease, we stop claiming everywhere until one does. Only
  hygiene: safety comes from the fences, never from our clock.

Every claim, record, replay commit and timer transaction carries `fence()` (our engine id and the
epochs we believe), checked against the lease rows in the same transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from executor import config
from executor.engine.runner import StepRunner
from executor.engine.slots import SlotPool
from executor.store import leases as stored
from executor.store.database import Store
from executor.vocabulary import EngineState

log = logging.getLogger("executor.engine")

SELF_FENCE = 0.8  # of a lease without a successful tick: stop claiming
UNSETTLED_TICK_S = 0.1  # while shards are being handed over, tick this often (at most)


class Leases:
    """The owned (shard, epoch) set and its tick."""

    def __init__(
        self,
        db: Store,
        engine_id: int,
        cfg: config.EngineConfig,
        pool: SlotPool,
        runner: StepRunner,
        stopping: asyncio.Event,
        *,
        unflushed: Callable[[], int],
        forget: Callable[[frozenset[int]], None],
        share_limits: Callable[[float], None] = lambda share: None,
    ) -> None:
        self._db = db
        self._engine_id = engine_id
        self._cfg = cfg
        self._pool = pool
        self._runner = runner
        self._stopping = stopping
        self._unflushed = unflushed  # outcomes the recorder has not written yet
        self._forget = forget  # drop the live workflows of these shards (the replayer)
        self._share_limits = share_limits  # the engine's quotas: our share of each
        self.held: dict[int, int] = {}  # shard -> epoch
        self._fence = stored.Fence(engine_id, {})
        self._mine: frozenset[int] = frozenset()
        self._releasing: dict[int, float] = {}  # shard -> when its drain began (monotonic)
        self._fenced_self = False
        self._deadline: asyncio.TimerHandle | None = None
        self.peers = 0
        self.counters = {"acquired": 0, "released": 0, "lost": 0, "requeued": 0}

    def fence(self) -> stored.Fence:
        """What the store checks each write against (immutable: read on the database thread)."""
        return self._fence

    @property
    def settled(self) -> bool:
        """We own exactly our share: nothing to hand over, nothing left to take."""
        return not self._releasing and self._mine <= self.held.keys()

    def next_tick_s(self) -> float:
        """Time to the next tick: the heartbeat, or sooner while shards change hands."""
        beat = self._cfg.heartbeat_interval_s
        return beat if self.settled else min(beat, UNSETTLED_TICK_S)

    async def start(self) -> None:
        """Create the lease rows, then take our share before the first claim."""
        await self._db.run(stored.ensure, self._db.shards)
        await self.tick()

    async def tick(self) -> None:
        """One tick (raises StoreError; the heartbeat loop reports it and tries again)."""
        began = time.monotonic()
        state = EngineState.DRAINING if self._stopping.is_set() else EngineState.RUNNING
        ready = {s: self.held[s] for s, since in self._releasing.items() if self._drained(s, since)}
        result = await self._db.run(
            stored.tick,
            self._engine_id,
            dict(self.held),
            ready,
            state,
            time.time(),
            self._cfg.lease_s,
        )
        released = frozenset(s for s in ready if s not in result.kept)
        lost = frozenset(self.held.keys() - result.kept.keys() - released)
        self.held = {**result.kept, **result.acquired}
        self._fence = stored.Fence(self._engine_id, dict(self.held))
        self._mine = result.mine
        self.peers = result.peers
        now = time.monotonic()
        self._releasing = {
            s: self._releasing.get(s, now) for s in self.held if s not in result.mine
        }
        if lost:
            self.counters["lost"] += len(lost)
            log.warning(
                "lost shards %s to other engines (we could not renew them in time):"
                " cancelling their steps",
                _fmt(lost),
            )
            self._runner.cancel_shards(lost)
            self._forget(lost)
        if released:
            self.counters["released"] += len(released)
            log.info("handed over shards %s", _fmt(released))
            self._forget(released)
        if result.acquired:
            self.counters["acquired"] += len(result.acquired)
            self.counters["requeued"] += result.requeued
            log.info(
                "took shards %s (epochs %s); %d claims of their previous owners back in the queue",
                _fmt(result.acquired),
                ", ".join(str(result.acquired[s]) for s in sorted(result.acquired)),
                result.requeued,
            )
        self._arm_deadline(began)
        self._publish()
        self._share_limits(quota_share(len(self.held), result.shards, result.peers))
        if result.acquired:
            self._pool.wake(result.acquired)

    def stop(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _drained(self, shard: int, since: float) -> bool:
        """Ready to hand back: nothing in flight in it and nothing left to write."""
        if time.monotonic() - since > self._cfg.drain_timeout_s:
            self._runner.cancel_shards(frozenset([shard]))  # they run again on the new owner
        if self._runner.in_flight_in(shard) or self._unflushed():
            return False
        # A running engine also waits for the replays of what it recorded (their slots are held
        # until then), so the new owner does not rebuild those runs from their journals. A
        # stopping one has stopped replaying: the replay entries are durable.
        return self._stopping.is_set() or self._pool.busy(shard) == 0

    def _arm_deadline(self, began: float) -> None:
        self.stop()
        self._fenced_self = False
        delay = max(0.0, began + SELF_FENCE * self._cfg.lease_s - time.monotonic())
        self._deadline = asyncio.get_running_loop().call_later(delay, self._self_fence)

    def _self_fence(self) -> None:
        self._deadline = None
        self._fenced_self = True
        log.warning(
            "no lease tick succeeded for %.1fs (%.0f%% of engine.lease_s): claiming nothing"
            " until one does",
            SELF_FENCE * self._cfg.lease_s,
            SELF_FENCE * 100,
        )
        self._publish()

    def _publish(self) -> None:
        if self._fenced_self:
            self._pool.own(())
        else:
            self._pool.own(s for s in self.held if s not in self._releasing)


def quota_share(owned: int, shards: int, peers: int) -> float:
    """The share of every quota an engine enforces: all of it alone (SQLite, or one daemon), the
    fraction of the shards it owns when several share the database. Runs hash evenly over the
    shards, so each daemon's share of the work is about its share of the shards; the shares of
    all daemons add up to at most 1, as each shard has one owner."""
    if peers <= 1 or shards == 0:
        return 1.0
    return owned / shards


def split_limits(specs: Sequence[config.LimitSpec], share: float) -> list[config.LimitSpec]:
    """`specs` with every rate and concurrency cap scaled to `share`, rounded down so that the
    daemons together stay within the configured quota (but never below 1: a quota smaller than
    the number of daemons lets each of them run one at a time)."""
    if share >= 1.0:
        return list(specs)
    out = []
    for spec in specs:
        scaled: dict[str, Any] = {}
        for name in _QUOTA_FIELDS:
            value = getattr(spec, name)
            if value is not None:
                scaled[name] = max(1, int(value * share))
        out.append(dataclasses.replace(spec, **scaled))
    return out


_QUOTA_FIELDS = (
    "requests_per_second",
    "requests_per_minute",
    "requests_per_hour",
    "tokens_per_second",
    "tokens_per_minute",
    "tokens_per_hour",
    "concurrent",
)


def _fmt(shards: Iterable[int]) -> str:
    return ", ".join(str(s) for s in sorted(shards))
