"""The engine: claims tasks into per-shard slot pools, runs steps, records results in groups,
and replays workflows to turn results into new steps.

Work moves through a pipeline of named background tasks, each batching one kind of database
transaction (a transaction is one thread hop, see store.database):

    dispatch  claims queued tasks for shards with free slots, oldest workflow first
    (steps)   one asyncio task per claimed step, holding one slot of its shard
    flush     records finished steps many per transaction (group commit)
    replay    feeds recorded results to workflow code; commits the steps it asks for next
    timers    fires durable sleeps that are due
    heartbeat proves we are alive, notices a newer epoch, reclaims dead engines' tasks
    lag       warns when something blocks the event loop for too long (engine/lag.py)
    limits    unparks tasks that waited for their quotas (engine/limits/); stores the limits
              snapshot for `executor stats`; closes idle shared clients (resources.py)

If any of them dies, the engine stops and `wait()` raises: nothing runs half-supervised.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from executor import codec, config, errors, registry, resources
from executor.engine import lag
from executor.engine.cache import HydrationCache, InstanceCache
from executor.engine.instance import RunInfo, WorkflowInstance
from executor.engine.limits import Limiter, Ticket, WakeTimer
from executor.store import payloads, samples
from executor.store import repository as repo
from executor.store.database import Database
from executor.store.history import error_line
from executor.telemetry import Telemetry
from executor.vocabulary import (
    NEWER_EPOCH,
    Claimed,
    Delivery,
    EngineState,
    Outcome,
    OutcomeKind,
    ReplayOutput,
    RunSnapshot,
    RunState,
    StepKind,
    StepState,
)

log = logging.getLogger("executor.engine")

REPLAY_BATCH = 512  # runs per replay transaction
REPLAY_POLL_LIMIT = 4 * REPLAY_BATCH  # replay entries read per poll
HOLD_MAX_S = 1.0  # longest a finished step's slot waits for its run's next step
TIMER_BATCH = 1000
FLUSH_RETRY_MAX_S = 2.0
LIMITS_TICK_S = 0.05  # how often tasks parked for a rate are let back in, when limits are set
_CANCELLED_RUN = "run-cancelled"


class EngineCrashed(errors.ExecutorError):
    """A background task of the engine died; the engine stopped."""


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
    ) -> None:
        self.cfg = cfg or config.EngineConfig()
        self.db_cfg = db_cfg or config.DatabaseConfig()
        self.registry = reg or registry.default_registry
        self.on_finish = on_finish
        self.state = EngineState.NEW
        self.engine_id = 0
        self.epoch = 0
        self.concurrency = self.cfg.concurrency
        self.poll_interval_s = self.cfg.poll_interval_s
        self.db: Database | None = None
        self.fatal: BaseException | None = None
        self.stop_reason = ""
        self.hydration = HydrationCache(
            self.cfg.hydration_cache_entries, self.cfg.hydration_cache_entry_max_bytes
        )
        self.instances = InstanceCache(self.cfg.instance_cache_size, self._close_instance)
        self._shards: range = range(0)
        self._busy: list[int] = []
        self._hungry: set[int] = set()
        # Slots kept for a run whose step just finished, until its replay has queued the next
        # step (run -> {pos: (shard, since)}). Freed at once, a slot would go to a newer
        # workflow's queued step before this run's next step exists: FIFO completion would
        # suffer, and the run would wait a whole step time for the next free slot.
        self._held: dict[int, dict[int, tuple[int, float]]] = {}
        self._inflight: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._cancel_reasons: dict[tuple[int, int], str] = {}
        self._results: list[Outcome] = []
        self._events: dict[int, list[Delivery]] = {}
        self._token = 0
        self._rng = random.Random()
        self._draining = asyncio.Event()
        self._flush_done = False
        self._dispatch_wake = asyncio.Event()
        self._flush_wake = asyncio.Event()
        self._replay_wake = asyncio.Event()
        self._timer_wake = asyncio.Event()
        self._heartbeat_stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lifecycle: asyncio.Task[None] | None = None
        # Loop name -> when its writes started failing (monotonic): one outage, one error log.
        self._write_failing: dict[str, float] = {}
        self.counters = {"steps": 0, "retries": 0, "replays": 0, "full_replays": 0, "finished": 0}
        # Quotas ([limits.*], concurrency keys) and the shared clients, closed when we drain.
        self.limiter = Limiter(
            limits, key_cap=self.cfg.concurrency_key_cap, key_caps=concurrency_keys
        )
        self.resources = shared if shared is not None else resources.default_registry
        self._wakes = WakeTimer(self._wake_shards)
        # Metrics and the dashboard's samples ([metrics] samples); None: not counted at all.
        self.telemetry = Telemetry() if samples else None

    # -- public lifecycle --

    async def start(self) -> None:
        """Open the database, take a new epoch and start working."""
        if self.state is not EngineState.NEW:
            raise errors.ExecutorError("an Engine can be started once")
        self.limiter.check_steps(self.registry.steps.values())  # a typo'd limit: refuse to start
        self.db = await Database.open(self.db_cfg, shards=self.cfg.shards)
        self._shards = range(self.db.shards)
        self._busy = [0] * self.db.shards
        self._hungry = set(self._shards)
        self.engine_id, self.epoch = await self.db.run(
            repo.register_engine, os.getpid(), socket.gethostname(), time.time()
        )
        self._token = self.engine_id << 32
        await self._reclaim_dead_local_engines()
        # Limit counts start empty: whatever an earlier engine parked may be claimed again.
        await self.db.run(repo.unpark_all)
        self.state = EngineState.RUNNING
        log.info(
            "engine %d started on %s: epoch %d, %d shards x %d slots",
            self.engine_id,
            self.db.path,
            self.epoch,
            self.db.shards,
            self.concurrency,
        )
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "dispatch": self._dispatch_loop,
            "flush": self._flush_loop,
            "replay": self._replay_loop,
            "timers": self._timer_loop,
            "heartbeat": self._heartbeat_loop,
            "lag": lambda: lag.monitor(self._draining),
            "limits": self._limits_loop,
        }
        for name, fn in loops.items():
            self._tasks[name] = asyncio.create_task(fn(), name=f"executor.{name}")
        self._lifecycle = asyncio.create_task(self._supervise(), name="executor.lifecycle")

    async def _reclaim_dead_local_engines(self) -> None:
        # An engine on this host whose process is gone (SIGKILL, power cut) cannot be holding
        # its claims: take them back now instead of waiting a whole lease.
        assert self.db is not None
        host = socket.gethostname()
        dead = [
            engine_id
            for engine_id, pid in await self.db.run(repo.engines_on_host, host)
            if engine_id != self.engine_id and not _pid_alive(pid)
        ]
        if dead:
            released = await self.db.run(repo.reclaim_from, dead)
            log.warning(
                "engines %s on this host are gone; %d of their tasks are back in the queue",
                dead,
                released,
            )

    def request_stop(self, reason: str = "stop requested") -> None:
        """Begin a graceful drain (safe in a handler set with loop.add_signal_handler)."""
        if not self._draining.is_set():
            self.stop_reason = reason
            self._draining.set()
            for event in (self._dispatch_wake, self._replay_wake, self._timer_wake):
                event.set()

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
        return self._draining.is_set()

    def set_concurrency(self, slots_per_shard: int) -> None:
        """Change the slots per shard live; shrinking lets extra in-flight steps finish."""
        self.concurrency = slots_per_shard
        self._hungry = set(self._shards)
        self._dispatch_wake.set()

    def set_poll_interval(self, seconds: float) -> None:
        self.poll_interval_s = seconds

    def set_limits(
        self,
        specs: Iterable[config.LimitSpec],
        *,
        key_cap: int | None = None,
        key_caps: Mapping[str, int] | None = None,
    ) -> None:
        """Apply new [limits.*] and concurrency-key caps live (SIGHUP); counts carry over."""
        self.limiter.configure(specs, key_cap=key_cap, key_caps=key_caps, now=time.time())
        self._send_unparks()

    def limits_snapshot(self) -> dict[str, Any]:
        """Each limit's configured and effective rates, use, waiters and 429s (for stats)."""
        return self.limiter.snapshot(time.time())

    def load(self) -> dict[str, int]:
        """A cheap snapshot of what the engine holds now (for STATUS= lines and logs)."""
        return {
            "in_flight": len(self._inflight),
            "slots": self.concurrency * len(self._shards),
            "unflushed": len(self._results),
            "live_workflows": len(self.instances),
            **self.counters,
            **self.limiter.counters,
        }

    # -- supervision and the ordered shutdown --

    async def _supervise(self) -> None:
        drain_wait = asyncio.create_task(self._draining.wait(), name="executor.drain-wait")
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
        assert self.db is not None
        self.state = EngineState.DRAINING
        started = time.monotonic()
        log.info(
            "draining (%s): stopped claiming; %d steps in flight",
            self.stop_reason,
            len(self._inflight),
        )
        for name in ("dispatch", "replay", "timers", "lag", "limits"):
            await self._join(name, timeout_s=5.0)
        self._wakes.cancel()
        if self._inflight:
            _, late = await asyncio.wait(
                list(self._inflight.values()), timeout=self.cfg.drain_timeout_s
            )
            if late:
                log.warning(
                    "drain timeout: cancelling %d steps; they go back to the queue", len(late)
                )
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=5.0)
        await self.resources.aclose()  # no step uses a shared client any more
        self._flush_done = True
        self._flush_wake.set()
        await self._join("flush", timeout_s=max(10.0, self.cfg.write_failure_limit_s))
        self._heartbeat_stop.set()
        await self._join("heartbeat", timeout_s=5.0)
        try:
            released = await self.db.run(repo.stop_engine, self.engine_id, time.time())
            if released:
                log.info("released %d unfinished tasks to the queue", released)
        except errors.StoreError as exc:
            # Our claims come back after the lease, when another engine reclaims them.
            log.error("could not release claims: %s", exc)
        self.instances.clear()
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

    @staticmethod
    async def _wait(event: asyncio.Event, timeout_s: float, *, clear: bool = True) -> None:
        if not event.is_set():
            try:
                async with asyncio.timeout(timeout_s):
                    await event.wait()
            except TimeoutError:
                pass
        if clear:
            event.clear()

    # -- dispatch: claim tasks and run steps --

    async def _dispatch_loop(self) -> None:
        assert self.db is not None
        next_poll = 0.0
        while not self._draining.is_set():
            now = time.monotonic()
            poll = now >= next_poll
            if poll:
                next_poll = now + self.poll_interval_s
                self._hungry = set(self._shards)
                if self._held:
                    self._release_stale_holds()
            cap = self.concurrency
            wants = [(s, cap - self._busy[s]) for s in sorted(self._hungry) if self._busy[s] < cap]
            if wants or poll:
                self._token += 1
                try:
                    claimed = await self.db.run(
                        repo.claim,
                        self.engine_id,
                        self.epoch,
                        self._token,
                        wants,
                        time.time(),
                        self.limiter.active,
                    )
                except errors.StoreError as exc:
                    self._write_failed(exc, "dispatch")
                    claimed = []  # try again at the next poll
                else:
                    self._write_ok("dispatch")
                if claimed is None:
                    log.warning("epoch moved past ours (%d): draining", self.epoch)
                    self.request_stop(NEWER_EPOCH)
                    return
                got: dict[int, int] = {}
                for c in claimed:
                    got[c.shard] = got.get(c.shard, 0) + 1
                    self._spawn(c)
                for shard, wanted in wants:
                    if got.get(shard, 0) < wanted:
                        self._hungry.discard(shard)
            await self._wait(self._dispatch_wake, max(0.0, next_poll - time.monotonic()))

    def _spawn(self, c: Claimed) -> None:
        self._busy[c.shard] += 1
        key = (c.run_rid, c.pos)
        # Unnamed: a name per step costs a string and a call, and the step's own frames say
        # which step it is in any traceback.
        self._inflight[key] = asyncio.create_task(self._run_step(c))

    async def _run_step(self, c: Claimed) -> None:
        outcome = None
        key = (c.run_rid, c.pos)
        began = time.monotonic()
        try:
            outcome = await self._execute(c)
        finally:
            del self._inflight[key]
            if outcome is not None and outcome.kind == OutcomeKind.DONE:
                self._held.setdefault(c.run_rid, {})[c.pos] = (c.shard, time.monotonic())
            else:
                self._busy[c.shard] -= 1
                if c.shard in self._hungry:
                    self._dispatch_wake.set()
            if outcome is not None:
                if outcome.kind == OutcomeKind.DONE and outcome.status == StepState.FAILED:
                    _log_step_failed(c, outcome)
                if self.telemetry is not None:
                    self.telemetry.outcome(c, outcome, time.monotonic() - began)
                self._results.append(outcome)
                self._flush_wake.set()

    def _release_held(self, rid: int, pos: int | None = None) -> None:
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
        self._dispatch_wake.set()

    def _release_stale_holds(self) -> None:
        # A replay that lags (backlog, write failures) must not keep slots idle for long.
        cutoff = time.monotonic() - HOLD_MAX_S
        stale = [
            (rid, pos)
            for rid, held in self._held.items()
            for pos, (_, since) in held.items()
            if since < cutoff
        ]
        for rid, pos in stale:
            self._release_held(rid, pos)

    async def _execute(self, c: Claimed) -> Outcome | None:
        try:
            st = self.registry.step(c.name)
        except errors.RegistryError as exc:
            return Outcome(
                OutcomeKind.DONE,
                c.run_rid,
                c.pos,
                c.token,
                StepState.FAILED,
                error=errors.describe(exc),
            )
        ticket: Ticket | None = None
        try:
            args = codec.decode(c.args)
            if st.types is not None:
                args = st.types.decode_args(args, f"arguments of step {c.name}")
            gate = None
            if st.limits or c.concurrency_key is not None:
                gate = await self.limiter.admit(c, st, args)
            if isinstance(gate, Outcome):
                return self._limit_wait(c, gate)  # not within its quotas now: holds no slot
            ticket = gate
            call = st.fn(*args) if st.is_async else asyncio.to_thread(st.fn, *args)
            if st.timeout_s is None:
                value = await call
            else:
                async with asyncio.timeout(st.timeout_s):
                    value = await call
            try:
                blob = codec.encode(
                    value, what=f"result of step {c.name}", limit=self.cfg.payload_limit_bytes
                )
            except errors.PayloadError as exc:
                # The same value would be refused on every attempt: fail now, no retries.
                return Outcome(
                    OutcomeKind.DONE,
                    c.run_rid,
                    c.pos,
                    c.token,
                    StepState.FAILED,
                    error=errors.describe(exc),
                )
            self.counters["steps"] += 1
            done = Outcome(OutcomeKind.DONE, c.run_rid, c.pos, c.token, StepState.SUCCEEDED, blob)
            if codec.is_immutable(value):
                done.value, done.has_value = value, True
            if len(blob) >= payloads.FILE_MIN_BYTES and self.db is not None:
                # A large result goes to its file (fsynced) here, off the database thread and
                # outside the write lock; the flush then only commits its row.
                done.stored = await asyncio.to_thread(
                    payloads.stage, payloads.folder(self.db.path), blob
                )
            return done
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or not task.cancelling():
                return self._failed(c, st, exc)  # raised by the step's own code
            if self._cancel_reasons.pop((c.run_rid, c.pos), None) == _CANCELLED_RUN:
                # Fenced away (the run is not running): this just deletes the task row.
                return Outcome(
                    OutcomeKind.DONE,
                    c.run_rid,
                    c.pos,
                    c.token,
                    StepState.FAILED,
                    error=errors.error_blob("Cancelled", "the run was cancelled"),
                )
            raise  # drain: the claim is released when the engine stops
        except errors.RateLimited as exc:
            delay = exc.retry_after if exc.retry_after is not None else 1.0
            # Slows the step's limits down, and gives it a staggered place after the delay.
            not_before = self.limiter.rate_limited(ticket, delay, time.time())
            self._wakes.at(not_before, c.shard)
            return Outcome(
                OutcomeKind.RELEASE,
                c.run_rid,
                c.pos,
                c.token,
                error=errors.describe(exc),
                not_before=not_before,
            )
        except BaseException as exc:
            return self._failed(c, st, exc)
        finally:
            if ticket is not None:
                self.limiter.release(ticket, time.time())
                self._send_unparks()

    def _failed(self, c: Claimed, st: registry.StepDef[Any, Any], exc: BaseException) -> Outcome:
        error = errors.describe(exc)
        if c.attempt < st.retry.max_attempts and st.retry.retryable(type(exc).__name__, exc):
            delay = st.retry.backoff_s(c.attempt, self._rng)
            self.counters["retries"] += 1
            log.info(
                "step %s failed (attempt %d of %d), retrying in %.2fs: %r",
                c.name,
                c.attempt,
                st.retry.max_attempts,
                delay,
                exc,
            )
            return Outcome(
                OutcomeKind.RETRY,
                c.run_rid,
                c.pos,
                c.token,
                error=error,
                not_before=time.time() + delay,
            )
        return Outcome(OutcomeKind.DONE, c.run_rid, c.pos, c.token, StepState.FAILED, error=error)

    # -- flush: group commit of outcomes --

    async def _flush_loop(self) -> None:
        assert self.db is not None
        backoff = 0.0
        while True:
            if not self._results:
                if self._flush_done:
                    return
                await self._wait(self._flush_wake, self.poll_interval_s)
                continue
            # Let more results join this transaction: one commit for many steps.
            await asyncio.sleep(backoff or self.cfg.flush_interval_s)
            batch, self._results = self._results, []
            began = time.monotonic()
            try:
                events = await self.db.run(repo.record, batch, time.time())
            except errors.StoreError as exc:
                self._results = batch + self._results  # keep them; nothing is lost
                backoff = min(FLUSH_RETRY_MAX_S, max(0.05, backoff * 2))
                self._write_failed(exc)
                continue
            backoff = 0.0
            self._write_ok()
            if self.telemetry is not None:
                self.telemetry.flushed(len(batch), time.monotonic() - began)
            recorded = {(e.run_rid, e.pos) for e in events}
            for o in batch:
                if o.kind == OutcomeKind.DONE and (o.run_rid, o.pos) not in recorded:
                    self._release_held(o.run_rid, o.pos)  # dropped by the fence: no replay
            self._push(events)
            self._unparks_flushed(batch)

    def _write_failed(self, exc: errors.StoreError, what: str = "flush") -> None:
        """A write of loop `what` failed: log the outage once; past the limit, raise (the loop
        dies, so the engine stops)."""
        now = time.monotonic()
        if not self._write_failing:
            log.error("cannot write the database; holding results and retrying: %s", exc)
        else:
            log.debug("%s: still cannot write the database: %s", what, exc)
        since = self._write_failing.setdefault(what, now)
        if now - since > self.cfg.write_failure_limit_s:
            raise errors.StoreWriteError(
                f"could not write the database for {self.cfg.write_failure_limit_s:.0f}s"
                f" (engine.write_failure_limit_s): {exc}"
            ) from exc

    def _write_ok(self, what: str = "flush") -> None:
        since = self._write_failing.pop(what, None)
        if since is not None and not self._write_failing:
            log.warning("database writable again after %.1fs", time.monotonic() - since)

    def _push(self, events: list[Delivery]) -> None:
        if not events:
            return
        for e in events:
            self._events.setdefault(e.run_rid, []).append(e)
        self._replay_wake.set()

    # -- timers --

    async def _timer_loop(self) -> None:
        assert self.db is not None
        while not self._draining.is_set():
            await self._wait(self._timer_wake, self.poll_interval_s)
            if self._draining.is_set():
                return
            try:
                events = await self.db.run(repo.fire_timers, time.time(), TIMER_BATCH)
            except errors.StoreError as exc:
                self._write_failed(exc, "timers")
                continue
            self._write_ok("timers")
            self._push(events)

    # -- limits: quotas of API-bound steps (engine/limits/) --

    def _limit_wait(self, c: Claimed, outcome: Outcome) -> Outcome:
        if outcome.kind == OutcomeKind.RELEASE and outcome.park is None:
            self._wakes.at(outcome.not_before, c.shard)  # claim it again when it fits
        return outcome

    def _wake_shards(self, shards: set[int]) -> None:
        self._hungry |= shards
        self._dispatch_wake.set()

    def _send_unparks(self) -> None:
        # Through the flush, after any park it answers: a group's parks and unparks stay ordered.
        unparks = self.limiter.take_unparks()
        if unparks:
            self._results.extend(
                Outcome(OutcomeKind.UNPARK, 0, 0, park=group, count=n) for group, n in unparks
            )
            self._flush_wake.set()

    def _unparks_flushed(self, batch: list[Outcome]) -> None:
        unparked = False
        for o in batch:
            if o.kind == OutcomeKind.UNPARK and o.park is not None:
                unparked = True
                if o.count > 0:
                    self.limiter.unpark_shortfall(o.park, o.count, time.time())
        if unparked:
            self._hungry = set(self._shards)  # unparked tasks may be in any shard
            self._dispatch_wake.set()

    async def _limits_loop(self) -> None:
        assert self.db is not None
        next_sync = 0.0
        while not self._draining.is_set():
            tick_s = LIMITS_TICK_S if self.limiter.active else 1.0
            await self._wait(self._draining, tick_s, clear=False)
            now = time.time()
            self.limiter.tick(now)
            idle = self.resources.sweep()
            if idle:
                await self.resources.aclose_entries(idle)
            if self.limiter.active and time.monotonic() >= next_sync:
                next_sync = time.monotonic() + self.cfg.heartbeat_interval_s
                snapshot = codec.encode(self.limits_snapshot(), what="limits snapshot")
                try:
                    parked = await self.db.run(repo.sync_limits, self.engine_id, snapshot, now)
                except errors.StoreError as exc:
                    log.warning("could not store the limits snapshot: %s", exc)
                else:
                    self.limiter.reconcile(parked, now)
            self._send_unparks()

    # -- heartbeat, epochs, reclaiming --

    async def _heartbeat_loop(self) -> None:
        assert self.db is not None
        while not self._heartbeat_stop.is_set():
            await self._wait(self._heartbeat_stop, self.cfg.heartbeat_interval_s, clear=False)
            if self._heartbeat_stop.is_set():
                return
            try:
                hb = await self.db.run(
                    repo.heartbeat,
                    self.engine_id,
                    EngineState.DRAINING if self.draining else EngineState.RUNNING,
                    time.time(),
                    self.cfg.lease_s,
                )
            except errors.StoreError as exc:
                self._write_failed(exc, "heartbeat")
                continue
            self._write_ok("heartbeat")
            if self.telemetry is not None:
                await self._sample()
            if hb.epoch != self.epoch and not self.draining:
                log.warning("epoch moved from %d to %d: draining", self.epoch, hb.epoch)
                self.request_stop(NEWER_EPOCH)
            if hb.reclaimed:
                log.warning("reclaimed %d tasks from engines whose lease ran out", hb.reclaimed)
                self._hungry = set(self._shards)
                self._dispatch_wake.set()
            for key in hb.orphaned:
                task = self._inflight.get(key)
                if task is not None:
                    self._cancel_reasons[key] = _CANCELLED_RUN
                    task.cancel()

    async def _sample(self) -> None:
        # The dashboard's plots and the metrics snapshot (executor/telemetry.py); best effort.
        assert self.db is not None and self.telemetry is not None
        now = time.time()
        limits = self.limits_snapshot() if self.limiter.active else None
        sample, snapshot = self.telemetry.sample(self.engine_id, now, self.load(), limits)
        try:
            await self.db.run(samples.record, sample, len(self._shards), snapshot)
        except errors.StoreError as exc:
            log.debug("could not write the metrics sample: %s", exc)

    # -- replay: feed results to workflow code, commit what it asks for --

    async def _replay_loop(self) -> None:
        assert self.db is not None
        next_poll = 0.0
        while not self._draining.is_set():
            await self._wait(self._replay_wake, max(0.0, next_poll - time.monotonic()))
            if self._draining.is_set():
                return
            todo: dict[int, int] = {}  # run -> highest seq we know of (0: unknown)
            polled: list[tuple[int, int]] = []
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_interval_s
                polled = await self.db.run(repo.pending_replays, REPLAY_POLL_LIMIT)
                if len(polled) == REPLAY_POLL_LIMIT:
                    next_poll = 0.0  # a backlog (a bulk start): keep reading it, no pause
            # Taken after the poll: events of every flush the poll saw are in memory by now
            # (the flusher pushes them before this task resumes), so a result of our own never
            # forces a full replay.
            events, self._events = self._events, {}
            for rid, evs in events.items():
                todo[rid] = max(e.seq for e in evs)
            for rid, seq in polled:
                inst = self.instances.get(rid)
                if inst is not None and inst.last_seq >= seq:
                    continue  # consumed already; its commit deletes the entry
                todo[rid] = max(todo.get(rid, 0), seq)
            rids = sorted(todo)  # oldest workflows first
            for i in range(0, len(rids), REPLAY_BATCH):
                chunk = rids[i : i + REPLAY_BATCH]
                await self._replay_chunk(chunk, todo, events)
                if self._draining.is_set():
                    return

    async def _replay_chunk(
        self, chunk: list[int], todo: dict[int, int], events: dict[int, list[Delivery]]
    ) -> None:
        assert self.db is not None
        live: dict[int, list[Delivery]] = {}
        need_load: list[int] = []
        for rid in chunk:
            inst = self.instances.get(rid)
            if inst is not None:
                evs = sorted(
                    (e for e in events.get(rid, ()) if e.seq > inst.last_seq),
                    key=lambda e: e.seq,
                )
                expected = inst.last_seq
                contiguous = True
                for e in evs:
                    expected += 1
                    if e.seq != expected:
                        contiguous = False
                        break
                if contiguous and expected >= todo[rid]:
                    live[rid] = evs
                    continue
                self.instances.pop(rid)
                inst.close()
            need_load.append(rid)
        snapshots = await self.db.run(repo.load_runs, need_load) if need_load else {}
        outputs: list[ReplayOutput] = []
        touched: dict[int, WorkflowInstance | None] = {}
        run_ids: dict[int, str] = {}
        workflows: dict[int, str] = {}
        for rid in chunk:
            self.counters["replays"] += 1
            if rid in live:
                inst = self.instances.get(rid)
                for d in live[rid]:
                    inst.deliver(d)
            else:
                snap = snapshots.get(rid)
                if snap is None:
                    continue
                if snap.status != RunState.RUNNING:
                    outputs.append(ReplayOutput(rid, snap.shard, snap.last_seq, [], inactive=True))
                    continue
                self.counters["full_replays"] += 1
                run_ids[rid] = snap.id
                workflows[rid] = snap.workflow
                built = self._build(snap)
                if isinstance(built, ReplayOutput):
                    outputs.append(built)
                    touched[rid] = None
                    continue
                inst = built
            outputs.append(self._output(inst))
            touched[rid] = inst
        try:
            await self.db.run(repo.commit_replays, outputs, time.time())
        except errors.StoreError as exc:
            for rid in chunk:
                self._release_held(rid)
            # The replay entries are still there: a later poll replays these runs from scratch.
            for rid, maybe in touched.items():
                self.instances.pop(rid)
                if maybe is not None:
                    maybe.close()
            self._write_failed(exc, "replay")
            return
        self._write_ok("replay")
        for rid in chunk:
            self._release_held(rid)  # their next steps, if any, are queued now
        queued_shards: set[int] = set()
        for out in outputs:
            inst = touched.get(out.run_rid)
            if out.new_steps:
                queued_shards.add(out.shard)
            if out.finished is not None or out.parked is not None:
                if inst is not None:
                    self.instances.pop(out.run_rid)
                    inst.close()
                    self._finished(inst.run.id, inst.wf.name, out)
                elif out.run_rid in run_ids:
                    self._finished(run_ids[out.run_rid], workflows[out.run_rid], out)
            elif inst is not None:
                self.instances.put(out.run_rid, inst)
        if queued_shards:
            self._hungry |= queued_shards
            self._dispatch_wake.set()
        if any(s.kind == StepKind.SLEEP for out in outputs for s in out.new_steps):
            self._timer_wake.set()

    def _build(self, snap: RunSnapshot) -> WorkflowInstance | ReplayOutput:
        run = RunInfo(snap.rid, snap.id, snap.shard, snap.created_at)
        try:
            wf = self.registry.workflow(snap.workflow)
            args = codec.decode(snap.args)
            if wf.types is not None:
                args = wf.types.decode_args(args, f"arguments of run {snap.id} ({wf.name})")
        except errors.ExecutorError as exc:
            return ReplayOutput(
                snap.rid,
                snap.shard,
                snap.last_seq,
                [],
                finished=RunState.FAILED,
                error=errors.describe(exc),
            )
        journal = {e.pos: e for e in snap.journal}
        inst = WorkflowInstance(
            run, wf, args, self.registry, self.hydration, self.cfg.payload_limit_bytes, journal
        )
        inst.replay(snap.journal)
        return inst

    def _output(self, inst: WorkflowInstance) -> ReplayOutput:
        steps = inst.take_steps()
        out = ReplayOutput(inst.run.rid, inst.run.shard, inst.last_seq, steps)
        if inst.nondeterminism is not None:
            out.new_steps = []
            out.parked = errors.describe(inst.nondeterminism)
            return out
        status, result, error = inst.outcome()
        if status is not None:
            out.new_steps = []
            out.finished, out.result, out.error = status, result, error
        return out

    def _finished(self, run_id: str, workflow: str, out: ReplayOutput) -> None:
        self.counters["finished"] += 1
        if out.finished == RunState.FAILED or out.parked is not None:
            _log_run_stopped(run_id, workflow, out)
        if self.on_finish is not None:
            status = out.finished or RunState.PARKED
            try:
                self.on_finish(run_id, status)
            except Exception:
                log.exception("on_finish callback failed")

    @staticmethod
    def _close_instance(inst: WorkflowInstance) -> None:
        inst.close()


def _log_step_failed(c: Claimed, outcome: Outcome) -> None:
    error = codec.decode(outcome.error) if outcome.error else {}
    if error.get("type") == "Cancelled":
        return  # its run was cancelled: not the step's failure
    log.warning(
        "step %s of run %s (%s) failed for good after %d attempt%s: %s",
        c.name,
        c.run_id,
        c.workflow,
        c.attempt,
        "" if c.attempt == 1 else "s",
        error_line(error),
        extra={"run": c.run_id, "workflow": c.workflow, "step": c.name, "pos": c.pos},
    )


def _log_run_stopped(run_id: str, workflow: str, out: ReplayOutput) -> None:
    blob = out.parked if out.parked is not None else out.error
    error = codec.decode(blob) if blob else {}
    step = error.get("step")
    log.error(
        "run %s (%s) %s%s: %s",
        run_id,
        workflow,
        "parked" if out.parked is not None else "failed",
        f" at step {step}" if step else "",
        error_line(error),
        extra={"run": run_id, "workflow": workflow, "step": step},
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
