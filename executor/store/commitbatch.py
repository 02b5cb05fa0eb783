"""SQLite's replay commit of plain outputs, set-based: what a batch of replays produced for runs
that only asked for plain steps (or for nothing new), or that ended, in a few statements over
the whole batch, as PostgreSQL's commit_batch does in one (store/pghot.py).

repository.commit_each wrote such an output with four statements (the run's state, its step,
its task, its replay entry), each a hand-off of the GIL around sqlite3_step while the event loop
keeps it busy: a quarter of the database thread in the noop benchmark. Here the outputs and
their steps go into two temporary tables from two JSON arrays, and each fence and write below is
one statement: the same fences and writes as commit_each's, in the same transaction. Outputs
that park, wait, sleep, start children, carry payloads for the payload store, or end a run with
a parent or children stay on the per-row path.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from executor.store import payloads
from executor.store.conn import Conn
from executor.vocabulary import NewStep, NextClaim, ReplayOutput, StepKind

# Fewer outputs than this go through the per-row path: the dozen statements here cost more
# than four per output for a few (the long benchmark, one run: 0.49-0.54 against 0.43-0.46 ms
# of CPU per step with every commit set-based).
MIN_OUTPUTS = 8


def plain(out: ReplayOutput) -> bool:
    """Whether this output goes through `commit`: only plain steps, each with inline arguments
    (UTF-8 JSON, as the codec writes them); or the run's end, with an inline result and
    nothing new (a run with a parent or children is then left to the per-row path: `commit`
    finds out)."""
    if out.inactive or out.parked is not None:
        return False
    if out.finished is not None:
        return not out.new_steps and payloads.is_inline(out.result)
    step = StepKind.STEP
    return all(s.kind == step and payloads.is_inline(s.args) for s in out.new_steps)


Taken = list[tuple[ReplayOutput, NewStep]]  # the runs' own next steps a commit claimed


def commit(
    conn: Conn,
    outputs: Sequence[ReplayOutput],
    now: float,
    claim: NextClaim | None,
    counted: bool = False,
) -> tuple[int, list[ReplayOutput], list[ReplayOutput], Taken | None]:
    """Write `plain` outputs inside an open transaction. With `claim` (its epoch checked by the
    caller), each run's first `out.claimable` steps without a limit_key are inserted claimed when
    no task a claim of their shard would take first is queued (as claim_next_task); `counted`:
    with their first attempt counted when the claim took all of them (the last return value is
    not None), else the caller's count_claimed_attempts counts them. Returns the
    tasks written; the outputs whose run is no longer running in their generation (not written:
    the caller settles them as commit_each does); and those left to the per-row path (bytes
    that are not UTF-8, which JSON cannot carry; the end of a run with a parent or children).
    Last, each (output, step) it claimed, when the claim took every step it could (the usual
    case); else None: which of them went, the caller reads back."""
    rows = []
    steps: list[tuple[object, ...]] = []
    rest = []
    to_take: Taken = []
    for out in outputs:
        left = out.claimable if claim is not None else 0
        mine = []
        mine_taken = []
        try:
            for s in out.new_steps:
                take = left > 0 and s.limit_key is None
                left = left - 1 if take else 0
                args = None if s.args is None else s.args.decode()
                mine.append(
                    (out.run_rid, s.pos, out.shard, s.name, s.fingerprint, args, s.limit_key, take)
                )
                if take:
                    mine_taken.append((out, s))
            result = None if out.result is None else out.result.decode()
            error = None if out.error is None else out.error.decode()
        except UnicodeDecodeError:
            rest.append(out)
            continue
        finished = None if out.finished is None else str(out.finished)
        rows.append((out.run_rid, out.generation, out.consumed_seq, finished, result, error))
        steps += mine
        to_take += mine_taken
    if not rows:
        return 0, [], rest, []
    conn.execute(conn.q["commit_in_create"])
    conn.execute(conn.q["commit_in_steps_create"])
    conn.execute(conn.q["commit_in_add"], (orjson.dumps(rows).decode(),))
    conn.execute(conn.q["commit_in_live"])
    conn.execute(conn.q["commit_in_family"])
    stale: set[int] = set()
    family: set[int] = set()
    for rid, of_family in conn.execute(conn.q["commit_in_stale"]).fetchall():
        (family if of_family else stale).add(rid)
    if any(out.finished is not None for out in outputs):
        # finish_run, then run_left's drop_pending_work (no parent, no children: nothing else);
        # first, so that the claims below do not wait behind tasks that go now.
        conn.execute(conn.q["commit_in_finish"], {"now": now})
        conn.execute(conn.q["commit_in_finished_tasks"])
        conn.execute(conn.q["commit_in_finished_timers"])
        conn.execute(conn.q["commit_in_finished_waits"])
    queued = 0
    taken: Taken | None = []
    if steps:
        conn.execute(conn.q["commit_in_steps_add"], (orjson.dumps(steps).decode(),))
        conn.execute(conn.q["commit_in_steps_new"])
        conn.execute(conn.q["commit_in_queue"])
        if claim is not None:
            # Claimed where FIFO allows, then the others queued: a claim sees the batch's steps
            # it would take after them (queued just above), and a step that FIFO held back
            # holds back every later one of its shard too.
            got = conn.execute(
                conn.q["commit_in_claim"],
                {"token": claim.token, "engine": claim.engine, "epoch": claim.epoch, "now": now},
            ).rowcount
            taken = to_take if got == len(to_take) else None
            conn.execute(conn.q["commit_in_queue_rest"])
        # The steps after their tasks: when the claim took every step marked to take (each of
        # them new, then), those are written with their attempt counted.
        queued = conn.execute(
            conn.q["commit_in_steps_insert"],
            {"now": now, "counted": counted and claim is not None and taken is not None},
        ).rowcount
        conn.execute(conn.q["commit_in_steps_clear"])
    conn.execute(conn.q["commit_in_replays"])
    conn.execute(conn.q["commit_in_clear"])
    rest += [out for out in outputs if out.run_rid in family]
    return queued, [out for out in outputs if out.run_rid in stale], rest, taken
