"""A workflow instance: one run's workflow code, driven deterministically from its journal.

The workflow coroutine runs on a private, minimal event loop (`engine/loop.py`) that executes
callbacks only when the engine drives it, in FIFO order, and has no clock and no I/O. The engine
feeds it journal events one at a time, in the order they were recorded, and runs it until it is
quiet after each one. Whatever the real event loop is doing, the code therefore sees the same
sequence of wake-ups on the first run and on every replay, so `asyncio.gather`, `asyncio.wait`
with FIRST_COMPLETED and the like replay identically.

An instance is either fed live (kept in memory, given each new result as it is recorded) or
rebuilt from the journal (full replay after a restart or an eviction). Both paths go through
`deliver`, so they cannot disagree.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from executor import codec, errors, registry
from executor.engine.cache import HydrationCache
from executor.engine.loop import InstanceLoop
from executor.vocabulary import (
    Delivery,
    JournalEntry,
    NewStep,
    ReplayArgs,
    RunState,
    StepKind,
    StepState,
    child_run_id,
)

log = logging.getLogger("executor.workflow")

# Looking an enum member up on its class costs ~150 ns in CPython 3.11: the per-step paths use
# these module-level names instead.
_STEP = StepKind.STEP
_SUCCEEDED = StepState.SUCCEEDED

# A live result this small is not put in the hydration cache: a replay that needs it decodes it
# for less than the put costs on every result (0.2 against about 1 us; that replay's decode
# keeps it then, as any other).
_HYDRATE_MIN_BYTES = 33

T = TypeVar("T")

_NO_DEFAULT: Any = object()


class _Escaped(Exception):
    """KeyboardInterrupt or SystemExit raised by workflow code, carried as an ordinary error."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


class RunInfo(NamedTuple):
    rid: int
    id: str
    shard: int
    created_at: float
    generation: int = 0  # of the journal this instance was built from (retries bump it)
    seed: str | None = None  # ctx.random()/uuid() seed; None: the run id (a fork: its source's)
    clock_origin: float | None = None  # ctx.now() before any event; None: created_at
    # A fork: positions below this were copied from the source run, whose code may have put
    # its own id (ctx.run_id) in their arguments; only their kind and name are checked.
    inherited: int = 0


class ChildRun(asyncio.Future[T]):
    """The handle of a child workflow (ctx.child): a future of its result, and its run id."""

    run_id: str


class WorkflowContext:
    """The `ctx` every workflow function receives as its first argument."""

    __slots__ = ("_inst", "run_id", "workflow")

    def __init__(self, inst: WorkflowInstance, run_id: str, workflow: str) -> None:
        self._inst = inst
        self.run_id = run_id
        self.workflow = workflow

    def step(
        self,
        fn: registry.StepDef[Any, T] | Callable[..., Any],
        *args: Any,
        limit_key: str | None = None,
    ) -> asyncio.Future[T]:
        """Schedule a durable step; await the returned future for its result.

        Positions are assigned when this is called, so `asyncio.gather(ctx.step(a), ctx.step(b))`
        gives a before b on every replay. `limit_key` (an API key id, say) gives each key its own
        budget of the step's limits.
        """
        if limit_key is not None and not isinstance(limit_key, str):
            raise errors.WorkflowUsageError(f"limit_key must be a string, got {limit_key!r}")
        if not isinstance(fn, registry.StepDef):
            name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
            found = self._inst.registry.steps.get(name)
            if found is None or found.fn is not fn:
                raise errors.WorkflowUsageError(f"{name} is not a step: decorate it with @step")
            fn = found
        return self._inst.schedule(_STEP, fn.name, list(args), None, limit_key)

    def sleep(self, seconds: float) -> asyncio.Future[None]:
        """A durable timer: survives restarts; the workflow resumes after `seconds`."""
        if not isinstance(seconds, int | float) or seconds < 0:
            raise errors.WorkflowUsageError(f"ctx.sleep: seconds must be >= 0, got {seconds!r}")
        return self._inst.schedule(StepKind.SLEEP, "sleep", [float(seconds)], float(seconds))

    def wait_for(
        self,
        topic: str | Sequence[str],
        *,
        timeout: float | None = None,
        default: Any = _NO_DEFAULT,
    ) -> asyncio.Future[Any]:
        """Wait for a signal (`Client.signal(run_id, topic, payload)`); await it for the payload.

        A list of topics waits for the first message on any of them and gives `(topic, payload)`.
        Messages sent before the wait are kept, and each topic's are taken in arrival order. After
        `timeout` seconds (durable, like ctx.sleep) it raises `WaitTimeout`, or gives `default`
        when one is given. While it waits, the run holds no slot.
        """
        many = not isinstance(topic, str)
        topics: list[Any] = [topic] if isinstance(topic, str) else _as_list(topic)
        if not topics or not all(isinstance(t, str) and t for t in topics):
            raise errors.WorkflowUsageError(
                f"ctx.wait_for: topic must be a non-empty string or a list of them, got {topic!r}"
            )
        if len(set(topics)) != len(topics):
            raise errors.WorkflowUsageError(f"ctx.wait_for: topics listed twice in {topics!r}")
        if timeout is not None and (not isinstance(timeout, int | float) or not timeout >= 0):
            raise errors.WorkflowUsageError(
                f"ctx.wait_for: timeout must be seconds >= 0 or None, got {timeout!r}"
            )
        return self._inst.schedule_wait(topics, many, timeout, default)

    def set_event(self, key: str, value: Any) -> None:
        """Publish `value` under `key` for other code (`Client.get_event(run_id, key)`).

        Recorded once, at this point of the workflow: replays do not publish it again. The
        latest value of each key is kept, also after the run finishes.
        """
        if not isinstance(key, str) or not key:
            raise errors.WorkflowUsageError(f"ctx.set_event: key must be a string, got {key!r}")
        self._inst.publish(key, value)

    def child(self, wf: registry.WorkflowDef[T] | str, *args: Any) -> ChildRun[T]:
        """Start a child workflow now; await the returned handle for its result.

        `await ctx.child(wf, x)` starts and waits (one journal position); keep the handle to
        await it later, or gather many. The child is a run of its own (`handle.run_id`): it
        queues with its root run's creation (FIFO), inherits the concurrency key, and is
        cancelled with the parent. A failed child raises `ChildFailed`, a cancelled one
        `ChildCancelled`. Children still running when the parent finishes are cancelled.
        """
        wf = self._workflow_def(wf, "ctx.child")
        wf.check_args(args)
        return self._inst.schedule_child(wf.name, list(args))

    def start(self, wf: registry.WorkflowDef[Any] | str, *args: Any) -> str:
        """Start a detached run of `wf` and return its id at once: not a child, it is neither
        awaited nor cancelled with this run. Started once, whatever the replays."""
        wf = self._workflow_def(wf, "ctx.start")
        wf.check_args(args)
        return self._inst.start_detached(wf.name, list(args))

    def _workflow_def(
        self, wf: registry.WorkflowDef[T] | str, what: str
    ) -> registry.WorkflowDef[T]:
        if isinstance(wf, registry.WorkflowDef):
            return wf
        if isinstance(wf, str):
            found = self._inst.registry.workflows.get(wf)
            if found is not None:
                return found
        raise errors.WorkflowUsageError(
            f"{what}: {wf!r} is not a registered workflow (pass the @workflow or its name)"
        )

    def time(self) -> float:
        """The workflow's clock: when the event it is reacting to was recorded (same on replay)."""
        return self._inst.loop.now_s

    def now(self) -> dt.datetime:
        """`time()` as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self._inst.loop.now_s, dt.UTC)

    def random(self) -> float:
        """A random float in [0, 1), the same sequence on every replay of this run."""
        return self._inst.rng.random()

    def uuid(self) -> uuid.UUID:
        """A random UUID (version 4), the same on every replay of this run."""
        return uuid.UUID(int=self._inst.rng.getrandbits(128), version=4)

    def patched(self, patch_id: str) -> bool:
        """Branch code by version while runs are in flight: `if ctx.patched("new-prompt"):`.

        True for runs that reach this point under the new code (a marker is recorded, so their
        replays take the same branch); False for runs that were already past it under the old
        code (their journal holds something else here), so they replay the old branch. Call it
        as a plain expression, not across an await. See docs/VERSIONING.md.
        """
        return self._inst.patch(_patch_id(patch_id), deprecated=False)

    def deprecate_patch(self, patch_id: str) -> None:
        """The patch's old branch is gone (no run that took it is left): replays of runs that
        recorded the marker skip it, and new runs record nothing. Remove the call once no run
        holding the marker is left."""
        self._inst.patch(_patch_id(patch_id), deprecated=True)


def _patch_id(patch_id: object) -> str:
    if not isinstance(patch_id, str) or not patch_id:
        raise errors.WorkflowUsageError(f"a patch id must be a non-empty string, got {patch_id!r}")
    return patch_id


class WorkflowInstance:
    """One run's workflow code, its journal position, and what it asked for since last taken."""

    def __init__(
        self,
        run: RunInfo,
        wf: registry.WorkflowDef[Any],
        args: list[Any],
        reg: registry.Registry,
        cache: HydrationCache,
        payload_limit: int,
        journal: dict[int, JournalEntry] | None = None,
        replay_args: ReplayArgs = ReplayArgs.LOG,
    ) -> None:
        self.run = run
        self.wf = wf
        self.registry = reg
        self.cache = cache
        self.payload_limit = payload_limit
        self.loop = InstanceLoop(wf.name, run.id)  # type: ignore[abstract]
        self.loop.now_s = run.created_at if run.clock_origin is None else run.clock_origin
        self._rng: random.Random | None = None
        self.ctx = WorkflowContext(self, run.id, wf.name)
        self.journal = journal or {}
        self.last_seq = 0
        self.next_pos = 0
        self.pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        # Pending waits by position: (topics, many, timeout, default). None until the first one.
        self._waits: dict[int, tuple[list[str], bool, float | None, Any]] | None = None
        self._children: dict[int, str] | None = None  # pending children by position: run id
        # Both start as the shared empty tuple, a list only once something is added: a live run
        # holds two objects fewer for the garbage collector to walk (and 112 bytes less).
        self.new_steps: list[NewStep] | tuple[()] = ()
        self.nondeterminism: errors.NonDeterminismError | None = None
        self.replay_args = replay_args
        # Recorded steps whose arguments the code now gives differently (replay_args "log"):
        # (position, step name, journal fingerprint, code fingerprint).
        self.args_changed: list[tuple[int, str, str, str]] | tuple[()] = ()
        self._closing = False
        context = contextvars.copy_context()
        context.run(registry.current_context.set, self.ctx)
        self.main = self.loop.create_task(
            self._body(args), name=f"workflow:{run.id}", context=context
        )
        self.loop.run_until_quiet()

    async def _body(self, args: list[Any]) -> Any:
        call = self.wf.fn(self.ctx, *args)
        del args  # not kept for the life of the run
        try:
            return await call
        except (KeyboardInterrupt, SystemExit) as exc:
            # asyncio re-raises these out of the loop that runs the task, and from there out of
            # the engine's own loop: carry them as an ordinary error, the run's failure.
            raise _Escaped(exc) from exc

    @property
    def rng(self) -> random.Random:
        # Made on first use: its state is 2.5 KB, and most workflows never ask for randomness.
        if self._rng is None:
            self._rng = random.Random(self.run.id if self.run.seed is None else self.run.seed)
        return self._rng

    # -- called from the workflow code (through ctx) --
    def schedule(
        self,
        kind: StepKind,
        name: str,
        args: list[Any],
        sleep_s: float | None,
        limit_key: str | None = None,
        target: str | None = None,
    ) -> asyncio.Future[Any]:
        if self._closing:
            raise errors.WorkflowUsageError("the workflow is being unloaded")
        # Encoded before taking a position: refused arguments leave no gap in the journal.
        blob = codec.encode(args, what=f"{name} arguments", limit=self.payload_limit)
        pos = self.next_pos
        self.next_pos += 1
        fp = codec.fingerprint(blob)
        entry = self.journal.get(pos)
        if entry is not None:
            # A fork's inherited positions (below run.inherited) may hold the source's run id in
            # their arguments: only their kind and name are checked.
            if (
                entry.kind == kind
                and entry.name == name
                and entry.fingerprint != fp
                and pos >= self.run.inherited
            ):
                if self.replay_args is ReplayArgs.LOG:
                    # The journal stands: its recorded result is what this call returns (or,
                    # pending, its task runs with the recorded arguments). Counted and logged.
                    change = (pos, name, entry.fingerprint, fp)
                    if self.args_changed:
                        self.args_changed.append(change)
                    else:
                        self.args_changed = [change]
                else:
                    self._mismatch(
                        pos,
                        f"{entry.kind} {entry.name} (args fingerprint {entry.fingerprint})",
                        f"{kind} {name} (args fingerprint {fp}; engine.replay_args is strict)",
                    )
            elif entry.kind != kind or entry.name != name:
                self._mismatch(
                    pos,
                    f"{entry.kind} {entry.name} (args fingerprint {entry.fingerprint})",
                    f"{kind} {name} (args fingerprint {fp})",
                )
        elif self.nondeterminism is None:
            fire_at = None if sleep_s is None else self._real_now() + sleep_s
            self._add(NewStep(pos, kind, name, fp, blob, fire_at, limit_key, target))
        fut: asyncio.Future[Any] = self.loop.create_future()
        self.pending[pos] = (name, fut)
        return fut

    def schedule_wait(
        self, topics: list[str], many: bool, timeout: float | None, default: Any
    ) -> asyncio.Future[Any]:
        pos = self.next_pos
        # The topics are the wait's arguments: a replay checks them. The timeout is not: it is
        # stored once as the due time of its timer, so changing it does not break old runs.
        fut = self.schedule(StepKind.WAIT, "|".join(topics), [topics], timeout)
        if self._waits is None:
            self._waits = {}
        self._waits[pos] = (topics, many, timeout, default)
        return fut

    def schedule_child(self, workflow: str, args: list[Any]) -> ChildRun[Any]:
        pos = self.next_pos
        child_id = child_run_id(self.run.id, pos, self.run.generation)
        fut = self.schedule(StepKind.CHILD, workflow, args, None, target=child_id)
        handle: ChildRun[Any] = ChildRun(loop=self.loop)
        handle.run_id = child_id
        # The journal's future feeds the handle, so ChildFailed/ChildCancelled reach the code
        # from the handle the code holds.
        fut.add_done_callback(lambda f: _chain(f, handle))
        if self._children is None:
            self._children = {}
        self._children[pos] = child_id
        return handle

    def start_detached(self, workflow: str, args: list[Any]) -> str:
        if self._closing:
            raise errors.WorkflowUsageError("the workflow is being unloaded")
        blob = codec.encode(args, what=f"{workflow} arguments", limit=self.payload_limit)
        pos = self.next_pos
        self.next_pos += 1
        fp = codec.fingerprint(blob)
        run_id = child_run_id(self.run.id, pos, self.run.generation)
        entry = self.journal.get(pos)
        if entry is not None:
            if entry.kind != StepKind.START or entry.name != workflow or entry.fingerprint != fp:
                self._mismatch(
                    pos,
                    f"{entry.kind} {entry.name} (args fingerprint {entry.fingerprint})",
                    f"{StepKind.START} {workflow} (args fingerprint {fp})",
                )
        elif self.nondeterminism is None:
            self._add(NewStep(pos, StepKind.START, workflow, fp, blob, None, target=run_id))
        return run_id

    def publish(self, key: str, value: Any) -> None:
        if self._closing:
            raise errors.WorkflowUsageError("the workflow is being unloaded")
        blob = codec.encode(value, what=f"event {key}", limit=self.payload_limit)
        pos = self.next_pos
        self.next_pos += 1
        # Only the key is checked on replay: a published value may change with the code.
        fp = codec.fingerprint(codec.encode([key]))
        entry = self.journal.get(pos)
        if entry is not None:
            if entry.kind != StepKind.EVENT or entry.name != key:
                self._mismatch(
                    pos, f"{entry.kind} {entry.name}", f"{StepKind.EVENT} {key} (ctx.set_event)"
                )
        elif self.nondeterminism is None:
            self._add(NewStep(pos, StepKind.EVENT, key, fp, blob, None))

    def patch(self, patch_id: str, *, deprecated: bool) -> bool:
        if self._closing:
            raise errors.WorkflowUsageError("the workflow is being unloaded")
        pos = self.next_pos
        entry = self.journal.get(pos)
        if entry is not None:
            if entry.kind == StepKind.PATCH and entry.name == patch_id:
                self.next_pos += 1  # recorded by this run: the patched branch, again
                return True
            return False  # this run was past here under the old code: the old branch
        if deprecated:
            return True
        self.next_pos += 1
        if self.nondeterminism is None:
            self._add(NewStep(pos, StepKind.PATCH, patch_id, "", None, None))
        return True

    def _real_now(self) -> float:
        # Only used to store a new timer's due time, once; replays read it from the journal.
        return time.time()

    def _mismatch(self, pos: int, journal: str, code: str) -> None:
        err = errors.NonDeterminismError(self.run.id, pos, journal, code)
        if self.nondeterminism is None:
            self.nondeterminism = err
        raise err

    # -- called by the engine --
    def deliver(self, d: Delivery) -> None:
        """Hand one recorded event to the code and run it until it is quiet."""
        if d.seq <= self.last_seq:
            return
        self.last_seq = d.seq
        self.loop.now_s = d.finished_at
        waiting = self.pending.pop(d.pos, None)
        if waiting is None:
            if self.nondeterminism is None and not self.main.done():
                entry = self.journal.get(d.pos)
                what = f"{entry.kind} {entry.name}" if entry else "a result"
                self.nondeterminism = errors.NonDeterminismError(
                    self.run.id, d.pos, f"{what} (result #{d.seq})", "nothing at that position yet"
                )
            return
        name, fut = waiting
        wait = self._waits.pop(d.pos, None) if self._waits else None
        child = self._children.pop(d.pos, None) if self._children else None
        if fut.done():  # cancelled by the workflow code itself
            return
        if wait is not None:
            self._deliver_wait(d, fut, *wait)
        elif child is not None and d.status != _SUCCEEDED:
            error = codec.decode(d.error) if d.error is not None else {}
            if error.get("type") == "ChildCancelled":
                fut.set_exception(errors.ChildCancelled(child))
            else:
                fut.set_exception(errors.ChildFailed(child, error.get("error") or error))
        elif d.status == _SUCCEEDED:
            # Cached by (run, generation, position): a retry from an earlier position records
            # new results there.
            run = self.run
            if d.has_value:
                value = d.value
                size = len(d.result or b"")
                if size >= _HYDRATE_MIN_BYTES:
                    self.cache.put((run.rid, run.generation, d.pos), value, size)
            elif d.result is None:
                value = None
            else:
                value = self.cache.get((run.rid, run.generation, d.pos), d.result)
            st = self.registry.workflows.get(name) if child else self.registry.steps.get(name)
            # The message names the step only when its declared type has a decoder to run.
            if st is not None and st.types is not None and st.types.result is not None:
                try:
                    value = st.types.decode_result(value, f"result of step {name} at {d.pos}")
                except errors.ExecutorError as exc:  # does not fit, or an unresolvable type
                    fut.set_exception(exc)
                    self.loop.run_until_quiet()
                    return
            fut.set_result(value)
        else:
            error = codec.decode(d.error) if d.error is not None else {}
            fut.set_exception(errors.StepFailed(name, error))
        self.loop.run_until_quiet()

    def _deliver_wait(
        self,
        d: Delivery,
        fut: asyncio.Future[Any],
        topics: list[str],
        many: bool,
        timeout: float | None,
        default: Any,
    ) -> None:
        if d.status == StepState.SUCCEEDED:
            topic, payload = codec.decode(d.result or b"[null, null]")
            fut.set_result((topic, payload) if many else payload)
        elif default is not _NO_DEFAULT:
            fut.set_result(default)
        else:
            fut.set_exception(errors.WaitTimeout(topics, timeout, d.pos))

    def replay(self, entries: list[JournalEntry]) -> None:
        """Feed every recorded journal entry, in recorded order (full replay)."""
        done = [e for e in entries if e.seq is not None]
        done.sort(key=lambda e: e.seq or 0)
        for e in done:
            assert e.seq is not None and e.finished_at is not None
            self.deliver(
                Delivery(self.run.rid, e.pos, e.seq, e.status, e.result, e.error, e.finished_at)
            )
        if self.main.done() and self.nondeterminism is None:
            extra = [p for p in self.journal if p >= self.next_pos]
            if extra:
                e = self.journal[min(extra)]
                self.nondeterminism = errors.NonDeterminismError(
                    self.run.id, e.pos, f"{e.kind} {e.name}", "the workflow to return"
                )
        if self.journal:
            # Positions the code has passed are not looked up again: drop them, with their
            # result blobs, which a live instance would otherwise hold for as long as it lives.
            pending = self.pending
            self.journal = {
                p: e for p, e in self.journal.items() if p >= self.next_pos or p in pending
            }

    def _add(self, step: NewStep) -> None:
        if self.new_steps:
            self.new_steps.append(step)
        else:
            self.new_steps = [step]

    def take_steps(self) -> list[NewStep]:
        steps, self.new_steps = self.new_steps, ()
        return steps if steps else []

    def outcome(self) -> tuple[RunState | None, bytes | None, bytes | None]:
        """(succeeded | failed | None while running, result, error)."""
        if not self.main.done():
            return None, None, None
        if self.main.cancelled():
            return (
                RunState.FAILED,
                None,
                errors.error_blob("Cancelled", "the workflow was cancelled"),
            )
        exc = self.main.exception()
        if exc is None:
            try:
                blob = codec.encode(
                    self.main.result(), what=f"{self.wf.name} result", limit=self.payload_limit
                )
            except errors.PayloadError as perr:
                return RunState.FAILED, None, errors.error_blob("PayloadError", str(perr))
            return RunState.SUCCEEDED, blob, None
        return (
            RunState.FAILED,
            None,
            errors.describe(exc.original if isinstance(exc, _Escaped) else exc),
        )

    def close(self) -> None:
        """Unwind the code (its finally blocks run) and free the loop."""
        self._closing = True
        if not self.main.done():
            self.main.cancel()
            self.loop.run_until_quiet()
        for _, fut in self.pending.values():
            fut.cancel()
        self.pending.clear()
        if self.main.done() and not self.main.cancelled():
            self.main.exception()  # retrieved: no "never retrieved" warning at GC
        self.loop.close()
        # Break the cycle instance -> ctx -> instance (also reached through the main task's
        # context), so a closed instance is freed at once by reference counting instead of
        # waiting, as long-lived garbage, for a full collection (costly with many live runs).
        self.ctx._inst = _UNLOADED


class _Unloaded:
    """What a closed instance's ctx refers to: any use says the workflow was unloaded."""

    def __getattr__(self, name: str) -> Any:
        raise errors.WorkflowUsageError("the workflow was unloaded")


_UNLOADED: Any = _Unloaded()


def _chain(source: asyncio.Future[Any], handle: ChildRun[Any]) -> None:
    if handle.done():
        return
    if source.cancelled():
        handle.cancel()
    elif source.exception() is not None:
        handle.set_exception(source.exception())  # type: ignore[arg-type]
    else:
        handle.set_result(source.result())


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]
