"""The transactions of runs and their journals, as plain functions of a connection (store/conn.py):
starting, claiming, recording, replaying, and the client's and operators' changes to runs
(engines and epochs are in store/engines.py, queue depths in store/queues.py).

Each public function here is one transaction (or one read) and runs on the database thread through
`Database.run`. The fencing that keeps the invariants lives here:

- a result is written only if the task still carries the claim that ran it, the step is still
  pending and the run is still running or parked (invariant 1: at most once, never overwritten);
- the task row is deleted in the same transaction that records its result (invariant 3);
- recording a result always queues a replay entry in the same transaction, and a replay entry is
  deleted only by the transaction that commits what its replay produced (invariant 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from executor import errors
from executor.errors import error_blob
from executor.store import (
    actions,
    children,
    claims,
    commitbatch,
    journal,
    leases,
    payloads,
    pghot,
    signals,
)
from executor.store.conn import Conn
from executor.store.database import transaction
from executor.store.leases import Fence
from executor.vocabulary import (
    UNREGISTERED,
    Claimed,
    Delivery,
    NewRun,
    NextClaim,
    Outcome,
    OutcomeKind,
    Recorded,
    ReplayOutput,
    RunRow,
    RunState,
    StepKind,
    StepState,
    Unpark,
)

# --- starting runs -------------------------------------------------------------------------------


@transaction
def create_runs(conn: Conn, runs: Sequence[NewRun], now: float) -> list[str]:
    """Insert runs and their first replay entries; return each run's id (an existing one for a
    repeated idempotency key of the same workflow with equal arguments).

    A key held by a run of another workflow, or with other arguments, raises IdempotencyConflict
    and starts nothing (the whole batch is rolled back).
    """
    before = conn.execute(conn.q["max_rid"]).fetchone()[0]
    stored = [payloads.put_args(conn, r.args, now) for r in runs]
    batch = _runs_json(runs, stored) if conn.dialect == "sqlite" else None
    if batch is not None:
        conn.execute(conn.q["insert_runs_json"], {"runs": batch, "now": now})
    else:
        conn.executemany(
            conn.q["insert_run"],
            [
                {
                    "id": r.id,
                    "workflow": r.workflow,
                    "version": r.version,
                    "shard": r.shard,
                    "args": args,
                    "key": r.idempotency_key,
                    "now": now,
                    "concurrency_key": r.concurrency_key,
                    "labels": r.labels,
                }
                for r, args in zip(runs, stored, strict=True)
            ],
        )
    conn.execute(conn.q["queue_new_runs"], (before,))
    ids = []
    for r in runs:
        if r.idempotency_key is None:
            ids.append(r.id)
            continue
        run_id, workflow, args, status = conn.execute(
            conn.q["run_id_by_key"], (r.idempotency_key,)
        ).fetchone()
        args = payloads.resolve(conn, args)  # large arguments are stored apart (a reference)
        if run_id != r.id and (
            workflow != r.workflow
            or (args != r.args and orjson.loads(args) != orjson.loads(r.args))
        ):
            what = "another workflow" if workflow != r.workflow else "other arguments"
            raise errors.IdempotencyConflict(
                f"idempotency key {r.idempotency_key!r} belongs to run {run_id} of workflow"
                f" {workflow} (status {status}), started with {what}; nothing was started"
            )
        ids.append(run_id)
    return ids


def _runs_json(runs: Sequence[NewRun], stored: Sequence[bytes | None]) -> bytes | None:
    """The batch as insert_runs_json takes it, or None where that statement would not store the
    same values: an argument blob that is not UTF-8 (the statement stores its text back with
    CAST AS BLOB), or a NUL anywhere (a payload reference, b"\\x00<id>", or a key holding one),
    since SQLite's JSON functions cut a string at an escaped NUL."""
    try:
        batch = orjson.dumps(
            [
                [
                    r.id,
                    r.workflow,
                    r.version,
                    r.shard,
                    None if args is None else args.decode(),
                    r.idempotency_key,
                    r.concurrency_key,
                    r.labels,
                ]
                for r, args in zip(runs, stored, strict=True)
            ]
        )
    except (UnicodeDecodeError, orjson.JSONEncodeError):
        return None
    return None if b"\\u0000" in batch else batch


# --- claiming (store/claims.py, under the name the engine has always called) ----------------------

claim = claims.claim


# --- recording results ---------------------------------------------------------------------------


def record(
    conn: Conn,
    outcomes: Sequence[Outcome],
    unparks: Sequence[Unpark],
    now: float,
    fence: Fence | None = None,
) -> Recorded:
    """Apply a batch of step outcomes, then unparks, in one transaction.

    Each outcome is fenced on its claim token: one whose task was reclaimed, released or already
    recorded changes nothing. With `fence`, outcomes of shards the engine no longer owns at the
    epoch it holds are not written either (counted in `refused`): the new owner requeued their
    claims when it took the shard, so the token fence would refuse them too; two fences. Unparks
    come after the outcomes, so one never misses a park of the same batch that it answers.
    """
    if conn.dialect == "postgres" and pghot.one_statement(outcomes, unparks):
        return pghot.record(list(outcomes), conn, now, fence)
    return _record(conn, outcomes, unparks, now, fence)


@transaction
def _record(
    conn: Conn,
    outcomes: Sequence[Outcome],
    unparks: Sequence[Unpark],
    now: float,
    fence: Fence | None,
) -> Recorded:
    refused = 0
    owned = leases.owned(conn, fence)
    if owned is not None:
        kept = [o for o in outcomes if o.shard in owned]
        refused, outcomes = len(outcomes) - len(kept), kept
    done = OutcomeKind.DONE  # a local name: faster than the class attribute, per outcome
    deliveries = journal.record_many([o for o in outcomes if o.kind is done], conn, now)
    for o in outcomes:
        if o.kind is done:
            continue  # recorded above
        if o.kind is OutcomeKind.RETRY or o.kind is OutcomeKind.RELEASE:
            changed = conn.execute(
                conn.q["retry_task"],
                {
                    "bump": 1 if o.kind is OutcomeKind.RETRY else 0,
                    "not_before": o.not_before,
                    "rid": o.run_rid,
                    "pos": o.pos,
                    "token": o.token,
                    "parked": o.park,
                },
            ).rowcount
            if changed and o.error is not None:
                conn.execute(conn.q["note_step_error"], (o.error, o.run_rid, o.pos))
        elif o.kind is OutcomeKind.PARK:
            held = conn.execute(
                conn.q["retry_task"],
                {
                    "bump": 0,
                    "not_before": 0.0,
                    "rid": o.run_rid,
                    "pos": o.pos,
                    "token": o.token,
                    "parked": UNREGISTERED,
                },
            ).rowcount
            if held:
                conn.execute(conn.q["park_run"], {"error": o.error, "now": now, "rid": o.run_rid})
        else:  # pragma: no cover
            raise ValueError(f"unknown outcome kind {o.kind}")
    short = []
    for u in unparks:
        found = conn.execute(conn.q["unpark_tasks"], {"parked": u.group, "limit": u.tasks}).rowcount
        if found < u.tasks:
            short.append(Unpark(u.group, u.tasks - found))
    return Recorded(deliveries, short, refused)


def fire_timers(conn: Conn, now: float, limit: int, fence: Fence | None = None) -> list[Delivery]:
    """Record every due durable sleep (up to limit) as finished; with `fence`, only those of
    the shards the engine owns at the epochs it holds."""
    # Look before taking the write lock: most polls find nothing due.
    if not _due_timers(conn, now, 1, fence):
        return []
    return _fire_due_timers(conn, now, limit, fence)


def _due_timers(
    conn: Conn, now: float, limit: int, fence: Fence | None
) -> list[tuple[int, int, str | None, int]]:
    """(run rid, pos, kind, shard) of due timers: every shard's, or the fence engine's."""
    if fence is None:
        return [(r, p, k, -1) for r, p, k in conn.execute(conn.q["due_timers"], (now, limit))]
    return [
        (r, p, k, shard)
        for r, p, k, shard in conn.execute(conn.q["due_timers_owned"], (now, fence.engine, limit))
    ]


@transaction
def _fire_due_timers(conn: Conn, now: float, limit: int, fence: Fence | None) -> list[Delivery]:
    events = []
    owned = leases.owned(conn, fence)
    for run_rid, pos, kind, shard in _due_timers(conn, now, limit, fence):
        if owned is not None and shard not in owned:
            continue
        event = _record_fired(conn, run_rid, pos, kind, now)
        if event is not None:
            events.append(event)
    return events


def _record_fired(
    conn: Conn, run_rid: int, pos: int, kind: str | None, now: float
) -> Delivery | None:
    if not conn.execute(conn.q["delete_timer"], (run_rid, pos)).rowcount:
        return None
    if kind == StepKind.WAIT:
        return signals.time_out(conn, run_rid, pos, now)
    return journal.record_one(conn, Outcome(OutcomeKind.DONE, run_rid, pos), now)


# --- replays -------------------------------------------------------------------------------------


def pending_replays(
    conn: Conn, limit: int, engine_id: int | None = None
) -> list[tuple[int, int, int]]:
    """(run rid, seq, the run's generation) of queued replays, oldest run first; with
    `engine_id`, only those of the shards that engine owns."""
    if engine_id is None:
        rows = conn.execute(conn.q["pending_replays"], (limit,))
    else:
        rows = conn.execute(conn.q["pending_replays_owned"], (engine_id, limit))
    return rows.fetchall()  # tuples already (both drivers' default rows): no copy per row


# The replay's reads (store/journal.py), under the names the engine has always called.
load_runs = journal.load_runs
load_deliveries = journal.load_deliveries


def commit_replays(
    conn: Conn,
    outputs: Sequence[ReplayOutput],
    now: float,
    fence: Fence | None = None,
    claim: NextClaim | None = None,
) -> int:
    """Commit what a batch of replays produced, deleting the replay entries they consumed.

    Replays are deterministic, so two engines replaying the same run produce the same steps:
    INSERT OR IGNORE makes a second copy harmless. Returns the number of tasks queued.

    An output is written only if its run is still running in the generation the replay read, in
    this transaction: a cancel or a retry committed by another process since the replay loaded
    the run must not get steps, tasks or timers of the old code path (out.dropped is set).
    With `fence`, neither is an output of a shard the engine no longer owns at the epoch it holds
    (its new owner replays the run from the journal).

    With `claim`, each output's first `out.claimable` new plain tasks (without a limit_key) are
    claimed in this transaction, as `claim` would claim them, when the stored epoch is still
    `claim.epoch` and no task a claim of their shard would take first is queued. Then the slots
    the outputs hold (`out.holds`) that their own steps did not take are filled from the head of
    each shard's queue, with the dispatcher's own claim (mark_claimed; PostgreSQL: claim_batch,
    after commit_batch). Each claimed task goes into the `claimed` of an output
    that holds its slot (its own run's first) once committed (and only then: a later failure
    leaves them there, claimed).
    """
    if conn.dialect == "postgres":  # the plain outputs in one statement (store/pghot.py)
        rows: list[Sequence[Any]] = []  # claimed, committed: filled even if a later part fails
        heads: list[tuple[Any, ...]] = []
        try:
            queued = pghot.commit_replays(conn, outputs, now, fence, commit_each, claim, rows)
            if claim is not None:
                heads = _claim_heads_pg(conn, outputs, rows, now, fence, claim)
            return queued
        finally:
            if (rows or heads) and claim is not None:
                got = claims.records(conn, rows, claim.token, claim.limits)
                token = claim.heads_token or claim.token
                _hand_claimed(outputs, got + claims.records(conn, heads, token, claim.limits))
    queued, claimed = _commit_replays(conn, outputs, now, fence, claim)
    _hand_claimed(outputs, claimed)
    return queued


def _heads(outputs: Sequence[ReplayOutput], taken: Sequence[int]) -> dict[int, int]:
    """The slots per shard that the outputs hold and their own claimed steps (`taken`: the
    shard of each) left: for the head of the shard's queue."""
    heads: dict[int, int] = {}
    for out in outputs:
        if out.holds:
            heads[out.shard] = heads.get(out.shard, 0) + out.holds
    for shard in taken:
        if shard in heads:
            heads[shard] -= 1
    return {shard: n for shard, n in heads.items() if n > 0}


def _claim_heads_pg(
    conn: Conn,
    outputs: Sequence[ReplayOutput],
    own: Sequence[Sequence[Any]],
    now: float,
    fence: Fence | None,
    claim: NextClaim,
) -> list[tuple[Any, ...]]:
    """PostgreSQL: claim_batch for the slots left, after the commit (its lease and epoch
    fences in it). Its own statement: a commit_batch alone is its own transaction."""
    heads = _heads(outputs, [row[2] for row in own])
    if not heads:
        return []
    wants = sorted(heads.items())
    token = claim.heads_token or claim.token
    return pghot.claim(conn, claim.engine, claim.epoch, token, wants, now, fence) or []


def _hand_claimed(outputs: Sequence[ReplayOutput], claimed: list[Claimed]) -> None:
    """Give each claimed task to an output that holds a slot for it: its own run's (its next
    step), else any other of its shard with a slot left (the head of the shard's queue)."""
    if not claimed:
        return
    by_run = {out.run_rid: out for out in outputs}
    room = {out.run_rid: max(out.holds, out.claimable) for out in outputs}
    heads: list[Claimed] = []
    for c in claimed:
        out = by_run.get(c.run_rid)
        if out is not None and room[c.run_rid] > 0:
            room[c.run_rid] -= 1
            out.claimed.append(c)
        else:
            heads.append(c)
    if not heads:
        return
    of_shard: dict[int, list[ReplayOutput]] = {}
    for out in outputs:
        if room[out.run_rid] > 0:
            of_shard.setdefault(out.shard, []).append(out)
    for c in heads:
        same = of_shard.get(c.shard)
        if not same:  # never, by construction (the heads' LIMIT): still, lose no task
            same = of_shard[c.shard] = [next(o for o in outputs if o.shard == c.shard)]
            room[same[0].run_rid] = 1
        out = same[0]
        room[out.run_rid] -= 1
        if room[out.run_rid] <= 0 and len(same) > 1:
            same.pop(0)
        out.claimed.append(c)


@transaction
def _commit_replays(
    conn: Conn,
    outputs: Sequence[ReplayOutput],
    now: float,
    fence: Fence | None,
    claim: NextClaim | None,
) -> tuple[int, list[Claimed]]:
    owned = leases.owned(conn, fence)
    if owned is not None:
        for out in outputs:
            out.dropped = out.shard not in owned
        outputs = [out for out in outputs if not out.dropped]
    if claim is not None and not any(out.claimable or out.holds for out in outputs):
        claim = None
    if claim is not None and conn.execute(conn.q["select_epoch"]).fetchone()[0] != claim.epoch:
        claim = None  # the dispatcher's next claim finds out, and the engine drains
    # The plain outputs set-based (store/commitbatch.py), the others a few statements each. A
    # claim of the first part may go before an extra step (beyond the slots its run holds) of
    # an older run that the second part queues: one step, in a commit mixing both kinds.
    fast: list[ReplayOutput] = []
    rest: list[ReplayOutput] = []
    if len(outputs) >= commitbatch.MIN_OUTPUTS:
        for out in outputs:
            (fast if commitbatch.plain(out) else rest).append(out)
    else:
        rest = list(outputs)
    heads_token = 0 if claim is None else claim.heads_token or claim.token
    # With the heads under a token apart, every task of claim.token is a step new in this
    # commit: the set-based part writes those it claimed with their attempt counted.
    counted = claim is not None and heads_token != claim.token
    queued, stale, left, taken = commitbatch.commit(conn, fast, now, claim, counted)
    counted = counted and taken is not None  # then the set-based part counted its claims
    for out in stale:
        _stale(conn, out)
    each: commitbatch.Taken = []  # what the per-row path claimed
    queued += commit_each(conn, [*left, *rest], now, claim, each)
    if claim is None:
        return queued, []
    if taken is not None:
        taken += each
    heads = _heads(outputs, ())
    got_heads = 0
    if heads:  # the slots the runs' own steps left, from the head of each shard's queue
        # What the runs' own steps took of each shard's slots: known from `taken` when it lists
        # them all, else counted once for the batch (a count per shard in the claim walked
        # every task of the token, and its row for the shard, once per shard).
        own: dict[int, int] = {}
        if taken is not None:
            for o, _ in taken:
                own[o.shard] = own.get(o.shard, 0) + 1
        else:
            own = dict(conn.execute(conn.q["claimed_by_shard"], (claim.token,)).fetchall())
        wants = [
            {
                "token": heads_token,
                "engine": claim.engine,
                "epoch": claim.epoch,
                "now": now,
                "shard": shard,
                "limit": n - own.get(shard, 0),
            }
            for shard, n in heads.items()
            if n > own.get(shard, 0)
        ]
        if wants:
            # The dispatcher's claim itself (claims.claim), for the slots left.
            got_heads = conn.executemany(conn.q["mark_claimed"], wants).rowcount
    # What the claim's last two statements do, for the tasks claimed above (those of the
    # set-based part already counted, when `counted`: then only the per-row path's, if any).
    if not counted:
        conn.execute(conn.q["count_claimed_attempts"], {"token": claim.token, "now": now})
    elif each:
        conn.execute(conn.q["count_claimed_attempts_new"], {"token": claim.token, "now": now})
    built = None if heads_token == claim.token or claim.limits else _built(taken, claim.token)
    if built is None:
        # One token, or not known which went, or the limiter's columns wanted: read back.
        rows = conn.execute(conn.q["select_claimed"], (claim.token,))
        claimed = claims.records(conn, rows, claim.token, claim.limits)
    else:
        claimed = built
    if heads_token != claim.token and got_heads:
        conn.execute(conn.q["count_claimed_attempts"], {"token": heads_token, "now": now})
        rows = conn.execute(conn.q["select_claimed"], (heads_token,))
        claimed += claims.records(conn, rows, heads_token, claim.limits)
    return queued, claimed


def _built(taken: commitbatch.Taken | None, token: int) -> list[Claimed] | None:
    """The Claimed a read back (select_claimed, claims.records) would give for the runs' own
    new steps this commit claimed, built from the outputs: a new task's first attempt, never
    unparked, its arguments the replay's (no limiter columns: the caller reads back then).
    None if that is not known (which steps went, an output without its run's id)."""
    if taken is None:
        return None
    out: list[Claimed] = []
    new = tuple.__new__  # a NamedTuple without its Python __new__: 0.2 against 0.45 us a row
    for o, s in taken:
        if not o.run_id or s.args is None:
            return None
        out.append(
            new(
                Claimed,
                (
                    o.run_rid,
                    s.pos,
                    o.shard,
                    1,
                    s.name,
                    s.args,
                    token,
                    None,
                    None,
                    False,
                    o.run_id,
                    o.workflow,
                ),
            )
        )
    return out


def commit_each(
    conn: Conn,
    outputs: Sequence[ReplayOutput],
    now: float,
    claim: NextClaim | None = None,
    taken: commitbatch.Taken | None = None,
) -> int:
    """commit_replays inside an open transaction, a statement or a few per output; with `claim`
    (epoch checked), a run's first `out.claimable` new plain tasks are inserted claimed when FIFO
    allows (claim_next_task, each then in `taken`), the caller counting their attempts."""
    queued = 0
    for out in outputs:
        if not out.inactive and _stale(conn, out):
            continue
        take = out.claimable if claim is not None else 0
        for s in out.new_steps:
            if s.kind == StepKind.EVENT:
                assert s.args is not None
                signals.publish(conn, out.run_rid, s.pos, s.name, s.fingerprint, s.args, now)
                continue
            if s.kind == StepKind.START:
                if conn.execute(
                    conn.q["insert_settled_step"],
                    (out.run_rid, s.pos, s.kind, s.name, s.fingerprint, s.args, now, now),
                ).rowcount:
                    children.start(conn, out.run_rid, s, False, now)
                continue
            if s.kind == StepKind.PATCH:  # a marker: settled when written, nothing to run
                conn.execute(
                    conn.q["insert_settled_step"],
                    (out.run_rid, s.pos, s.kind, s.name, s.fingerprint, None, now, now),
                )
                continue
            inserted = conn.execute(
                conn.q["insert_step"],
                (
                    out.run_rid,
                    s.pos,
                    s.kind,
                    s.name,
                    s.fingerprint,
                    payloads.put_args(conn, s.args, now),
                    now,
                ),
            ).rowcount
            if not inserted:
                continue
            if s.limit_key is not None:
                conn.execute(conn.q["set_step_limit_key"], (s.limit_key, out.run_rid, s.pos))
            if s.kind == StepKind.SLEEP:
                conn.execute(conn.q["insert_timer"], (out.run_rid, s.pos, out.shard, s.fire_at))
            elif s.kind == StepKind.WAIT:
                took = signals.open_wait(conn, out.run_rid, out.shard, s, now)
                if took is not None:
                    out.recorded.append(took)
            elif s.kind == StepKind.CHILD:
                children.start(conn, out.run_rid, s, True, now)
            else:
                queued += 1
                if take > 0 and claim is not None and s.limit_key is None:
                    args = {"rid": out.run_rid, "pos": s.pos, "shard": out.shard, "now": now}
                    args.update(token=claim.token, engine=claim.engine, epoch=claim.epoch)
                    if conn.execute(conn.q["claim_next_task"], args).rowcount:
                        take -= 1
                        if taken is not None:
                            taken.append((out, s))
                        continue
                take = 0  # FIFO: a later step of the run does not go before this one
                conn.execute(conn.q["insert_task"], (out.run_rid, s.pos, out.shard))
        if out.finished is not None:
            changed = conn.execute(
                conn.q["finish_run"],
                {
                    "status": out.finished,
                    "result": payloads.put(conn, out.result, now),
                    "error": out.error,
                    "now": now,
                    "rid": out.run_rid,
                },
            ).rowcount
            if changed:
                # Steps the workflow started but never awaited are abandoned with it, and so are
                # the children it never awaited (cancelled, with their own children).
                out.recorded.extend(
                    children.run_left(conn, out.run_rid, out.finished, out.result, out.error, now)
                )
            conn.execute(conn.q["delete_replay"], (out.run_rid,))
        elif out.parked is not None:
            conn.execute(conn.q["park_run"], {"error": out.parked, "now": now, "rid": out.run_rid})
            conn.execute(conn.q["delete_replay"], (out.run_rid,))
        elif out.inactive:
            conn.execute(
                conn.q["delete_inactive_replay"], (out.run_rid, out.consumed_seq, out.run_rid)
            )
        else:
            conn.execute(conn.q["delete_replay_through"], (out.run_rid, out.consumed_seq))
    return queued


def _stale(conn: Conn, out: ReplayOutput) -> bool:
    """Whether the output's run is no longer running in the generation its replay read (then
    it is dropped, nothing of it written)."""
    state = conn.execute(conn.q["run_state_for_commit"], (out.run_rid,)).fetchone()
    if state is not None and state[0] == RunState.RUNNING and state[1] == out.generation:
        return False
    out.dropped = True
    if state is not None and state[1] == out.generation:
        # Cancelled (or parked) in this generation: its entry, if any, is stale.
        conn.execute(conn.q["delete_inactive_replay"], (out.run_rid, out.consumed_seq, out.run_rid))
    return True


# --- client and operator -------------------------------------------------------------------------


def get_run(conn: Conn, run_id: str) -> RunRow | None:
    row = conn.execute(conn.q["select_run_by_id"], (run_id,)).fetchone()
    if row is None:
        return None
    run = RunRow(*row)
    if payloads.is_ref(run.result):  # read the row and its payload in one snapshot
        conn.execute(conn.q["begin_read"])
        try:
            run = RunRow(*conn.execute(conn.q["select_run_by_id"], (run_id,)).fetchone())
            run = run._replace(result=payloads.resolve(conn, run.result))
        finally:
            conn.execute("COMMIT")
    return run


def list_runs(conn: Conn, status: str | None, limit: int) -> list[RunRow]:
    conn.execute(conn.q["begin_read"])
    try:
        rows = [
            RunRow(*r)
            for r in conn.execute(conn.q["list_runs"], {"status": status, "limit": limit})
        ]
        return [
            r._replace(result=payloads.resolve(conn, r.result)) if payloads.is_ref(r.result) else r
            for r in rows
        ]
    finally:
        conn.execute("COMMIT")


@transaction
def cancel_run(conn: Conn, run_id: str, now: float) -> bool:
    """Cancel a running or parked run: its queued tasks, timers, waits and replay entry go
    away, its running children (and theirs) are cancelled too, and if it is a child its parent
    sees ChildCancelled; all in this one transaction.

    In-flight tasks stay until their engine notices (heartbeat) and cancels them; their results
    are then dropped by the fence, since the run is no longer running.
    """
    return cancel_in(conn, run_id, "cancelled by request", now)


def cancel_in(conn: Conn, run_id: str, reason: str, now: float) -> bool:
    """cancel_run inside a transaction that is already open."""
    error = error_blob("Cancelled", reason)
    row = conn.execute(conn.q["cancel_run"], {"id": run_id, "now": now, "error": error}).fetchone()
    if row is None:
        return False
    children.ended_by_operator(conn, row[0], RunState.CANCELLED, error, now)
    return True


@transaction
def resume_run(conn: Conn, run_id: str, now: float) -> bool:
    """Put a parked run back to running, with a replay entry so it is replayed against new code."""
    row = conn.execute(conn.q["resume_run"], {"id": run_id, "now": now}).fetchone()
    if row is None:
        return False
    actions.requeue_resumed(conn, row[0], row[1], row[2], now)
    return True


@transaction
def fail_parked_run(conn: Conn, run_id: str, reason: str, now: float) -> bool:
    error = error_blob("FailedByOperator", reason)
    row = conn.execute(
        conn.q["fail_parked_run"], {"id": run_id, "now": now, "error": error}
    ).fetchone()
    if row is None:
        return False
    children.ended_by_operator(conn, row[0], RunState.FAILED, error, now)
    return True


@transaction
def fail_pending_tasks(conn: Conn, shard: int, now: float) -> int:
    """Force-fail every queued task of a shard, so each workflow sees the failure and finishes."""
    failed = 0
    error = error_blob("ForceFailed", f"failed by an operator: fail_pending_tasks(shard={shard})")
    for run_rid, pos in conn.execute(conn.q["queued_tasks_of_shard"], (shard,)).fetchall():
        conn.execute(conn.q["delete_queued_task"], (run_rid, pos))
        if journal.record_one(
            conn, Outcome(OutcomeKind.DONE, run_rid, pos, status=StepState.FAILED, error=error), now
        ):
            failed += 1
    return failed


@transaction
def clear_task_queue(conn: Conn, shard: int, now: float) -> int:
    """Delete every queued task of a shard. The runs they belonged to are failed, saying why,
    rather than left running with nothing to make them progress (invariant 2)."""
    rids = {r for r, _ in conn.execute(conn.q["queued_tasks_of_shard"], (shard,)).fetchall()}
    error = error_blob("QueueCleared", f"task queue of shard {shard} cleared by an operator")
    for rid in rids:
        conn.execute(conn.q["delete_queued_tasks_of_run"], (rid,))
        if conn.execute(
            conn.q["fail_running_run"], {"rid": rid, "error": error, "now": now}
        ).rowcount:
            children.ended_by_operator(conn, rid, RunState.FAILED, error, now)
    return len(rids)


@transaction
def clear_replay_queue(conn: Conn, shard: int, now: float) -> int:
    """Delete every replay entry of a shard; their runs are failed, saying why (invariant 2)."""
    rids = [r for (r,) in conn.execute(conn.q["replays_of_shard"], (shard,)).fetchall()]
    error = error_blob("ReplayCleared", f"replay queue of shard {shard} cleared by an operator")
    conn.execute(conn.q["delete_replays_of_shard"], (shard,))
    for rid in rids:
        if conn.execute(
            conn.q["fail_running_run"], {"rid": rid, "error": error, "now": now}
        ).rowcount:
            children.run_left(conn, rid, RunState.FAILED, None, error, now)
    return len(rids)
