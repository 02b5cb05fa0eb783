"""The slot pool: how many steps each shard runs at once, and which shards are worth a claim.

The pool is the only writer of slot state. Everything else tells it what happened: a claim took
slots (`occupy`), a step finished (`hold` or `free`), a replay commit is about to fill a run's
held slots (`reserve`), the commit claimed tasks for them (`run_next`: the run's next steps or
the head of its shard's queue), the rest of them are free (`release`), tasks became claimable
somewhere (`wake`, `wake_all`). The dispatcher asks it what to claim (`wants`) and sleeps on
`wait` until something changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

from executor.engine.wakeup import sleep_until

HOLD_MAX_S = 1.0  # longest a finished step's slot waits for its run's next step


class SlotPool:
    """Per-shard busy slots, shards worth asking for work, and slots held for a run's next step."""

    def __init__(self, shards: int, slots_per_shard: int) -> None:
        self.shards = range(shards)
        self.slots_per_shard = slots_per_shard
        # The shards whose steps we run: those this engine owns by lease and is not handing
        # over (engine/leases.py sets it); none until the first lease tick.
        self.owned: frozenset[int] = frozenset()
        self._busy = [0] * shards
        # Shards worth asking for work: a claim that got fewer tasks than it asked for drops its
        # shard until something may have queued more (a poll, a wake).
        self._hungry = set(self.shards)
        # Slots kept for a run whose step just finished, until its replay has queued the next
        # step (run -> {pos: (shard, since)}). Freed at once, a slot would go to a newer
        # workflow's queued step before this run's next step exists: FIFO completion would
        # suffer, and the run would wait a whole step time for the next free slot.
        self._held: dict[int, dict[int, tuple[int, float]]] = {}
        # Runs whose replay commit is in flight with their held slots reserved for it: never
        # released as stale meanwhile (the commit may claim their next steps for them).
        self._reserved: set[int] = set()
        self._changed = asyncio.Event()

    @property
    def capacity(self) -> int:
        return self.slots_per_shard * len(self.owned)

    def idle(self) -> int:
        """Slots not running a step, over the shards we own."""
        busy = self._busy
        return sum(max(0, self.slots_per_shard - busy[s]) for s in self.owned)

    def busy(self, shard: int) -> int:
        """Slots of `shard` running a step or held for a run's next step."""
        return self._busy[shard]

    def own(self, shards: Iterable[int]) -> None:
        """Run steps only for `shards` from now on (newly owned ones are worth a claim)."""
        owned = frozenset(shards)
        if owned != self.owned:
            self._hungry.update(owned - self.owned)
            self.owned = owned
            self._changed.set()

    def resize(self, slots_per_shard: int) -> None:
        """Change the slots per shard; shrinking lets extra in-flight steps finish."""
        self.slots_per_shard = slots_per_shard
        self.wake_all()

    # -- the dispatcher's side --

    def wants(self, poll: bool) -> list[tuple[int, int]]:
        """(shard, free slots) to claim for. `poll`: ask every shard again, and free slots held
        too long for a replay that lags (a backlog, write failures)."""
        if poll:
            self._hungry = set(self.shards)
            if self._held:
                self._release_stale_holds()
        cap = self.slots_per_shard
        busy = self._busy
        owned = self.owned
        return [(s, cap - busy[s]) for s in sorted(self._hungry) if busy[s] < cap and s in owned]

    def claimed(self, wants: Sequence[tuple[int, int]], got: dict[int, int]) -> None:
        """A claim for `wants` got `got` tasks per shard: a shard that got fewer has no more."""
        for shard, wanted in wants:
            if got.get(shard, 0) < wanted:
                self._hungry.discard(shard)

    async def wait(self, timeout_s: float) -> None:
        """Sleep until a slot or a shard's queue may have changed, or `timeout_s`."""
        await sleep_until(self._changed, timeout_s)

    def interrupt(self) -> None:
        """Wake the dispatcher without a change (it is stopping)."""
        self._changed.set()

    # -- a step's side --

    def occupy(self, shard: int) -> None:
        self._busy[shard] += 1

    def free(self, shard: int) -> None:
        """A step gave its slot back (released, retried, drained)."""
        self._busy[shard] -= 1
        if shard in self._hungry:
            self._changed.set()

    def hold(self, rid: int, pos: int, shard: int) -> None:
        """A step finished: keep its slot for its run's next step, until `release`."""
        if pos in self._held.get(rid, {}):
            self.release(rid, pos)  # an older attempt of it (a retry in place) still holds one
        self._held.setdefault(rid, {})[pos] = (shard, time.monotonic())

    def reserve(self, rid: int) -> int:
        """A replay commit that may claim run `rid`'s next steps is about to start: keep the
        slots the run holds for it, however long it takes (until `run_next` or `release`).
        Returns how many it holds; 0 if its shard is not one we run steps for (handed over)."""
        held = self._held.get(rid)
        if not held:
            return 0
        shard = next(iter(held.values()))[0]
        if shard not in self.owned:
            return 0
        self._reserved.add(rid)
        return len(held)

    def run_next(self, rid: int, n: int) -> None:
        """The replay commit claimed `n` tasks for the slots run `rid` holds (its next steps, or
        the head of its shard's queue): they pass to the runner, whose `start` occupies each
        again. Nothing else can take them in between (no await), and they never look free: no
        wake, no hungry shard."""
        held = self._held.get(rid)
        if not held:
            return
        for pos in list(held)[:n]:
            shard, _ = held.pop(pos)
            self._busy[shard] -= 1
        if not held:
            del self._held[rid]
            self._reserved.discard(rid)

    def release(self, rid: int, pos: int | None = None) -> None:
        """Free the slots held for run `rid` (only the one of step `pos`, if given)."""
        if pos is None:
            self._reserved.discard(rid)
        held = self._held.get(rid)
        if not held:
            return
        if pos is None:
            slots = list(held.values())
            del self._held[rid]
        else:
            slot = held.pop(pos, None)
            if slot is None:
                return
            slots = [slot]
            if not held:
                del self._held[rid]
        for shard, _ in slots:
            self._busy[shard] -= 1
            self._hungry.add(shard)
        self._changed.set()

    def _release_stale_holds(self) -> None:
        cutoff = time.monotonic() - HOLD_MAX_S
        stale = [
            (rid, pos)
            for rid, held in self._held.items()
            for pos, (_, since) in held.items()
            if since < cutoff and rid not in self._reserved
        ]
        for rid, pos in stale:
            self.release(rid, pos)

    # -- tasks became claimable --

    def wake(self, shards: Iterable[int]) -> None:
        """Tasks may be claimable in `shards` (queued by a replay, due after a wait)."""
        self._hungry.update(shards)
        self._changed.set()

    def wake_all(self) -> None:
        """Tasks may be claimable in any shard (unparked, reclaimed from a dead engine)."""
        self._hungry = set(self.shards)
        self._changed.set()
