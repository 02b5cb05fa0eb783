"""The step runner: one claimed attempt of a step, from its claim to its outcome.

Each claimed attempt holds one slot of its shard. The runner looks the step up, decodes its
arguments, asks the limiter (engine/limits/) and acts on its decision, calls the step under its
timeout, encodes the result, and decides between success, retry and failure. The outcome goes to
the recorder; the slot goes back to the pool, or is held for the run's next step when the step
finished.

Attempts do not get an asyncio task each: a task costs more than a step that returns at once
(a Task, its Handle, its entry in asyncio's WeakSet of tasks: ~6 us against ~1). Claimed attempts
queue for worker tasks; a worker runs them one after another while each returns without waiting,
and when one waits (on I/O, a sleep, the limiter) the worker stays with it and hands the rest of
the queue to new workers at once. Each attempt runs in a context of its own (contextvars set by
one step do not leak into the next), and a cancellation the engine did not ask for retires the
worker that saw it.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
import random
import time
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any, TypeVar

from executor import codec, errors, registry
from executor.engine.limits import CostTooHigh, Decision, Limiter, Ticket, WakeTimer
from executor.engine.slots import SlotPool
from executor.store import payloads
from executor.store.history import error_line
from executor.telemetry import Telemetry
from executor.vocabulary import Claimed, Outcome, OutcomeKind, StepState

log = logging.getLogger("executor.engine")

TaskKey = tuple[int, int]  # (run rid, position)
_T = TypeVar("_T")

# Looking an enum member up on its class costs ~150 ns in CPython 3.11: the per-step paths use
# these module-level names instead.
_DONE = OutcomeKind.DONE
_SUCCEEDED = StepState.SUCCEEDED
_FAILED = StepState.FAILED


class CancelReason(enum.Enum):
    """Why an in-flight attempt is cancelled: what its outcome is then."""

    DRAIN = "drain"  # the engine stops: no outcome, the claim goes back to the queue at stop
    RUN_CANCELLED = "run cancelled"  # its run is no longer running: record it failed (fenced)


class _Attempt:
    """One claimed attempt: the worker task running it (None while queued), and why the
    engine cancelled it, if it did (None: a CancelledError is the step's own failure)."""

    __slots__ = ("cancelled", "reason", "task", "work")

    def __init__(self, claim: Claimed) -> None:
        self.work = claim
        self.reason: CancelReason | None = None
        self.cancelled = False  # cancelled while queued: it never starts
        self.task: asyncio.Task[None] | None = None


class StepRunner:
    """Runs claimed steps; each outcome goes to `record`, each slot back to the pool."""

    def __init__(
        self,
        reg: registry.Registry,
        pool: SlotPool,
        limiter: Limiter,
        wakes: WakeTimer,
        *,
        record: Callable[[Outcome], None],
        unparks_ready: Callable[[], None],
        payload_limit: int,
        payload_folder: Path | None,
        telemetry: Telemetry | None,
        payload_compress_min: int | None = payloads.COMPRESS_MIN_BYTES,
    ) -> None:
        self._registry = reg
        self._pool = pool
        self._limiter = limiter
        self._wakes = wakes
        self._record = record
        self._unparks_ready = unparks_ready
        self._payload_limit = payload_limit
        self._payload_folder = payload_folder
        self._payload_compress_min = payload_compress_min  # database.payload_compression
        self._telemetry = telemetry
        self._inflight: dict[TaskKey, _Attempt] = {}  # claimed: queued or running
        self._queue: deque[_Attempt] = deque()  # claimed, not started yet (FIFO)
        self._workers: set[asyncio.Task[None]] = set()  # strong references: asyncio keeps weak
        self._starting = 0  # workers created that have not taken from the queue yet
        self._idle: asyncio.Event | None = None  # set when nothing is in flight (drain)
        self._rng = random.Random()
        self.counters = {"steps": 0, "retries": 0}

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def start(self, c: Claimed) -> None:
        """Run a claimed task in a slot of its shard."""
        self._pool.occupy(c.shard)
        attempt = _Attempt(c)
        self._inflight[(c.run_rid, c.pos)] = attempt
        self._queue.append(attempt)
        if self._starting == 0:
            self._spawn()

    def _spawn(self) -> None:
        self._starting += 1
        # Unnamed: the step's own frames say which step a worker is in.
        self._workers.add(asyncio.create_task(self._work()))

    def _blocked(self) -> None:
        """The attempt a worker runs waits: the queue behind it goes to new workers now."""
        for _ in range(len(self._queue) - self._starting):
            self._spawn()

    async def _work(self) -> None:
        self._starting -= 1
        task = asyncio.current_task()
        assert task is not None
        queue = self._queue
        try:
            while queue:
                attempt = queue.popleft()
                attempt.task = task
                c = attempt.work
                outcome = None
                drained = False
                began = time.monotonic()
                try:
                    if not attempt.cancelled:
                        outcome = await _isolated(self._execute(c, attempt), self._blocked)
                    elif attempt.reason is CancelReason.RUN_CANCELLED:
                        outcome = _failed_for_good(
                            c, errors.error_blob("Cancelled", "the run was cancelled")
                        )
                except asyncio.CancelledError:
                    drained = True  # a drain's cancel, re-raised by its attempt
                except Exception:
                    log.exception("step runner: attempt of step %s failed", c.name)
                try:
                    self._finish(attempt, outcome, began)
                except Exception:
                    log.exception("step runner: the outcome of step %s was lost", c.name)
                if drained or task.cancelling():
                    break  # a cancel its attempt did not take must not reach the next one
        finally:
            self._workers.discard(task)
        if queue and self._starting == 0:
            self._spawn()

    def cancel(self, key: TaskKey, reason: CancelReason) -> bool:
        """Cancel the in-flight attempt of task `key`, saying why; False if there is none."""
        attempt = self._inflight.get(key)
        if attempt is None:
            return False
        self._cancel(attempt, reason)
        return True

    def _cancel(self, attempt: _Attempt, reason: CancelReason) -> None:
        attempt.reason = reason
        if attempt.task is None:
            attempt.cancelled = True  # queued: it ends without running
        else:
            attempt.task.cancel()  # its worker is waiting inside this attempt

    def in_flight_in(self, shard: int) -> int:
        """Attempts running in `shard` (a shard is handed over when it has none)."""
        return sum(1 for a in self._inflight.values() if a.work.shard == shard)

    def cancel_shards(self, shards: frozenset[int]) -> None:
        """Cancel the attempts of `shards` without an outcome: the shard went (or goes) to
        another engine, whose lease takes their claims back to the queue."""
        for attempt in list(self._inflight.values()):
            if attempt.work.shard in shards:
                self._cancel(attempt, CancelReason.DRAIN)

    async def drain(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for in-flight steps; cancel the rest (back to the queue)."""
        if not self._inflight:
            return
        self._idle = idle = asyncio.Event()
        try:
            await asyncio.wait_for(idle.wait(), timeout_s)
            return
        except TimeoutError:
            pass
        late = list(self._inflight.values())
        log.warning("drain timeout: cancelling %d steps; they go back to the queue", len(late))
        for attempt in late:
            self._cancel(attempt, CancelReason.DRAIN)
        try:
            await asyncio.wait_for(idle.wait(), 5.0)
        except TimeoutError:
            log.warning("drain: %d steps did not stop", len(self._inflight))

    def _finish(self, attempt: _Attempt, outcome: Outcome | None, began: float) -> None:
        c = attempt.work
        attempt.task = None
        # After a retry in place, a new attempt of the same step may run beside this one
        # (whose result the fence will drop): each removes only its own entry.
        if self._inflight.get((c.run_rid, c.pos)) is attempt:
            del self._inflight[(c.run_rid, c.pos)]
            if self._idle is not None and not self._inflight:
                self._idle.set()
        if outcome is not None and outcome.kind is _DONE:
            self._pool.hold(c.run_rid, c.pos, c.shard)
        else:
            self._pool.free(c.shard)
        if outcome is not None:
            outcome.shard = c.shard
            if outcome.kind is _DONE and outcome.status == _FAILED:
                _log_step_failed(c, outcome)
            if self._telemetry is not None:
                self._telemetry.outcome(c, outcome, time.monotonic() - began)
            self._record(outcome)

    async def _execute(self, c: Claimed, attempt: _Attempt) -> Outcome | None:
        st = self._registry.steps.get(c.name)
        if st is None:
            # A deploy mistake: hold the task back and park the run, never fail it.
            log.error(
                "step %s of run %s (%s) is not registered here (daemon.workflows); run parked",
                c.name,
                c.run_id,
                c.workflow,
            )
            error = errors.unregistered("step", c.name)
            return Outcome(OutcomeKind.PARK, c.run_rid, c.pos, c.token, error=error)
        ticket: Ticket | None = None
        try:
            args = codec.decode(c.args)
            if st.types is not None:
                args = st.types.decode_args(args, f"arguments of step {c.name}")
            if st.limits or c.concurrency_key is not None:
                try:
                    decision = await self._limiter.admit(c, st, args)
                except CostTooHigh as exc:
                    return _failed_for_good(c, errors.describe(exc))
                if decision is not None:
                    if decision.ticket is None:
                        return self._not_now(c, decision)  # holds no slot meanwhile
                    ticket = decision.ticket
            call = st.fn(*args) if st.is_async else asyncio.to_thread(st.fn, *args)
            if st.timeout_s is None:
                value = await call
            else:
                async with asyncio.timeout(st.timeout_s):
                    value = await call
            try:
                blob = codec.encode(
                    value, what=f"result of step {c.name}", limit=self._payload_limit
                )
            except errors.PayloadError as exc:
                # The same value would be refused on every attempt: fail now, no retries.
                return _failed_for_good(c, errors.describe(exc))
            self.counters["steps"] += 1
            done = Outcome(_DONE, c.run_rid, c.pos, c.token, _SUCCEEDED, blob)
            if codec.is_immutable(value):
                done.value, done.has_value = value, True
            if len(blob) >= payloads.FILE_MIN_BYTES and self._payload_folder is not None:
                # A large result goes to its file (fsynced) here, off the database thread and
                # outside the write lock; the flush then only commits its row.
                done.stored = await asyncio.to_thread(
                    payloads.stage, self._payload_folder, blob, self._payload_compress_min
                )
            return done
        except asyncio.CancelledError as exc:
            if attempt.reason is None:
                # Raised by the step's own code, or a cancel the engine did not ask for (its
                # worker retires after it): the step's failure, retried by its policy.
                return self._failed(c, st, exc)
            if attempt.reason is CancelReason.RUN_CANCELLED:
                # Fenced away (the run is not running): this just deletes the task row.
                return _failed_for_good(c, errors.error_blob("Cancelled", "the run was cancelled"))
            raise  # drain: the claim is released when the engine stops
        except errors.RateLimited as exc:
            delay = exc.retry_after if exc.retry_after is not None else 1.0
            # Slows the step's limits down, and gives it a staggered place after the delay.
            not_before = self._limiter.rate_limited(ticket, delay, time.time())
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
                self._limiter.release(ticket, time.time())
                self._unparks_ready()

    def _not_now(self, c: Claimed, decision: Decision) -> Outcome:
        """The limiter said wait or park: give the task back without using an attempt."""
        if decision.park is not None:
            return Outcome(
                OutcomeKind.RELEASE,
                c.run_rid,
                c.pos,
                c.token,
                not_before=time.time(),
                park=decision.park,
            )
        self._wakes.at(decision.wait_until, c.shard)  # claim it again when it fits
        return Outcome(
            OutcomeKind.RELEASE, c.run_rid, c.pos, c.token, not_before=decision.wait_until
        )

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
        return _failed_for_good(c, error)


def _failed_for_good(c: Claimed, error: bytes) -> Outcome:
    return Outcome(_DONE, c.run_rid, c.pos, c.token, _FAILED, error=error)


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


@types.coroutine
def _isolated(
    coro: Coroutine[Any, Any, _T], blocked: Callable[[], None]
) -> Generator[Any, Any, _T]:
    """Await `coro` from the current task, in a context of its own; `blocked()` the first time
    it waits. A plain `await` would run it in the worker's context, where what one step sets in
    a ContextVar would be seen by the next."""
    context = contextvars.copy_context()
    send, throw = coro.send, coro.throw
    try:
        yielded = context.run(send, None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    blocked()
    while True:
        try:
            value = yield yielded
        except BaseException as exc:  # a cancel (or close) of the worker: the attempt's to take
            try:
                yielded = context.run(throw, exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
        else:
            try:
                yielded = context.run(send, value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
