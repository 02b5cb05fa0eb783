"""The hot transactions on PostgreSQL: claiming, recording finished steps and committing replays,
each one statement over arrays (store/postgres/hot.sql) instead of a statement per row.

store/repository.py calls these when `conn.dialect == "postgres"`, with the same arguments and
results as its SQLite path, and keeps every rarer case (retries, parks, unparks, waits, children,
published values) on the statements both dialects share. The fences are the same as SQLite's:
a result is written only while our claim holds its task, its step is pending and its run running
or parked (invariant 1), the task goes in the same transaction (3), and a recorded result queues
its run's replay in it (2). What differs is that several processes write at once here: the
statements lock the rows they decide on, or re-read them under their locks (see hot.sql).
"""

from __future__ import annotations

from collections.abc import Sequence

from executor.store import children, journal, payloads
from executor.store.conn import Conn
from executor.vocabulary import (
    Claimed,
    Delivery,
    JournalEntry,
    Outcome,
    OutcomeKind,
    ReplayOutput,
    RunSnapshot,
    StepKind,
    Unpark,
)


def claim(
    conn: Conn,
    engine_id: int,
    epoch: int,
    token: int,
    wants: Sequence[tuple[int, int]],
    now: float,
    limits: bool,
) -> list[Claimed] | None:
    """repository.claim: one statement, its own transaction."""
    wanted = [(shard, n) for shard, n in wants if n > 0]
    rows = conn.execute(
        conn.q["claim_batch"],
        {
            "shards": [s for s, _ in wanted],
            "limits": [n for _, n in wanted],
            "epoch": epoch,
            "token": token,
            "engine": engine_id,
            "now": now,
        },
    ).fetchall()
    if not rows:
        # Nothing claimed: nothing queued, or the epoch moved (the statement claims nothing then).
        current = conn.execute(conn.q["select_epoch"]).fetchone()[0]
        return [] if current == epoch else None
    rows.sort(key=lambda r: (r[11], r[0], r[1]))  # FIFO: the run's root, the run, the position
    out: list[Claimed] = []
    for row in rows:
        run_rid, pos, shard, attempt, name, args, limit_key, run_id, workflow, unparked, ckey = row[
            :11
        ]
        if not limits:
            unparked, ckey = False, None
        if payloads.is_ref(args):
            args = payloads.resolve(conn, args)
        out.append(
            Claimed(
                run_rid,
                pos,
                shard,
                attempt,
                name,
                args,
                token,
                limit_key,
                ckey,
                bool(unparked),
                run_id,
                workflow,
            )
        )
    return out


def one_statement(outcomes: Sequence[Outcome], unparks: Sequence[Unpark]) -> bool:
    """Whether record_done alone is the whole record (it is then its own transaction): finished
    steps only, no unparks, and no result that goes to the payload store first."""
    done = OutcomeKind.DONE
    return not unparks and all(
        o.kind is done and payloads.is_inline(o.stored or o.result) for o in outcomes
    )


def record_done(done: list[Outcome], conn: Conn, now: float) -> list[Delivery]:
    """repository._record_done: finished steps in one statement (record_batch)."""
    if not done:
        return []
    rows = conn.execute(
        conn.q["record_batch"],
        {
            "i": list(range(len(done))),
            "rid": [o.run_rid for o in done],
            "pos": [o.pos for o in done],
            "token": [o.token for o in done],
            "status": [str(o.status) for o in done],
            "result": [payloads.put(conn, o.stored or o.result, now) for o in done],
            "error": [o.error for o in done],
            "now": now,
        },
    ).fetchall()
    events = []
    for i, seq in sorted(rows):
        o = done[i]
        events.append(
            Delivery(o.run_rid, o.pos, seq, o.status, o.result, o.error, now, o.value, o.has_value)
        )
    return events


def batchable(out: ReplayOutput) -> bool:
    """Whether commit_batch can write this output: plain steps only, and no step started by the
    output that finishes the run (those are abandoned at once: the per-row path does it)."""
    if out.inactive or out.parked is not None:
        return False
    if out.finished is not None and out.new_steps:
        return False
    return all(s.kind == StepKind.STEP for s in out.new_steps)


def commit_batch(conn: Conn, outputs: Sequence[ReplayOutput], now: float) -> int:
    """Inside repository.commit_replays' transaction: write the batchable outputs in one
    statement; then finish the trees of the finished runs that have a parent or children, and
    mark the outputs of runs no longer running in their generation as dropped. Returns the
    number of tasks queued."""
    if not outputs:
        return 0
    steps = [(out.run_rid, s) for out in outputs for s in out.new_steps]
    rows = conn.execute(
        conn.q["commit_batch"],
        {
            "rid": [out.run_rid for out in outputs],
            "gen": [out.generation for out in outputs],
            "consumed": [out.consumed_seq for out in outputs],
            "finished": [None if out.finished is None else str(out.finished) for out in outputs],
            "result": [
                None if out.finished is None else payloads.put(conn, out.result, now)
                for out in outputs
            ],
            "error": [out.error for out in outputs],
            "srid": [rid for rid, _ in steps],
            "spos": [s.pos for _, s in steps],
            "sname": [s.name for _, s in steps],
            "sfp": [s.fingerprint for _, s in steps],
            "sargs": [payloads.put_args(conn, s.args, now) for _, s in steps],
            "skey": [s.limit_key for _, s in steps],
            "now": now,
        },
    ).fetchall()
    tree = {rid: has_tree for rid, has_tree, _ in rows}
    for out in outputs:
        if out.run_rid not in tree:
            out.dropped = True
            state = conn.execute(conn.q["run_state_for_commit"], (out.run_rid,)).fetchone()
            if state is not None and state[1] == out.generation:
                # Cancelled (or parked) in this generation: its entry, if any, is stale.
                conn.execute(
                    conn.q["delete_inactive_replay"], (out.run_rid, out.consumed_seq, out.run_rid)
                )
        elif out.finished is not None and tree[out.run_rid]:
            # Its pending work went in the statement; its children go now, and a parent waiting
            # for it gets its entry (children.run_left does both, in this transaction).
            out.recorded.extend(
                children.run_left(conn, out.run_rid, out.finished, out.result, out.error, now)
            )
    return int(rows[0][2]) if rows else 0


def load_runs(conn: Conn, rids: list[int]) -> dict[int, RunSnapshot]:
    """repository.load_runs inside its read snapshot: two statements for the whole batch."""
    entries: dict[int, list[JournalEntry]] = {}
    for rid, *entry in conn.execute(conn.q["select_journals"], (rids,)):
        entries.setdefault(rid, []).append(JournalEntry(*entry))
    rows = {row[0]: row for row in conn.execute(conn.q["select_runs_for_replay"], (rids,))}
    return {
        rid: journal.snapshot(conn, rows[rid], entries.get(rid, [])) for rid in rids if rid in rows
    }
