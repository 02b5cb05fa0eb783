"""One run, whole: its journal position by position and what it waits on now.

Read-only, one snapshot per call: `executor show`, `Client.history` and the dashboard's run page.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import orjson

from executor.store.conn import Conn

# What a position is doing. A finished one is its status (succeeded | failed).
QUEUED = "queued"  # claimable now
IN_FLIGHT = "in_flight"  # claimed by an engine, running
RETRY_WAIT = "retry_wait"  # an attempt failed; the next one is due at `until`
QUOTA_WAIT = "quota_wait"  # held back by its limits (rate, concurrency, a 429) until `until`
QUOTA_PARKED = "quota_parked"  # parked until its limit or concurrency key has room
SLEEPING = "sleeping"  # a durable sleep, due at `until`
SCHEDULED = "scheduled"  # pending with no task or timer (waits for its run's replay)
SIGNAL = "signal"  # a ctx.wait_for: waits for a signal on its topics (timeout at `until`)
CHILD = "child"  # a ctx.child: waits for the child run `child` to finish

# What a run waits on, besides the states above.
REPLAY = "replay"  # recorded results its workflow code has not seen yet
PARKED = "parked"  # the run is parked: an operator must resume or fail it
FINISHED = "finished"
NOTHING = "nothing"  # a running run with nothing that makes it progress (invariant 2 broken)


def _error(blob: bytes | None) -> dict[str, Any] | None:
    if blob is None:
        return None
    try:
        value = orjson.loads(blob)
    except orjson.JSONDecodeError:
        return {"type": "Unreadable", "message": repr(blob[:200])}
    return value if isinstance(value, dict) else {"type": "Error", "message": str(value)}


def error_line(error: dict[str, Any] | None) -> str | None:
    """`Type: message`, one line, for tables and logs."""
    if error is None:
        return None
    message = " ".join(str(error.get("message", "")).split())
    return f"{error.get('type', 'Error')}: {message}" if message else str(error.get("type"))


@dataclass(frozen=True, slots=True)
class Position:
    """One journal position: a step call or a durable sleep."""

    pos: int
    kind: str  # step | sleep
    name: str
    status: str  # pending | succeeded | failed
    state: str  # the status when finished, else one of the states above
    attempts: int  # attempts started
    error: dict[str, Any] | None  # the last error, also of an attempt that was retried
    scheduled_at: float  # when the workflow asked for it
    started_at: float | None  # when its first attempt was claimed (a sleep: when scheduled)
    finished_at: float | None
    duration_s: float | None  # started to finished (retries and their backoff included)
    seq: int | None  # the order its result was delivered in
    until: float | None  # retry, quota wait or sleep: when it is due
    engine: int | None  # in flight: the engine running it
    limit: str | None  # parked: the limit or concurrency key it waits for
    child: str | None = None  # a child workflow: its run id

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Waiting:
    """One thing a run waits on now, as a sentence and as fields."""

    kind: str
    detail: str
    pos: int | None = None
    name: str | None = None
    since: float | None = None
    until: float | None = None
    engine: int | None = None
    limit: str | None = None
    child: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class RunHistory:
    id: str
    workflow: str
    version: str | None
    status: str
    shard: int
    created_at: float
    updated_at: float
    finished_at: float | None
    events: int
    error: dict[str, Any] | None
    positions: tuple[Position, ...]
    waiting: tuple[Waiting, ...]
    # Which engine owns the run's shard by lease (docs/SCALE-OUT.md): "engine 2 (pid 4242 on
    # web-1)"; None: no engine owns it now.
    owner: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["positions"] = [p.to_dict() for p in self.positions]
        out["waiting"] = [w.to_dict() for w in self.waiting]
        return out


def _position(row: tuple[Any, ...], now: float) -> Position:
    (
        pos,
        kind,
        name,
        status,
        attempts,
        error,
        created_at,
        started_at,
        finished_at,
        seq,
        _limit_key,
        attempt,
        not_before,
        claim_engine,
        claimed_at,
        parked,
        fire_at,
        has_task,
        child,
        _child_status,
    ) = row
    if kind == "sleep":
        started_at = created_at
    until = engine = limit = None
    if status != "pending":
        state = status
    elif kind == "wait":
        state, until = SIGNAL, fire_at
    elif kind == "child":
        state = CHILD
    elif claim_engine is not None:
        state, engine = IN_FLIGHT, claim_engine
        started_at = started_at if started_at is not None else claimed_at
    elif parked is not None:
        state, limit = QUOTA_PARKED, parked
    elif has_task and not_before > now:
        # A failed attempt moves the task to its next attempt number; a quota wait does not.
        state = RETRY_WAIT if attempt > attempts else QUOTA_WAIT
        until = not_before
    elif has_task:
        state = QUEUED
    elif fire_at is not None:
        state, until = SLEEPING, fire_at
    else:
        state = SCHEDULED
    duration = None
    if finished_at is not None and started_at is not None:
        duration = max(0.0, finished_at - started_at)
    return Position(
        pos,
        kind,
        name,
        status,
        state,
        attempts,
        _error(error),
        created_at,
        started_at,
        finished_at,
        duration,
        seq,
        until,
        engine,
        limit,
        child,
    )


def _waiting_on(p: Position, not_before: float | None) -> Waiting:
    what = f"{p.kind} {p.name} (position {p.pos})"
    common: dict[str, Any] = {"pos": p.pos, "name": p.name}
    if p.state == IN_FLIGHT:
        return Waiting(
            IN_FLIGHT,
            f"{what} in flight on engine {p.engine}, attempt {p.attempts}",
            since=p.started_at,
            engine=p.engine,
            **common,
        )
    if p.state == RETRY_WAIT:
        return Waiting(
            RETRY_WAIT,
            f"{what} retries (attempt {p.attempts + 1}) after: {error_line(p.error)}",
            until=p.until,
            **common,
        )
    if p.state == QUOTA_WAIT:
        why = "a 429 from its API" if p.error and p.error.get("type") == "RateLimited" else None
        return Waiting(
            QUOTA_WAIT,
            f"{what} waits for its quota" + (f" ({why})" if why else ""),
            until=p.until,
            **common,
        )
    if p.state == QUOTA_PARKED:
        return Waiting(
            QUOTA_PARKED,
            f"{what} is parked until {p.limit} has room",
            limit=p.limit,
            **common,
        )
    if p.state == SIGNAL:
        topics = " or ".join(p.name.split("|"))
        timeout = "" if p.until is None else " (it times out)"
        return Waiting(
            SIGNAL, f"{what} waits for a signal on {topics}{timeout}", until=p.until, **common
        )
    if p.state == CHILD:
        return Waiting(CHILD, f"{what} waits for child run {p.child}", child=p.child, **common)
    if p.state == SLEEPING:
        return Waiting(SLEEPING, f"{what} sleeps", until=p.until, **common)
    if p.state == QUEUED:
        since = (
            p.scheduled_at if not not_before or not_before < 0 else max(p.scheduled_at, not_before)
        )
        return Waiting(QUEUED, f"{what} is queued for a free slot", since=since, **common)
    return Waiting(SCHEDULED, f"{what} waits for its run's replay", since=p.scheduled_at, **common)


def run_history(conn: Conn, run_id: str, now: float) -> RunHistory | None:
    """The run's journal and what it waits on, from one read snapshot; None if no such run."""
    conn.execute(conn.q["begin_read"])
    try:
        run = conn.execute(conn.q["history_run"], (run_id,)).fetchone()
        if run is None:
            return None
        rid = run[0]
        rows = conn.execute(conn.q["history_steps"], (rid,)).fetchall()
        replay = conn.execute(conn.q["history_replay"], (rid,)).fetchone()
        lease = conn.execute(conn.q["lease_of_shard"], (run[4],)).fetchone()
    finally:
        conn.execute("COMMIT")
    (
        _,
        id_,
        workflow,
        version,
        shard,
        status,
        _result,
        error,
        created,
        updated,
        finished,
        seq,
        _,
    ) = run
    positions = tuple(_position(r, now) for r in rows)
    run_error = _error(error)
    waiting: list[Waiting] = []
    if status == "parked":
        waiting.append(Waiting(PARKED, f"parked because {error_line(run_error)}", since=updated))
    elif status != "running":
        waiting.append(Waiting(FINISHED, f"{status}", since=finished))
    else:
        not_befores = {r[0]: r[12] for r in rows}
        waiting += [_waiting_on(p, not_befores[p.pos]) for p in positions if p.status == "pending"]
        if replay is not None:
            waiting.append(
                Waiting(
                    REPLAY,
                    f"a replay: the workflow has results up to event {replay[0]} to see",
                    since=replay[1],
                )
            )
        if not waiting:
            waiting.append(
                Waiting(
                    NOTHING,
                    "nothing queued, in flight, sleeping or to replay: run `executor check`",
                )
            )
    return RunHistory(
        id_,
        workflow,
        version,
        status,
        shard,
        created,
        updated,
        finished,
        seq,
        run_error,
        positions,
        tuple(waiting),
        _owner(lease),
    )


def _owner(lease: tuple[Any, ...] | None) -> str | None:
    if lease is None or lease[0] is None:
        return None
    engine, pid, host = lease
    return f"engine {engine} (pid {pid} on {host})"


class CurrentStep(NamedTuple):
    pos: int
    kind: str
    name: str
    status: str
    attempts: int
    error: dict[str, Any] | None


def current_step(conn: Conn, rid: int) -> CurrentStep | None:
    """The run's pending step with the highest position, else its last one; None if none."""
    row = conn.execute(conn.q["current_step"], (rid,)).fetchone()
    if row is None:
        return None
    pos, kind, name, status, attempts, error = row
    return CurrentStep(pos, kind, name, status, attempts, _error(error))


def runs_by_workflow(conn: Conn) -> list[tuple[str, str, int]]:
    """(workflow, status, runs) for every pair that has runs."""
    return [(w, s, n) for w, s, n in conn.execute(conn.q["runs_by_workflow"])]
