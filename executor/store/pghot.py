"""The hot transactions on PostgreSQL: claiming, recording finished steps and committing replays,
each one statement over arrays (store/postgres/hot.sql) instead of a statement per row.

store/repository.py calls these when `conn.dialect == "postgres"`, with the same arguments and
results as its SQLite path, and keeps every rarer case (retries, parks, unparks, waits, children,
published values, payloads to store) on the statements both dialects share. The fences are the
same as SQLite's: a result is written only while our claim holds its task, its step is pending
and its run running or parked (invariant 1), the task goes in the same transaction (3), and a
recorded result queues its run's replay in it (2); with a lease fence (store/leases.py), only
in shards we still own at the epochs we hold, checked in the statement itself. What differs is
that several processes write at once here: the statements lock the rows they decide on, or
re-read them under their locks (see hot.sql).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from executor.store import leases, payloads
from executor.store.conn import Conn
from executor.store.database import transaction
from executor.store.leases import Fence
from executor.vocabulary import (
    Delivery,
    NextClaim,
    Outcome,
    OutcomeKind,
    Recorded,
    ReplayOutput,
    StepKind,
    Unpark,
)

Each = Callable[[Conn, Sequence[ReplayOutput], float], int]


# The arrays of a batch go as PostgreSQL array literals (text, cast in the statement): psycopg
# adapts a Python list element by element in Python, a fifth of the database thread's time in a
# profile of the noop benchmark; these are one join each.


def _ints(items: Iterable[int | None]) -> str:
    return "{" + ",".join("NULL" if i is None else str(int(i)) for i in items) + "}"


def _texts(items: Iterable[str | None]) -> str:
    return (
        "{"
        + ",".join(
            "NULL" if t is None else '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for t in items
        )
        + "}"
    )


def _blobs(items: Iterable[bytes | None]) -> str:
    # bytea's hex input (\x...), its backslash escaped inside the quoted element.
    return "{" + ",".join("NULL" if b is None else '"\\\\x' + b.hex() + '"' for b in items) + "}"


def _bools(items: Iterable[bool]) -> str:
    return "{" + ",".join("t" if b else "f" for b in items) + "}"


def _lease(fence: Fence | None) -> dict[str, Any]:
    """The parameters of a statement's `lease` CTE."""
    if fence is None:
        return {"fenced": False, "me": None, "lshards": "{}", "lepochs": "{}"}
    return {
        "fenced": True,
        "me": fence.engine,
        "lshards": _ints(fence.epochs),
        "lepochs": _ints(fence.epochs.values()),
    }


def claim(
    conn: Conn,
    engine_id: int,
    epoch: int,
    token: int,
    wants: Sequence[tuple[int, int]],
    now: float,
    fence: Fence | None,
) -> list[tuple[Any, ...]] | None:
    """repository.claim: one statement, its own transaction. The claimed rows in FIFO order, in
    select_claimed's columns (claims.records makes them Claimed), or None if the epoch moved."""
    wanted = [(shard, n) for shard, n in wants if n > 0]
    rows = conn.execute(
        conn.q["claim_batch"],
        {
            "shards": _ints(s for s, _ in wanted),
            "limits": _ints(n for _, n in wanted),
            "epoch": epoch,
            "token": token,
            "engine": engine_id,
            "now": now,
            **_lease(fence),
        },
    ).fetchall()
    if not rows:
        # Nothing claimed: nothing queued, or the epoch moved (the statement claims nothing then).
        current = conn.execute(conn.q["select_epoch"]).fetchone()[0]
        return [] if current == epoch else None
    rows.sort(key=lambda r: (r[11], r[0], r[1]))  # FIFO: the run's root, the run, the position
    return [tuple(row[:11]) for row in rows]


def one_statement(outcomes: Sequence[Outcome], unparks: Sequence[Unpark]) -> bool:
    """Whether `record` alone is the whole record (it is then its own transaction): finished
    steps only, no unparks, and no result that goes to the payload store first."""
    done = OutcomeKind.DONE
    return not unparks and all(
        o.kind is done and payloads.is_inline(o.stored or o.result) for o in outcomes
    )


def record(done: list[Outcome], conn: Conn, now: float, fence: Fence | None) -> Recorded:
    """repository.record for finished steps, in one statement (record_batch); outcomes of
    shards the fence no longer lets through are refused (not written)."""
    if not done:
        return Recorded([], [])
    rows = conn.execute(
        conn.q["record_batch"],
        {
            "i": _ints(range(len(done))),
            "rid": _ints(o.run_rid for o in done),
            "pos": _ints(o.pos for o in done),
            "token": _ints(o.token for o in done),
            "status": _texts(str(o.status) for o in done),
            "result": _blobs(payloads.put(conn, o.stored or o.result, now) for o in done),
            "error": _blobs(o.error for o in done),
            "shard": _ints(o.shard for o in done),
            "now": now,
            **_lease(fence),
        },
    ).fetchall()
    events = []
    refused = 0
    for i, seq, owned in sorted(rows):
        if i < 0:
            if fence is not None:
                refused = sum(1 for o in done if o.shard not in owned)
            continue
        o = done[i]
        events.append(
            Delivery(o.run_rid, o.pos, seq, o.status, o.result, o.error, now, o.value, o.has_value)
        )
    return Recorded(events, [], refused)


def batchable(out: ReplayOutput) -> bool:
    """Whether commit_batch can write this output: plain steps only, and no step started by the
    output that finishes the run (those are abandoned at once: the per-row path does it)."""
    if out.inactive or out.parked is not None:
        return False
    if out.finished is not None and out.new_steps:
        return False
    return all(s.kind == StepKind.STEP for s in out.new_steps)


def commit_replays(
    conn: Conn,
    outputs: Sequence[ReplayOutput],
    now: float,
    fence: Fence | None,
    each: Each,
    claim: NextClaim | None = None,
    claimed: list[Sequence[Any]] | None = None,
) -> int:
    """repository.commit_replays: the batchable outputs in one statement (commit_batch), the
    others through `each` (repository.commit_each, a few statements per output).

    The statement is its own transaction when it is all there is: no other output, no payload
    to store first. Finished runs with a parent or children, which it leaves alone, then go
    through `each` in a transaction of their own (they are in shards it let through); else
    everything shares one transaction, fenced once at its start.

    With `claim`, the statement also claims the batchable outputs' next tasks (commit_batch);
    their rows, in select_claimed's columns, go to `claimed` as soon as they are committed.
    The outputs `each` writes are queued as before (not the hot path).
    """
    batch = [o for o in outputs if batchable(o)]
    rest = [o for o in outputs if not batchable(o)]
    if rest or not all(_inline(o) for o in batch):
        queued, rows = transaction(_commit_all)(conn, batch, rest, now, fence, each, claim)
        if claimed is not None:
            claimed.extend(rows)
        return queued
    queued, deferred, rows = commit_batch(conn, batch, now, fence, claim)
    if claimed is not None:
        claimed.extend(rows)
    if deferred:
        queued += transaction(each)(conn, deferred, now)
    return queued


def _commit_all(
    conn: Conn,
    batch: list[ReplayOutput],
    rest: list[ReplayOutput],
    now: float,
    fence: Fence | None,
    each: Each,
    claim: NextClaim | None,
) -> tuple[int, list[tuple[Any, ...]]]:
    owned = leases.owned(conn, fence)
    if owned is not None:
        for out in (*batch, *rest):
            out.dropped = out.shard not in owned
        batch = [o for o in batch if not o.dropped]
        rest = [o for o in rest if not o.dropped]
    queued, deferred, rows = commit_batch(conn, batch, now, None, claim)
    return queued + each(conn, deferred + rest, now), rows


def _inline(out: ReplayOutput) -> bool:
    return payloads.is_inline(out.result) and all(payloads.is_inline(s.args) for s in out.new_steps)


def commit_batch(
    conn: Conn,
    outputs: Sequence[ReplayOutput],
    now: float,
    fence: Fence | None,
    claim: NextClaim | None = None,
) -> tuple[int, list[ReplayOutput], list[tuple[Any, ...]]]:
    """Write the batchable outputs in one statement; mark those of shards the fence refused, and
    of runs no longer running in their generation, as dropped. Returns the tasks queued, the
    outputs left for the per-row path (finished runs with a parent or children), and the tasks
    it claimed (with `claim`) in select_claimed's columns."""
    if not outputs:
        return 0, [], []
    steps = [(out.run_rid, s) for out in outputs for s in out.new_steps]
    rows = conn.execute(
        conn.q["commit_batch"],
        {
            "rid": _ints(out.run_rid for out in outputs),
            "gen": _ints(out.generation for out in outputs),
            "consumed": _ints(out.consumed_seq for out in outputs),
            "finished": _texts(None if o.finished is None else str(o.finished) for o in outputs),
            "result": _blobs(
                None if out.finished is None else payloads.put(conn, out.result, now)
                for out in outputs
            ),
            "error": _blobs(out.error for out in outputs),
            "shard": _ints(out.shard for out in outputs),
            "srid": _ints(rid for rid, _ in steps),
            "spos": _ints(s.pos for _, s in steps),
            "sname": _texts(s.name for _, s in steps),
            "sfp": _texts(s.fingerprint for _, s in steps),
            "sargs": _blobs(payloads.put_args(conn, s.args, now) for _, s in steps),
            "skey": _texts(s.limit_key for _, s in steps),
            "stake": _bools(_to_claim(outputs, claim)),
            "token": None if claim is None else claim.token,
            "engine": None if claim is None else claim.engine,
            "epoch": None if claim is None else claim.epoch,
            "now": now,
            **_lease(fence),
        },
    ).fetchall()
    deferred_of = {rid: deferred for rid, deferred, _, _, _, _, _, _ in rows if rid >= 0}
    owned = next(set(shards) for rid, _, _, shards, _, _, _, _ in rows if rid == -1)
    queued = max((int(count) for rid, _, count, _, _, _, _, _ in rows if rid >= 0), default=0)
    claimed = []
    if claim is not None:
        step_of = {(rid, s.pos): s for rid, s in steps}
        shard_of = {out.run_rid: out.shard for out in outputs}
        for kind, _, rid, _, pos, run_id, workflow, ckey in rows:
            if kind == -2:
                s = step_of[(rid, pos)]
                # select_claimed's columns: a new task's first attempt, never unparked.
                claimed.append(
                    (
                        rid,
                        pos,
                        shard_of[rid],
                        1,
                        s.name,
                        s.args,
                        s.limit_key,
                        run_id,
                        workflow,
                        False,
                        ckey,
                    )
                )
        claimed.sort(key=lambda r: (r[0], r[1]))
    deferred = []
    for out in outputs:
        if fence is not None and out.shard not in owned:
            out.dropped = True  # its new owner replays the run from the journal
        elif out.run_rid not in deferred_of:
            out.dropped = True
            state = conn.execute(conn.q["run_state_for_commit"], (out.run_rid,)).fetchone()
            if state is not None and state[1] == out.generation:
                # Cancelled (or parked) in this generation: its entry, if any, is stale.
                conn.execute(
                    conn.q["delete_inactive_replay"], (out.run_rid, out.consumed_seq, out.run_rid)
                )
        elif deferred_of[out.run_rid]:
            deferred.append(out)
    return queued, deferred, claimed


def _to_claim(outputs: Sequence[ReplayOutput], claim: NextClaim | None) -> list[bool]:
    """Per new step (in the statement's order): whether to claim it for a slot its run holds.
    A run's first `out.claimable` steps without a limit_key, up to the first that has one (FIFO
    within the run); commit_batch still checks the epoch and the shard's older tasks."""
    take: list[bool] = []
    for out in outputs:
        left = out.claimable if claim is not None else 0
        for s in out.new_steps:
            ok = left > 0 and s.limit_key is None
            left = left - 1 if ok else 0
            take.append(ok)
    return take
