"""Upkeep: the engine's clocks besides dispatch, flush and replay.

    timers     fires durable sleeps (and wait timeouts) that are due, and hands their journal
               entries to the replayer; starts the runs of due schedule ticks
    heartbeat  proves we are alive, notices a newer epoch, reclaims dead engines' tasks, cancels
               in-flight steps whose run is no longer running, and ticks the shard leases
               (engine/leases.py): more often while shards change hands
    limits     unparks tasks that waited for their quotas (engine/limits/), stores the limits
               snapshot for `executor stats`, closes idle shared clients (resources.py)

And at start, `reclaim_dead_local_engines`: the claims of engines on this host whose process is
gone come back at once, not after a whole lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

from executor import codec, config, errors, resources
from executor.engine.health import WriteHealth
from executor.engine.leases import Leases
from executor.engine.limits import Limiter
from executor.engine.recorder import Recorder
from executor.engine.runner import CancelReason, StepRunner
from executor.engine.slots import SlotPool
from executor.engine.wakeup import sleep_until
from executor.schedules import ScheduleSpec
from executor.store import engines
from executor.store import repository as repo
from executor.store import schedules as stored_schedules
from executor.store.database import Store
from executor.vocabulary import NEWER_EPOCH, Delivery, EngineState

log = logging.getLogger("executor.engine")

TIMER_BATCH = 1000
LIMITS_TICK_S = 0.05  # how often tasks parked for a rate are let back in, when limits are set


class Upkeep:
    """The `timers`, `heartbeat` and `limits` loops."""

    def __init__(
        self,
        db: Store,
        engine_id: int,
        epoch: int,
        cfg: config.EngineConfig,
        pool: SlotPool,
        runner: StepRunner,
        recorder: Recorder,
        limiter: Limiter,
        shared: resources.Resources,
        health: WriteHealth,
        stopping: asyncio.Event,
        *,
        deliver: Callable[[list[Delivery]], None],
        request_stop: Callable[[str], None],
        poll_interval_s: Callable[[], float],
        sample: Callable[[], Awaitable[None]] | None,
        wake_replay: Callable[[], None],
        leases: Leases,
        schedules: Sequence[ScheduleSpec] | None = None,
    ) -> None:
        self._db = db
        self._leases = leases
        self._engine_id = engine_id
        self._epoch = epoch
        self._cfg = cfg
        self._pool = pool
        self._runner = runner
        self._recorder = recorder
        self._limiter = limiter
        self._resources = shared
        self._health = health
        self._stopping = stopping
        self._deliver = deliver
        self._request_stop = request_stop
        self._sample = sample
        self._poll_interval_s = poll_interval_s  # the engine's, which SIGHUP may change
        self._timer_wake = asyncio.Event()
        self._wake_replay = wake_replay
        # [schedules.*] still to write to the file (at start, then after a reload); None: leave
        # the file's schedules alone (an engine without a config).
        self._schedules = None if schedules is None else tuple(schedules)
        # The heartbeat outlives the drain: it stops last, after the final flush.
        self._heartbeat_stop = asyncio.Event()

    def wake_timers(self) -> None:
        """New sleeps were queued (one may be due before the next poll), or we are stopping."""
        self._timer_wake.set()

    def stop_heartbeat(self) -> None:
        self._heartbeat_stop.set()

    def set_schedules(self, specs: Sequence[ScheduleSpec]) -> None:
        """A reloaded [schedules.*] (SIGHUP): written to the file by the timers loop."""
        self._schedules = tuple(specs)
        self._timer_wake.set()

    async def timers(self) -> None:
        first = True
        while not self._stopping.is_set():
            if not first:
                await sleep_until(self._timer_wake, self._poll_interval_s())
            first = False
            if self._stopping.is_set():
                return
            try:
                fired = await self._db.run(
                    repo.fire_timers, time.time(), TIMER_BATCH, self._leases.fence()
                )
                await self._apply_schedules()
                started = await self._db.run(stored_schedules.fire_due, time.time())
            except errors.StoreError as exc:
                self._health.failed(exc, "timers")
                continue
            self._health.ok("timers")
            self._deliver(fired)
            if started:
                log.info("schedules started %d runs: %s", len(started), ", ".join(started[:10]))
                self._wake_replay()

    async def _apply_schedules(self) -> None:
        specs, self._schedules = self._schedules, None
        if specs is None:
            return
        try:
            gone = await self._db.run(stored_schedules.reconcile, specs, time.time())
        except errors.StoreError:
            self._schedules = specs  # tried again at the next tick
            raise
        log.info(
            "schedules from the config: %s%s",
            ", ".join(s.name for s in specs) or "none",
            f"; removed {', '.join(gone)}" if gone else "",
        )

    async def heartbeat(self) -> None:
        next_beat = time.monotonic() + self._cfg.heartbeat_interval_s
        while not self._heartbeat_stop.is_set():
            wait_s = max(0.0, min(next_beat - time.monotonic(), self._leases.next_tick_s()))
            await sleep_until(self._heartbeat_stop, wait_s, clear=False)
            if self._heartbeat_stop.is_set():
                return
            if time.monotonic() < next_beat:
                # Shards are changing hands: a lease tick alone, not a whole heartbeat.
                await self._tick_leases()
                continue
            next_beat = time.monotonic() + self._cfg.heartbeat_interval_s
            draining = self._stopping.is_set()
            try:
                hb = await self._db.run(
                    engines.heartbeat,
                    self._engine_id,
                    EngineState.DRAINING if draining else EngineState.RUNNING,
                    time.time(),
                    self._cfg.lease_s,
                )
            except errors.StoreError as exc:
                self._health.failed(exc, "heartbeat")
                continue
            self._health.ok("heartbeat")
            if self._sample is not None:
                await self._sample()
            if hb.epoch != self._epoch and not self._stopping.is_set():
                log.warning("epoch moved from %d to %d: draining", self._epoch, hb.epoch)
                self._request_stop(NEWER_EPOCH)
            if hb.reclaimed:
                log.warning("reclaimed %d tasks from engines whose lease ran out", hb.reclaimed)
                self._pool.wake_all()
            for key in hb.orphaned:
                self._runner.cancel(key, CancelReason.RUN_CANCELLED)
            await self._tick_leases()

    async def _tick_leases(self) -> None:
        try:
            await self._leases.tick()
        except errors.StoreError as exc:
            self._health.failed(exc, "leases")
        else:
            self._health.ok("leases")

    async def limits(self) -> None:
        next_sync = 0.0
        while not self._stopping.is_set():
            tick_s = LIMITS_TICK_S if self._limiter.active else 1.0
            await sleep_until(self._stopping, tick_s, clear=False)
            now = time.time()
            self._limiter.tick(now)
            idle = self._resources.sweep()
            if idle:
                await self._resources.aclose_entries(idle)
            if self._limiter.active and time.monotonic() >= next_sync:
                next_sync = time.monotonic() + self._cfg.heartbeat_interval_s
                snapshot = codec.encode(self._limiter.snapshot(time.time()), what="limits snapshot")
                try:
                    parked = await self._db.run(engines.sync_limits, self._engine_id, snapshot, now)
                except errors.StoreError as exc:
                    log.warning("could not store the limits snapshot: %s", exc)
                else:
                    self._limiter.reconcile(parked, now)
            self._recorder.send_unparks()


async def reclaim_dead_local_engines(db: Store, engine_id: int) -> None:
    """Take back the claims of engines on this host whose process is gone (SIGKILL, power cut):
    they cannot be holding them, so there is no need to wait a whole lease."""
    host = socket.gethostname()
    dead = [
        other
        for other, pid in await db.run(engines.engines_on_host, host)
        if other != engine_id and not pid_alive(pid)
    ]
    if dead:
        released = await db.run(engines.reclaim_from, dead)
        log.warning(
            "engines %s on this host are gone; %d of their tasks are back in the queue",
            dead,
            released,
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
