"""The replayer: feeds recorded results to workflow code and commits the steps it asks for next.

A run's workflow is either live (an instance kept in memory, fed each result this engine
recorded) or rebuilt from its journal (a full replay: after a restart, an eviction, a result
recorded by someone else, or a gap in what we hold). Both go through WorkflowInstance.deliver, so
they cannot disagree. Replays are batched: one transaction commits what a chunk of runs produced
and deletes the replay entries they consumed (invariant 2: an entry goes only with the commit of
what its replay produced).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from executor import codec, errors, registry
from executor.engine.cache import HydrationCache, InstanceCache
from executor.engine.health import WriteHealth
from executor.engine.instance import RunInfo, WorkflowInstance
from executor.engine.loop import activations
from executor.engine.slots import SlotPool
from executor.engine.wakeup import sleep_until
from executor.store import repository as repo
from executor.store.database import Store
from executor.store.history import error_line
from executor.store.leases import Fence
from executor.vocabulary import (
    SETTLED_KINDS,
    Claimed,
    Delivery,
    NextClaim,
    ReplayArgs,
    ReplayOutput,
    RunSnapshot,
    RunState,
    StepKind,
)

log = logging.getLogger("executor.engine")

REPLAY_BATCH = 512  # runs per replay transaction
REPLAY_POLL_LIMIT = 4 * REPLAY_BATCH  # replay entries read per poll
# With the instance cache full, new runs wait for room unless no result came for this long.
STALLED_S = 1.0
_ARGS_LOGGED_MAX = 10_000  # distinct (workflow, step, position) warnings kept track of


def replay_run(
    snap: RunSnapshot,
    reg: registry.Registry,
    hydration: HydrationCache | None = None,
    payload_limit: int = codec.DEFAULT_LIMIT_BYTES,
    replay_args: ReplayArgs = ReplayArgs.LOG,
) -> WorkflowInstance:
    """Rebuild a run's workflow from its journal (a full replay), as the engine does.

    The instance has been fed every recorded result; `outcome()`, `nondeterminism` and
    `take_steps()` say what it came to. RegistryError if the workflow is not registered,
    PayloadError if its arguments cannot be decoded.
    """
    wf = reg.workflow(snap.workflow)
    return _rebuild(snap, wf, _decode_args(snap, wf), reg, hydration, payload_limit, replay_args)


def _decode_args(snap: RunSnapshot, wf: registry.WorkflowDef[Any]) -> list[Any]:
    args: list[Any] = codec.decode(snap.args)
    if wf.types is not None:
        args = wf.types.decode_args(args, f"arguments of run {snap.id} ({wf.name})")
    return args


def _rebuild(
    snap: RunSnapshot,
    wf: registry.WorkflowDef[Any],
    args: list[Any],
    reg: registry.Registry,
    hydration: HydrationCache | None,
    payload_limit: int,
    replay_args: ReplayArgs = ReplayArgs.LOG,
) -> WorkflowInstance:
    inst = WorkflowInstance(
        RunInfo(
            snap.rid,
            snap.id,
            snap.shard,
            snap.created_at,
            snap.generation,
            snap.seed,
            snap.clock_origin,
            snap.inherited,
        ),
        wf,
        args,
        reg,
        HydrationCache(1000, 65536) if hydration is None else hydration,
        payload_limit,
        {e.pos: e for e in snap.journal},
        replay_args,
    )
    inst.replay(snap.journal)
    return inst


class Replayer:
    """The inbox of recorded results and the `replay` loop (`run`)."""

    def __init__(
        self,
        db: Store,
        reg: registry.Registry,
        pool: SlotPool,
        health: WriteHealth,
        stopping: asyncio.Event,
        *,
        hydration: HydrationCache,
        instances: int,
        payload_limit: int,
        replay_args: ReplayArgs = ReplayArgs.LOG,
        poll_interval_s: Callable[[], float],
        sleeps_queued: Callable[[], None],
        on_finish: Callable[[str, str], None] | None,
        fence: Callable[[], Fence],
        claim_next: Callable[[], NextClaim] | None = None,
        start: Callable[[Claimed], None] | None = None,
    ) -> None:
        self._db = db
        # Claiming a run's next steps in the commit that queues them, for the slots it holds
        # (a fresh claim token each commit), and handing them to the step runner (`start`).
        self._claim_next = claim_next
        self._start = start
        self._fence = fence  # the shards we own (engine/leases.py): replayed and committed only
        self._registry = reg
        self._pool = pool
        self._health = health
        self._stopping = stopping
        self._hydration = hydration
        self._payload_limit = payload_limit
        self._replay_args = replay_args
        # (workflow, step, position) whose changed arguments were logged: once each, not per run.
        self._args_logged: set[tuple[str, str, int]] = set()
        self._poll_interval_s = poll_interval_s  # the engine's, which SIGHUP may change
        self._sleeps_queued = sleeps_queued
        self._on_finish = on_finish
        self.instances = InstanceCache(instances, _close_instance)
        self._free_steps: set[str] = set()  # registered steps that draw on no quota
        self._inbox: dict[int, list[Delivery]] = {}
        self._wake = asyncio.Event()
        self._gated = False  # runs were left waiting for room in the instance cache
        self._poll_now = False
        self._progressed_at = 0.0  # when a live run last got a result
        # caught_up: live instances fed the results someone else recorded, without a rebuild.
        self.counters = {
            "replays": 0,
            "full_replays": 0,
            "caught_up": 0,
            "finished": 0,
            "replay_args_changed": 0,
            "claimed_in_commit": 0,
            "heads_in_commit": 0,  # of those, the head of the shard's queue for a slot left
        }

    def deliver(self, deliveries: list[Delivery]) -> None:
        """Journal entries just recorded (by our flush or our timers): replay their runs."""
        if not deliveries:
            return
        self._progressed_at = time.monotonic()
        inbox = self._inbox
        for d in deliveries:
            inbox.setdefault(d.run_rid, []).append(d)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def forget(self, shards: frozenset[int]) -> None:
        """Unload the live workflows of shards we no longer own: their new owner records their
        results, and a stale instance would need a rebuild anyway if the shard came back."""
        for rid, inst in self.instances.items():
            if inst.run.shard in shards:
                self.instances.pop(rid)
                inst.close()
                self._inbox.pop(rid, None)

    def close(self) -> None:
        """Unload every live workflow (the engine stopped)."""
        self.instances.clear()

    async def run(self) -> None:
        next_poll = 0.0
        while not self._stopping.is_set():
            await sleep_until(self._wake, max(0.0, next_poll - time.monotonic()))
            if self._stopping.is_set():
                return
            todo: dict[int, int] = {}  # run -> highest seq we know of (0: unknown)
            polled: list[tuple[int, int, int]] = []
            if self._poll_now or time.monotonic() >= next_poll:
                self._poll_now = False
                next_poll = time.monotonic() + self._poll_interval_s()
                polled = await self._db.run(
                    repo.pending_replays, REPLAY_POLL_LIMIT, self._fence().engine
                )
                if len(polled) == REPLAY_POLL_LIMIT:
                    next_poll = 0.0  # a backlog (a bulk start): keep reading it, no pause
            # Taken after the poll: results of every flush the poll saw are in the inbox by now
            # (the recorder delivers them before this task resumes), so a result of our own
            # never forces a full replay.
            inbox, self._inbox = self._inbox, {}
            for rid, ds in inbox.items():
                todo[rid] = max(d.seq for d in ds)
            cold: list[tuple[int, int]] = []  # polled runs with no live instance
            for rid, seq, generation in polled:
                inst = self.instances.get(rid)
                if inst is not None and inst.run.generation != generation:
                    self.instances.pop(rid)  # retried in place: rebuild from the new journal
                    inst.close()
                    inst = None
                if inst is not None and inst.last_seq >= seq:
                    continue  # consumed already; its commit deletes the entry
                if inst is None and rid not in todo:
                    cold.append((rid, seq))
                    continue
                todo[rid] = max(todo.get(rid, 0), seq)
            admit = self._admissible(sum(1 for rid in todo if rid not in self.instances))
            todo.update(cold[:admit])
            if len(cold) > admit:
                # A backlog bigger than the instance cache (a bulk start): the rest wait in
                # their durable replay entry, costing no memory, instead of evicting live
                # instances that would each need a full replay at their next result.
                self._gated = True
                next_poll = time.monotonic() + self._poll_interval_s()
            rids = sorted(todo)  # oldest workflows first
            for i in range(0, len(rids), REPLAY_BATCH):
                await self._replay_chunk(rids[i : i + REPLAY_BATCH], todo, inbox)
                if self._stopping.is_set():
                    return

    def _admissible(self, taken: int) -> int:
        """How many runs without a live instance this pass may build: as many as fit in the
        instance cache. When it is full and no result was recorded for STALLED_S (the live runs
        all wait on something, maybe on runs that are not live yet: a parent on its child),
        as many as there are idle slots, evicting the least recently used."""
        room = self.instances.room()
        if room is None:
            return REPLAY_POLL_LIMIT
        if room - taken > 0:
            return room - taken
        if time.monotonic() - self._progressed_at < STALLED_S:
            return 0
        return self._pool.idle()

    def _live_deliveries(
        self, inst: WorkflowInstance, ds: list[Delivery], known_seq: int
    ) -> list[Delivery] | None:
        """What to feed a live instance: our results past its position, if they are contiguous
        and reach every result we know of; None if it needs a full replay."""
        if len(ds) == 1:  # the usual case: the one result of the step it waits for
            seq = ds[0].seq
            if seq == inst.last_seq + 1:
                return ds if seq >= known_seq else None
        ds = sorted((d for d in ds if d.seq > inst.last_seq), key=lambda d: d.seq)
        expected = inst.last_seq
        for d in ds:
            expected += 1
            if d.seq != expected:
                return None
        return ds if expected >= known_seq else None

    async def _catch_up(
        self,
        behind: dict[int, WorkflowInstance],
        todo: dict[int, int],
        live: dict[int, list[Delivery]],
    ) -> list[int]:
        """Live instances that miss results someone else recorded (a signal from a Client, a
        child's end, a resume): read just those rows and feed them, instead of rebuilding the
        instance from its whole journal. Returns the runs that need a full replay after all."""
        after = {rid: inst.last_seq for rid, inst in behind.items()}
        missed = await self._db.run(repo.load_deliveries, after)
        rebuild = []
        for rid, inst in behind.items():
            ds = missed.get(rid)
            if ds and self._live_deliveries(inst, ds, todo[rid]) is not None:
                live[rid] = ds
                self.counters["caught_up"] += 1
            else:
                self.instances.pop(rid)
                inst.close()
                rebuild.append(rid)
        return rebuild

    async def _replay_chunk(
        self, chunk: list[int], todo: dict[int, int], inbox: dict[int, list[Delivery]]
    ) -> None:
        live: dict[int, list[Delivery]] = {}
        to_load: list[int] = []
        behind: dict[int, WorkflowInstance] = {}
        for rid in chunk:
            inst = self.instances.get(rid)
            if inst is not None:
                ds = self._live_deliveries(inst, inbox.get(rid, []), todo[rid])
                if ds is not None:
                    live[rid] = ds
                    continue
                behind[rid] = inst
                continue
            to_load.append(rid)
        if behind:
            to_load += await self._catch_up(behind, todo, live)
        snapshots = await self._db.run(repo.load_runs, to_load) if to_load else {}
        outputs: list[ReplayOutput] = []
        # Runs replayed in this chunk -> their instance (None: it could not be built).
        replayed: dict[int, WorkflowInstance | None] = {}
        run_ids: dict[int, str] = {}
        workflows: dict[int, str] = {}
        with activations():  # nothing awaits in here: the running loop is set once a run
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
                        outputs.append(
                            ReplayOutput(rid, snap.shard, snap.last_seq, [], inactive=True)
                        )
                        continue
                    self.counters["full_replays"] += 1
                    run_ids[rid] = snap.id
                    workflows[rid] = snap.workflow
                    built = self._build(snap)
                    if isinstance(built, ReplayOutput):
                        outputs.append(built)
                        replayed[rid] = None
                        continue
                    inst = built
                outputs.append(_output(inst))
                replayed[rid] = inst
        claim = self._reserve(outputs)
        try:
            await self._db.run(repo.commit_replays, outputs, time.time(), self._fence(), claim)
        except errors.StoreError as exc:
            self._run_claimed(outputs)  # committed before the part that failed (PostgreSQL)
            for rid in chunk:
                self._pool.release(rid)
            # The replay entries are still there: a later poll replays these runs from scratch.
            for rid, maybe in replayed.items():
                self.instances.pop(rid)
                if maybe is not None:
                    maybe.close()
            self._health.failed(exc, "replay")
            return
        self._health.ok("replay")
        self._run_claimed(outputs)
        for rid in chunk:
            self._pool.release(rid)  # their next steps, if any, are queued now
        self.deliver([d for out in outputs for d in out.recorded])  # waits that found a message
        self._committed(outputs, replayed, run_ids, workflows)

    def _reserve(self, outputs: list[ReplayOutput]) -> NextClaim | None:
        """Ask the commit to fill the slots each run holds (`holds` on its output, reserved in
        the pool until after the commit): with the run's next plain steps first (`claimable`;
        not steps under a limit, which go through the limiter after a claim of their shard),
        then with the head of the shard's queue, as the dispatcher's claim would. A run that
        ends, sleeps or waits so leaves its slot to the next in line without a wake between."""
        if self._claim_next is None or self._stopping.is_set():
            return None
        free = self._free_steps
        reserve = self._pool.reserve
        step = StepKind.STEP
        any_claim = False
        for out in outputs:
            out.holds = n = reserve(out.run_rid)
            if not n:
                continue
            any_claim = True
            if not out.new_steps or out.finished is not None or out.parked is not None:
                continue
            for s in out.new_steps:
                if s.kind == step and (
                    s.limit_key is not None or (s.name not in free and not self._free(s.name))
                ):
                    break
            else:
                out.claimable = n
        return self._claim_next() if any_claim else None

    def _free(self, name: str) -> bool:
        """Whether step `name` is registered and draws on no quota (remembered once known)."""
        st = self._registry.steps.get(name)
        if st is None or st.limits:
            return False
        self._free_steps.add(name)
        return True

    def _run_claimed(self, outputs: list[ReplayOutput]) -> None:
        """Start the tasks the commit claimed, in the slots their runs held for them."""
        if self._start is None:
            return
        for out in outputs:
            if out.claimed:
                self._pool.run_next(out.run_rid, len(out.claimed))
                self.counters["claimed_in_commit"] += len(out.claimed)
                self.counters["heads_in_commit"] += max(0, len(out.claimed) - out.claimable)
                for c in out.claimed:
                    self._start(c)

    def _committed(
        self,
        outputs: list[ReplayOutput],
        replayed: dict[int, WorkflowInstance | None],
        run_ids: dict[int, str],
        workflows: dict[int, str],
    ) -> None:
        queued_shards: set[int] = set()
        for out in outputs:
            inst = replayed.get(out.run_rid)
            if out.dropped:
                # Cancelled or retried by someone else since the replay read it: stale.
                if inst is not None:
                    self.instances.pop(out.run_rid)
                    inst.close()
                continue
            # Its own steps not claimed here are queued: a claim of the shard may take them (the
            # tasks it claimed for its slots may be other runs', from the shard's queue).
            if len(out.new_steps) > sum(1 for c in out.claimed if c.run_rid == out.run_rid):
                queued_shards.add(out.shard)
            if out.finished is not None or out.parked is not None:
                if inst is not None:
                    self.instances.pop(out.run_rid)
                    inst.close()
                    self._finished(inst.run.id, inst.wf.name, out)
                elif out.run_rid in run_ids:
                    self._finished(run_ids[out.run_rid], workflows[out.run_rid], out)
            elif inst is not None and not inst.main.cancelled():
                # A closed one was evicted by a put of this same loop: putting it back would
                # hand its cancelled code the next result (the run would fail "Cancelled").
                self.instances.put(out.run_rid, inst)
        if self._gated:
            room = self.instances.room()
            if room is not None and room >= min(REPLAY_BATCH, max(1, self.instances.size // 4)):
                self._gated = False
                self._poll_now = True  # room for the runs left waiting: read them now
                self._wake.set()
        if queued_shards:
            self._pool.wake(queued_shards)
        sleep = StepKind.SLEEP
        if any(s.kind == sleep for out in outputs for s in out.new_steps):
            self._sleeps_queued()

    def _build(self, snap: RunSnapshot) -> WorkflowInstance | ReplayOutput:
        if snap.workflow not in self._registry.workflows:
            # A deploy mistake, not the run's fault: park it until the module is deployed.
            return ReplayOutput(
                snap.rid,
                snap.shard,
                snap.last_seq,
                [],
                parked=errors.unregistered("workflow", snap.workflow),
                generation=snap.generation,
            )
        try:
            wf = self._registry.workflow(snap.workflow)
            args = _decode_args(snap, wf)
        except errors.ExecutorError as exc:
            return ReplayOutput(
                snap.rid,
                snap.shard,
                snap.last_seq,
                [],
                finished=RunState.FAILED,
                error=errors.describe(exc),
                generation=snap.generation,
            )
        inst = _rebuild(
            snap, wf, args, self._registry, self._hydration, self._payload_limit, self._replay_args
        )
        if inst.args_changed:
            self._args_changed(inst)
        return inst

    def _args_changed(self, inst: WorkflowInstance) -> None:
        self.counters["replay_args_changed"] += len(inst.args_changed)
        for pos, step, journal_fp, code_fp in inst.args_changed:
            key = (inst.wf.name, step, pos)
            if key in self._args_logged or len(self._args_logged) >= _ARGS_LOGGED_MAX:
                continue
            self._args_logged.add(key)
            log.warning(
                "workflow %s (run %s): step %s at position %d was recorded with other arguments"
                " (fingerprint %s) than the code gives now (%s); the recorded result stands"
                " (engine.replay_args = log). Logged once per workflow, step and position.",
                inst.wf.name,
                inst.run.id,
                step,
                pos,
                journal_fp,
                code_fp,
            )

    def _finished(self, run_id: str, workflow: str, out: ReplayOutput) -> None:
        self.counters["finished"] += 1
        if out.finished == RunState.FAILED or out.parked is not None:
            _log_run_stopped(run_id, workflow, out)
        if self._on_finish is not None:
            status = out.finished or RunState.PARKED
            try:
                self._on_finish(run_id, status)
            except Exception:
                log.exception("on_finish callback failed")


def _output(inst: WorkflowInstance) -> ReplayOutput:
    steps = inst.take_steps()
    out = ReplayOutput(
        inst.run.rid, inst.run.shard, inst.last_seq, steps, generation=inst.run.generation
    )
    out.run_id, out.workflow = inst.run.id, inst.wf.name
    if inst.nondeterminism is not None:
        out.new_steps = []
        out.parked = errors.describe(inst.nondeterminism)
        return out
    status, result, error = inst.outcome()
    if status is not None:
        # Published values and detached starts are settled when written: those of the last
        # activation stay. Children it never awaited are not started at all.
        out.new_steps = [s for s in steps if s.kind in SETTLED_KINDS]
        out.finished, out.result, out.error = status, result, error
    return out


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


def _close_instance(inst: WorkflowInstance) -> None:
    inst.close()
