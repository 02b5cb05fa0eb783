"""The words every layer shares: run, step and engine states, step and outcome kinds, and the
records one step's data travels in, from the workflow that asks for it to the journal and back.

A leaf module (it imports nothing of the package), so the client, the CLI, the engine and the
store can all speak it without importing one another. The states are `StrEnum`s: a member is
the very string stored in the database, so rows read back compare equal to the members without
a conversion (tests/test_vocabulary.py checks every literal in the SQL files is a member).

The life of one step, by record:

    NewStep       the workflow asked for a step (WorkflowInstance.schedule)
    ReplayOutput  what one replay of one run produced, committed by repository.commit_replays
    Claimed       a queued task taken by an engine (repository.claim), or by the replay commit
                  that queued it, for the slot its run holds (NextClaim)
    Outcome       what one attempt came to, recorded by repository.record (with the limiter's
                  Unparks, in the same group commit)
    Delivery      a journal entry just recorded (or read back for a full replay), fed to the
                  workflow by WorkflowInstance.deliver
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class RunState(enum.StrEnum):
    """`runs.status`."""

    RUNNING = "running"
    PARKED = "parked"  # its code no longer matches its journal; waits for an operator
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})


class StepState(enum.StrEnum):
    """`steps.status`: a journal entry is pending until its result is recorded."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class StepKind(enum.StrEnum):
    """`steps.kind`: what the workflow asked for at a position."""

    STEP = "step"  # a task, run by an engine's slot
    SLEEP = "sleep"  # a durable timer (ctx.sleep), fired by the timer loop
    # ctx.wait_for: recorded by a signal (Client.signal) or by its timeout (a timer of kind WAIT)
    WAIT = "wait"
    EVENT = "event"  # ctx.set_event: settled when written (succeeded, no seq: never delivered)
    CHILD = "child"  # ctx.child: recorded by whatever ends the child run (its result referenced)
    START = "start"  # ctx.start: a detached run, settled when written
    # ctx.patched(id): a marker that this run took the patched code; settled when written; its
    # name is the patch id
    PATCH = "patch"


# Kinds whose journal entry is done when the replay commit writes it: the code never awaits a
# result for them, so they carry no seq, and those of a workflow's last activation are kept.
SETTLED_KINDS = frozenset({StepKind.EVENT, StepKind.START, StepKind.PATCH})


def child_run_id(parent_id: str, pos: int, generation: int = 0) -> str:
    """The id of the run a workflow starts at journal position `pos` (ctx.child, ctx.start):
    derived, so replaying the parent finds the same child instead of starting another. After a
    retry in place (generation > 0) a position past the restart point starts a new child."""
    return f"{parent_id}.{pos}" if generation == 0 else f"{parent_id}.{pos}.r{generation}"


class ReplayArgs(enum.StrEnum):
    """`engine.replay_args`: what a replay does when a recorded step's arguments changed."""

    LOG = "log"  # the journal stands: the step's recorded result (or its pending task) is kept
    STRICT = "strict"  # the run is parked, as for any other mismatch


class EngineState(enum.StrEnum):
    """`engines.state`, and an Engine object's own state (NEW before it registers)."""

    NEW = "new"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"
    DEAD = "dead"  # its lease ran out, or its process is gone; its claims were released


LIVE_ENGINE_STATES = frozenset({EngineState.RUNNING, EngineState.DRAINING})


class OutcomeKind(enum.StrEnum):
    """What one attempt of a claimed step came to (`Outcome.kind`); never stored as such."""

    DONE = "done"  # the step finished (succeeded, or failed for good): record it in the journal
    RETRY = "retry"  # the attempt failed and will be retried after not_before
    RELEASE = "release"  # give the task back without using an attempt (drain, rate limit)
    # The step's name is not registered here (a deploy mistake): hold its task back, parked as
    # UNREGISTERED, and park the run with `error`, until the fix is deployed and it is resumed.
    PARK = "park"


class TaskHold(enum.StrEnum):
    """tasks.parked values that are not quota groups (those are the limits' group names)."""

    # The step's name is not registered in the engine that claimed it (OutcomeKind.PARK); the
    # run is parked, and `resume` or `retry` makes the task claimable again.
    UNREGISTERED = "unregistered"


UNREGISTERED = TaskHold.UNREGISTERED


class ActionKind(enum.StrEnum):
    """run_actions.action: what an action on runs by filter does to each run."""

    CANCEL = "cancel"
    RETRY = "retry"
    RESUME = "resume"
    FAIL = "fail"
    PURGE = "purge"


class ActionPhase(enum.StrEnum):
    """run_actions.phase: open until its last batch, then done."""

    OPEN = "open"
    DONE = "done"


# Why an engine drains when another engine (or `executor bump-epoch`) took a newer epoch.
NEWER_EPOCH = "a newer epoch took over"


# --- records -------------------------------------------------------------------------------------


class NewRun(NamedTuple):
    id: str
    workflow: str
    version: str | None
    shard: int
    args: bytes
    idempotency_key: str | None
    concurrency_key: str | None = None  # caps the run's steps in flight (engine.limits)
    labels: str | None = None  # JSON object, from runfilter.check_labels


class Claimed(NamedTuple):
    """A task an engine claimed: one attempt of one step."""

    run_rid: int
    pos: int
    shard: int
    attempt: int
    name: str
    args: bytes
    token: int
    limit_key: str | None = None  # ctx.step(..., limit_key=)
    concurrency_key: str | None = None  # the run's, from Client.start(concurrency_key=)
    unparked: bool = False  # it was parked, waiting for room: it goes before newcomers
    run_id: str = ""  # for log lines
    workflow: str = ""  # for metrics labels


@dataclass(slots=True)
class Outcome:
    """What one attempt of a claimed step came to, to be recorded."""

    kind: OutcomeKind
    run_rid: int
    pos: int
    token: int | None = None  # the claim that ran it (None for timers and operator actions)
    status: StepState = StepState.SUCCEEDED  # for DONE: succeeded | failed
    result: bytes | None = None
    error: bytes | None = None
    not_before: float = 0.0  # for RETRY/RELEASE
    # DONE: the result itself when it is immutable, so the live workflow needs no decode.
    value: Any = None
    has_value: bool = False
    # RELEASE: park the task under this group (engine/limits/) until an Unpark of the group
    park: str | None = None
    # DONE: the result made ready for the payload store outside the write lock (a large one is
    # written to its file already: store/payloads.Staged); recorded instead of `result`.
    stored: Any = None
    # The shard of the claimed task (set by the runner): the record is fenced by its lease.
    # -1: not from a claim (timers, operator actions).
    shard: int = -1


class Unpark(NamedTuple):
    """Make up to `tasks` tasks parked under `group` claimable again, oldest first (the limiter
    found room for them); recorded with the outcomes, after any park it answers."""

    group: str
    tasks: int


class Delivery(NamedTuple):
    """A recorded journal entry, as a workflow is fed it: just recorded by this engine (live), or
    read back from the journal (full replay)."""

    run_rid: int
    pos: int
    seq: int
    status: str  # a StepState: succeeded | failed
    result: bytes | None
    error: bytes | None
    finished_at: float
    value: Any = None  # the decoded result, when the engine still has it (immutable values only)
    has_value: bool = False


class Recorded(NamedTuple):
    """What repository.record wrote: the journal entries, and the unparks that found fewer
    parked tasks than asked (`tasks`: how many fewer)."""

    deliveries: list[Delivery]
    short: list[Unpark]
    refused: int = 0  # outcomes of shards this engine no longer owns: not written (leases)


class JournalEntry(NamedTuple):
    pos: int
    kind: str  # a StepKind
    name: str
    fingerprint: str
    status: str  # a StepState
    result: bytes | None
    error: bytes | None
    seq: int | None
    finished_at: float | None


class RunSnapshot(NamedTuple):
    """Everything a full replay of one run needs."""

    rid: int
    id: str
    workflow: str
    version: str | None
    shard: int
    status: str  # a RunState
    args: bytes
    created_at: float
    last_seq: int
    journal: list[JournalEntry]
    generation: int = 0  # bumped by every retry in place
    seed: str | None = None  # ctx.random()/uuid() seed: the run id, or a fork's source's seed
    clock_origin: float | None = None  # ctx.now() before any event: created_at, or the source's
    inherited: int = 0  # a fork: positions below this were copied from the source's journal


class NewStep(NamedTuple):
    pos: int
    kind: StepKind
    name: str
    fingerprint: str
    args: bytes | None
    fire_at: float | None  # for sleeps
    limit_key: str | None = None  # its own budget of the step's limits
    target: str | None = None  # CHILD, START: the id of the run it starts


@dataclass(slots=True)
class ReplayOutput:
    """What one replay of one run produced."""

    run_rid: int
    shard: int
    consumed_seq: int
    new_steps: list[NewStep]
    finished: RunState | None = None  # succeeded | failed
    result: bytes | None = None
    error: bytes | None = None
    parked: bytes | None = None  # the nondeterminism error
    # The run was not running when read (parked, finished): just drop its replay entry, unless
    # it was resumed since, in which case the entry is the resume's and must stay.
    inactive: bool = False
    # Filled by the commit: journal results it recorded itself (a wait that found its message
    # already in the mailbox), for the engine to deliver like any other.
    recorded: list[Delivery] = field(default_factory=list)
    generation: int = 0  # of the journal the replay read
    # Set by commit_replays: the run was no longer running in that generation (cancelled, or
    # retried), so nothing of this output was written. The instance that made it is stale.
    dropped: bool = False
    # Slots the run holds for its next steps (the engine's SlotPool.reserve): with a NextClaim,
    # the commit claims up to this many of its new plain steps for them, when FIFO allows.
    claimable: int = 0
    # All the slots the run holds for this commit (claimable <= holds): with a NextClaim, those
    # its own next steps do not take go to the head of its shard's queue, as the dispatcher's
    # claim would (a run that ends, sleeps or waits leaves its slot to the next in line).
    holds: int = 0
    # Set by commit_replays once committed: the tasks it claimed for the slots this run holds,
    # its own next steps first (claim's records).
    claimed: list[Claimed] = field(default_factory=list)
    # The run's id and workflow (the replayer's instance knows them): the commit builds the
    # Claimed of its own next steps from the output instead of reading them back. "": read.
    run_id: str = ""
    workflow: str = ""


@dataclass(frozen=True, slots=True)
class NextClaim:
    """The claim a replay commit makes for the runs' held slots (repository.commit_replays), as
    repository.claim would: the engine, its epoch, the claim token, and whether to read what the
    limiter needs."""

    engine: int
    epoch: int
    token: int
    limits: bool
    # The token of the tasks claimed from the head of a shard's queue (0: `token`): apart from
    # the runs' own next steps, which the commit builds without reading them back.
    heads_token: int = 0


class RunRow(NamedTuple):
    rid: int
    id: str
    workflow: str
    version: str | None
    shard: int
    status: str  # a RunState
    result: bytes | None
    error: bytes | None
    created_at: float
    updated_at: float
    finished_at: float | None
    last_seq: int
    labels: str | None = None  # JSON object
    generation: int = 0  # retries in place so far
    forked_from: str | None = None  # the run's id this one was forked from


class Heartbeat(NamedTuple):
    epoch: int
    reclaimed: int  # tasks released from engines whose lease ran out
    orphaned: list[tuple[int, int]]  # our in-flight tasks whose run is no longer running
