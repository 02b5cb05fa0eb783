"""The engine: wires the pieces that run workflows from one database file, starts them, watches
them, and stops them in order.

Work moves through a pipeline of named background tasks, each batching one kind of database
transaction (a transaction is one thread hop, see store.database), each owned by one piece:

    dispatch  (dispatch.py)  claims queued tasks for shards with free slots (slots.py)
    (steps)   (runner.py)    worker tasks run claimed steps, each holding one slot of its shard
    flush     (recorder.py)  records finished steps and unparks many per transaction
    replay    (replayer.py)  feeds recorded results to workflow code; commits its next steps
    timers    (upkeep.py)    fires durable sleeps that are due
    heartbeat (upkeep.py)    liveness, epoch, reclaims; cancels steps of runs no longer running;
                             ticks the shard leases (leases.py): which shards we work on
    limits    (upkeep.py)    quota unparks (limits/), the limits snapshot, idle shared clients
    lag       (lag.py)       warns when something blocks the event loop for too long

Each piece is the only writer of its own state and hears from the others through the calls and
callbacks it is given here. If any background task dies, the engine stops and `wait()` raises:
nothing runs half-supervised.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from executor import config, errors, registry, resources
from executor.engine import lag
from executor.engine.cache import HydrationCache
from executor.engine.dispatch import Dispatcher, claim_tokens
from executor.engine.health import WriteHealth
from executor.engine.leases import Leases, split_limits
from executor.engine.limits import Limiter, WakeTimer
from executor.engine.recorder import Recorder
from executor.engine.replayer import Replayer
from executor.engine.runner import StepRunner
from executor.engine.slots import SlotPool
from executor.engine.upkeep import Upkeep, pid_alive, reclaim_dead_local_engines
from executor.schedules import ScheduleSpec
from executor.store import engines, payloads
from executor.store import samples as stored_samples
from executor.store.database import Store, open_database
from executor.telemetry import Telemetry
from executor.vocabulary import EngineState, NextClaim, ReplayArgs

log = logging.getLogger("executor.engine")
# The counters of the runner and the replayer, all zero before start.
# At most this share of the time goes to counting the queues for the samples (see sample()).
QUEUE_COUNT_SHARE = 0.01
_COUNTERS = (
    "steps",
    "retries",
    "replays",
    "full_replays",
    "finished",
    "replay_args_changed",
    "claimed_in_commit",
    "heads_in_commit",
)


class EngineCrashed(errors.ExecutorError):
    """A background task of the engine died; the engine stopped."""


class _Pieces:
    """What a started engine is made of (built once the database is open)."""

    def __init__(self, engine: Engine, db: Store) -> None:
        cfg = engine.cfg
        poll_interval_s = engine.poll_interval  # read on every pass: SIGHUP may change it
        self.pool = SlotPool(db.shards, engine.concurrency)
        next_token = claim_tokens(engine.engine_id)
        self.wakes = WakeTimer(self.pool.wake)
        self.health = WriteHealth(cfg.write_failure_limit_s)
        self.replayer = Replayer(
            db,
            engine.registry,
            self.pool,
            self.health,
            engine.stopping,
            hydration=engine.hydration,
            instances=cfg.instance_cache_size,
            payload_limit=cfg.payload_limit_bytes,
            replay_args=ReplayArgs(cfg.replay_args),
            poll_interval_s=poll_interval_s,
            sleeps_queued=lambda: self.upkeep.wake_timers(),
            on_finish=engine.on_finish,
            fence=lambda: self.leases.fence(),
            # A run's next steps claimed in the commit that queues them, as the dispatcher would.
            claim_next=lambda: NextClaim(
                engine.engine_id, engine.epoch, next_token(), engine.limiter.active, next_token()
            ),
            start=lambda c: self.runner.start(c),
        )
        self.recorder = Recorder(
            db,
            self.pool,
            engine.limiter,
            self.health,
            deliver=self.replayer.deliver,
            flush_interval_s=cfg.flush_interval_s,
            poll_interval_s=poll_interval_s,
            telemetry=engine.telemetry,
            fence=lambda: self.leases.fence(),
        )
        self.runner = StepRunner(
            engine.registry,
            self.pool,
            engine.limiter,
            self.wakes,
            record=self.recorder.add,
            unparks_ready=self.recorder.send_unparks,
            payload_limit=cfg.payload_limit_bytes,
            # PostgreSQL keeps large payloads in its table: no folder (store/payloads.py).
            payload_folder=payloads.folder(db.path) if db.dialect == "sqlite" else None,
            telemetry=engine.telemetry,
            payload_compress_min=engine.db_cfg.compress_min_bytes,
        )
        self.dispatcher = Dispatcher(
            db,
            engine.engine_id,
            engine.epoch,
            self.pool,
            self.runner,
            engine.limiter,
            self.health,
            engine.stopping,
            request_stop=engine.request_stop,
            poll_interval_s=poll_interval_s,
            fence=lambda: self.leases.fence(),
            next_token=next_token,
        )
        self.leases = Leases(
            db,
            engine.engine_id,
            cfg,
            self.pool,
            self.runner,
            engine.stopping,
            unflushed=lambda: self.recorder.unflushed,
            forget=self.replayer.forget,
            share_limits=engine.share_limits,
        )
        self.upkeep = Upkeep(
            db,
            engine.engine_id,
            engine.epoch,
            cfg,
            self.pool,
            self.runner,
            self.recorder,
            engine.limiter,
            engine.resources,
            self.health,
            engine.stopping,
            deliver=self.replayer.deliver,
            request_stop=engine.request_stop,
            poll_interval_s=poll_interval_s,
            sample=None if engine.telemetry is None else engine.sample,
            wake_replay=self.replayer.wake,
            leases=self.leases,
            schedules=engine.schedules,
        )


class Engine:
    """Runs workflows from one database file. Use `async with Engine(...)` or start()/stop()."""

    def __init__(
        self,
        cfg: config.EngineConfig | None = None,
        db_cfg: config.DatabaseConfig | None = None,
        *,
        reg: registry.Registry | None = None,
        on_finish: Callable[[str, str], None] | None = None,
        limits: Iterable[config.LimitSpec] = (),
        concurrency_keys: Mapping[str, int] | None = None,
        shared: resources.Resources | None = None,
        samples: bool = True,
        schedules: Sequence[ScheduleSpec] | None = None,
        takeover: bool = True,
    ) -> None:
        self.cfg = cfg or config.EngineConfig()
        self.db_cfg = db_cfg or config.DatabaseConfig()
        self.registry = reg or registry.default_registry
        self.on_finish = on_finish
        # False: refuse to start (EngineHeld) while another live engine works on the file,
        # instead of taking a new epoch that makes it drain (`executor run` without --takeover).
        self.takeover = takeover
        self.state = EngineState.NEW
        self.engine_id = 0
        self.epoch = 0
        self.concurrency = self.cfg.concurrency
        self.poll_interval_s = self.cfg.poll_interval_s
        self.db: Store | None = None
        self.fatal: BaseException | None = None
        self.stop_reason = ""
        self.stopping = asyncio.Event()  # set once: drain, then stop
        self.hydration = HydrationCache(
            self.cfg.hydration_cache_entries,
            self.cfg.hydration_cache_entry_max_bytes,
            self.cfg.hydration_cache_bytes,
        )
        # Quotas ([limits.*], concurrency keys) and the shared clients, closed when we drain.
        self._limit_specs = tuple(limits)
        self._limit_share = 1.0  # of every quota this engine enforces (leases.quota_share)
        self.limiter = Limiter(
            self._limit_specs, key_cap=self.cfg.concurrency_key_cap, key_caps=concurrency_keys
        )
        self.resources = shared if shared is not None else resources.default_registry
        # Metrics and the dashboard's samples ([metrics] samples); None: not counted at all.
        self.telemetry = Telemetry() if samples else None
        # [schedules.*] from the config, applied to the file at start; None: leave them alone.
        self.schedules = None if schedules is None else tuple(schedules)
        self._pieces: _Pieces | None = None
        self._queue_counts: stored_samples.QueueCounts | None = None
        self._count_queues_at = 0.0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lifecycle: asyncio.Task[None] | None = None

    # -- public lifecycle --

    async def start(self) -> None:
        """Open the database, take a new epoch and start working."""
        if self.state is not EngineState.NEW:
            raise errors.ExecutorError("an Engine can be started once")
        self.limiter.check_steps(self.registry.steps.values())  # a typo'd limit: refuse to start
        self.db = db = await open_database(
            self.db_cfg, shards=self.cfg.shards, verify=True, lease_s=self.cfg.lease_s
        )
        try:
            self.engine_id, self.epoch = await db.run(
                engines.register_engine,
                os.getpid(),
                socket.gethostname(),
                time.time(),
                None if self.takeover else engines.LiveCheck(self.cfg.lease_s, pid_alive),
            )
            await reclaim_dead_local_engines(db, self.engine_id)
            # Limit counts start empty: whatever an earlier engine parked may be claimed again.
            await db.run(engines.unpark_all)
        except BaseException as exc:
            await db.close()  # an open connection's thread would keep the process alive (issue 9)
            if isinstance(exc, errors.EngineHeld):
                raise errors.EngineHeld(f"{db.path}: {exc.message}") from None
            raise
        self._pieces = p = _Pieces(self, db)
        try:
            await p.leases.start()  # our shards, before the first claim
        except BaseException:
            try:
                await db.run(engines.stop_engine, self.engine_id, time.time())
            finally:
                await db.close()
            raise
        self.state = EngineState.RUNNING
        log.info(
            "engine %d started on %s: epoch %d, %d shards x %d slots; owns %d of the shards",
            self.engine_id,
            db.path,
            self.epoch,
            db.shards,
            self.concurrency,
            len(p.leases.held),
        )
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "dispatch": p.dispatcher.run,
            "flush": p.recorder.run,
            "replay": p.replayer.run,
            "timers": p.upkeep.timers,
            "heartbeat": p.upkeep.heartbeat,
            "lag": lambda: lag.monitor(self.stopping),
            "limits": p.upkeep.limits,
        }
        for name, fn in loops.items():
            self._tasks[name] = asyncio.create_task(fn(), name=f"executor.{name}")
        self._lifecycle = asyncio.create_task(self._supervise(), name="executor.lifecycle")

    def request_stop(self, reason: str = "stop requested") -> None:
        """Begin a graceful drain (safe in a handler set with loop.add_signal_handler)."""
        if self.stopping.is_set():
            return
        self.stop_reason = reason
        self.stopping.set()
        if self._pieces is not None:
            self._pieces.pool.interrupt()
            self._pieces.replayer.wake()
            self._pieces.upkeep.wake_timers()

    async def wait(self) -> None:
        """Wait until the engine has stopped; raise EngineCrashed if a fault stopped it."""
        if self._lifecycle is None:
            return
        await asyncio.shield(self._lifecycle)
        if self.fatal is not None:
            raise EngineCrashed(f"engine stopped: {self.fatal!r}") from self.fatal

    async def stop(self, reason: str = "stop requested") -> None:
        """Drain (in-flight steps get drain_timeout_s to finish) and stop."""
        self.request_stop(reason)
        await self.wait()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop("leaving the engine's context")

    @property
    def draining(self) -> bool:
        return self.stopping.is_set()

    # -- live settings (SIGHUP) and gauges --

    def set_concurrency(self, slots_per_shard: int) -> None:
        """Change the slots per shard live; shrinking lets extra in-flight steps finish."""
        self.concurrency = slots_per_shard
        if self._pieces is not None:
            self._pieces.pool.resize(slots_per_shard)

    def set_schedules(self, specs: Sequence[ScheduleSpec]) -> None:
        """Apply a reloaded [schedules.*] live (SIGHUP)."""
        self.schedules = tuple(specs)
        if self._pieces is not None:
            self._pieces.upkeep.set_schedules(self.schedules)

    def poll_interval(self) -> float:
        return self.poll_interval_s

    def set_poll_interval(self, seconds: float) -> None:
        """Change how often the loops poll the database live (each reads it on every pass)."""
        self.poll_interval_s = seconds

    def set_limits(
        self,
        specs: Iterable[config.LimitSpec],
        *,
        key_cap: int | None = None,
        key_caps: Mapping[str, int] | None = None,
    ) -> None:
        """Apply new [limits.*] and concurrency-key caps live (SIGHUP); counts carry over."""
        self._limit_specs = tuple(specs)
        self.limiter.configure(
            split_limits(self._limit_specs, self._limit_share),
            key_cap=key_cap,
            key_caps=key_caps,
            now=time.time(),
        )
        if self._pieces is not None:
            self._pieces.recorder.send_unparks()

    def share_limits(self, share: float) -> None:
        """Several daemons share the database: enforce `share` of every [limits.*] quota (the
        fraction of the shards we own), so that together they stay within it."""
        if share == self._limit_share:
            return
        self._limit_share = share
        if self._limit_specs:
            self.limiter.configure(split_limits(self._limit_specs, share), now=time.time())
            if self._pieces is not None:
                self._pieces.recorder.send_unparks()

    def limits_snapshot(self) -> dict[str, Any]:
        """Each limit's configured and effective rates, use, waiters and 429s (for stats)."""
        return self.limiter.snapshot(time.time())

    @property
    def counters(self) -> dict[str, int]:
        """Steps run, retries, replays (full ones too) and runs finished, since start."""
        p = self._pieces
        if p is None:
            return dict.fromkeys(_COUNTERS, 0)
        return {**p.runner.counters, **p.replayer.counters}

    def load(self) -> dict[str, int]:
        """A cheap snapshot of what the engine holds now (for STATUS= lines and logs)."""
        p = self._pieces
        return {
            "in_flight": 0 if p is None else p.runner.in_flight,
            "slots": 0 if p is None else p.pool.capacity,
            "unflushed": 0 if p is None else p.recorder.unflushed,
            "live_workflows": 0 if p is None else len(p.replayer.instances),
            # Shards owned by lease, and results refused since start because their shard had
            # gone to another engine (a pause past the lease: docs/SCALE-OUT.md).
            "shards_owned": 0 if p is None else len(p.leases.held),
            "results_refused": 0 if p is None else p.recorder.refused,
            **self.counters,
            **self.limiter.counters,
        }

    async def sample(self) -> None:
        """Store the dashboard's plots and the metrics snapshot (telemetry.py); best effort."""
        if self.db is None or self.telemetry is None or self._pieces is None:
            return
        now = time.time()
        limits = self.limits_snapshot() if self.limiter.active else None
        sample, snapshot = self.telemetry.sample(self.engine_id, now, self.load(), limits)
        # The queue counts are scans: with a large backlog they would take a real share of the
        # database thread at every heartbeat. Counted again only once their last cost is under
        # QUEUE_COUNT_SHARE of the time since; the sample carries the last counts meanwhile.
        counts = self._queue_counts if now < self._count_queues_at else None
        try:
            used = await self.db.run(
                stored_samples.record, sample, self.db.shards, snapshot, counts
            )
        except errors.StoreError as exc:
            log.debug("could not write the metrics sample: %s", exc)
            return
        if counts is None:
            self._queue_counts = used
            self._count_queues_at = now + used.cost_s / QUEUE_COUNT_SHARE

    # -- supervision and the ordered shutdown --

    async def _supervise(self) -> None:
        drain_wait = asyncio.create_task(self.stopping.wait(), name="executor.drain-wait")
        pending = {drain_wait, *self._tasks.values()}
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is drain_wait:
                continue
            exc = None if task.cancelled() else task.exception()
            if exc is not None or not self.draining:
                self.fatal = exc or RuntimeError(f"{task.get_name()} returned unexpectedly")
                log.critical(
                    "background task %s died; stopping the engine",
                    task.get_name(),
                    exc_info=exc,
                )
                self.request_stop(f"{task.get_name()} died")
        await drain_wait
        await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop claiming, let steps finish, write what they produced, release what is left."""
        assert self.db is not None and self._pieces is not None
        p = self._pieces
        self.state = EngineState.DRAINING
        started = time.monotonic()
        log.info(
            "draining (%s): stopped claiming; %d steps in flight",
            self.stop_reason,
            p.runner.in_flight,
        )
        for name in ("dispatch", "replay", "timers", "lag", "limits"):
            await self._join(name, timeout_s=5.0)
        p.wakes.cancel()
        await p.runner.drain(self.cfg.drain_timeout_s)
        await self.resources.aclose()  # no step uses a shared client any more
        p.recorder.close()
        await self._join("flush", timeout_s=max(10.0, self.cfg.write_failure_limit_s))
        p.upkeep.stop_heartbeat()
        await self._join("heartbeat", timeout_s=5.0)
        p.leases.stop()
        try:
            released = await self.db.run(engines.stop_engine, self.engine_id, time.time())
            if released:
                log.info("released %d unfinished tasks to the queue", released)
        except errors.StoreError as exc:
            # Our claims come back after the lease, when another engine reclaims them.
            log.error("could not release claims: %s", exc)
        p.replayer.close()
        await self.db.close()
        self.state = EngineState.STOPPED
        log.info(
            "engine %d stopped after %.2fs of draining", self.engine_id, time.monotonic() - started
        )

    async def _join(self, name: str, timeout_s: float) -> None:
        task = self._tasks[name]
        if not task.done():
            done, _ = await asyncio.wait([task], timeout=timeout_s)
            if not done:
                log.error("%s did not stop within %.0fs; cancelling it", name, timeout_s)
                task.cancel()
                await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None and self.fatal is None:
            self.fatal = task.exception()
