"""Recording a batch of outcomes (repository.record), on both databases: at most once per step
(invariant 1), the task deleted in the same transaction (3), a replay entry for every run that got
a result (2), results numbered in batch order without a gap; whatever the batch mixes (a
duplicate beside its first, a late result beside the fresh one after a retry, other kinds).
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor.store import repository as repo
from executor.store.conn import Conn, SqliteConn
from executor.store.database import open_database
from executor.store.pgdatabase import PgConn
from executor.vocabulary import (
    NewRun,
    NewStep,
    Outcome,
    OutcomeKind,
    ReplayOutput,
    StepKind,
    StepState,
)
from tests.support.engine import database_config, is_postgres

NOW = 1000.0
ids = itertools.count()


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    """A connection of the test's dialect to a migrated database (one shard)."""

    async def migrate() -> None:
        db = await open_database(database_config(database_url), shards=1)
        await db.close()

    if is_postgres(database_url):
        with psycopg.connect(database_url, autocommit=True) as raw:
            yield PgConn(raw)
        return
    asyncio.run(migrate())
    c = sqlite3.connect(database_url, isolation_level=None, factory=SqliteConn)
    try:
        yield c
    finally:
        c.close()


def rows(conn: Conn, query: str, *args: Any) -> list[tuple[Any, ...]]:
    if conn.dialect == "postgres":
        query = query.replace("?", "%s")
    return [tuple(r) for r in conn.execute(query, args).fetchall()]


def runs_with_claimed_steps(conn: Conn, steps: list[int], token: int) -> list[int]:
    """One run per entry of `steps`, with that many steps in parallel, all claimed with `token`;
    nothing else queued. The runs' rids, in order."""
    conn.execute("DELETE FROM tasks")  # what earlier examples left queued is not ours to claim
    conn.execute("DELETE FROM replays")
    new = [NewRun(f"run-{next(ids)}", "wf", None, 0, b"[]", None) for _ in steps]
    repo.create_runs(conn, new, NOW)
    pending = repo.pending_replays(conn, len(new))
    assert len(pending) == len(new)
    outputs = [
        ReplayOutput(
            rid,
            0,
            seq,
            [NewStep(pos, StepKind.STEP, "s", "fp", b"[]", None) for pos in range(n)],
            generation=generation,
        )
        for (rid, seq, generation), n in zip(pending, steps, strict=True)
    ]
    repo.commit_replays(conn, outputs, NOW)
    epoch = conn.execute(conn.q["select_epoch"]).fetchone()[0]
    claimed = repo.claim(conn, 1, epoch, token, [(0, sum(steps))], NOW, limits=False)
    assert claimed is not None and len(claimed) == sum(steps)
    return [rid for rid, _, _ in pending]


def reclaim(conn: Conn, rid: int, pos: int, old: int, new: int) -> None:
    """The claim `old` of (rid, pos) is released (as a timeout or a crash would) and claimed
    again with token `new`: a result for `old` is now late."""
    released = Outcome(OutcomeKind.RELEASE, rid, pos, old, shard=0)
    assert repo.record(conn, [released], [], NOW).deliveries == []
    epoch = conn.execute(conn.q["select_epoch"]).fetchone()[0]
    claimed = repo.claim(conn, 1, epoch, new, [(0, 1)], NOW, limits=False)
    assert claimed is not None and [(c.run_rid, c.pos) for c in claimed] == [(rid, pos)]


def done(rid: int, pos: int, token: int, result: bytes) -> Outcome:
    return Outcome(OutcomeKind.DONE, rid, pos, token, StepState.SUCCEEDED, result, shard=0)


def test_a_duplicate_in_the_same_batch_as_its_first_is_dropped(conn: Conn) -> None:
    (rid,) = runs_with_claimed_steps(conn, [1], token=7)
    batch = [done(rid, 0, 7, b'"first"'), done(rid, 0, 7, b'"second"')]
    recorded = repo.record(conn, batch, [], NOW)
    assert [(d.run_rid, d.pos, d.seq, d.result) for d in recorded.deliveries] == [
        (rid, 0, 1, b'"first"')
    ]
    assert rows(conn, "SELECT status, result, seq FROM steps WHERE run_rid = ?", rid) == [
        ("succeeded", b'"first"', 1)
    ]
    assert rows(conn, "SELECT last_seq FROM runs WHERE rid = ?", rid) == [(1,)]
    assert rows(conn, "SELECT seq FROM replays WHERE run_rid = ?", rid) == [(1,)]
    assert rows(conn, "SELECT count(*) FROM tasks WHERE run_rid = ?", rid) == [(0,)]


@pytest.mark.parametrize("late_first", [True, False])
def test_a_late_result_after_a_retry_is_dropped_beside_the_fresh_one(
    conn: Conn, late_first: bool
) -> None:
    (rid,) = runs_with_claimed_steps(conn, [1], token=7)
    reclaim(conn, rid, 0, old=7, new=8)
    late, fresh = done(rid, 0, 7, b'"late"'), done(rid, 0, 8, b'"fresh"')
    recorded = repo.record(conn, [late, fresh] if late_first else [fresh, late], [], NOW)
    assert [(d.seq, d.result) for d in recorded.deliveries] == [(1, b'"fresh"')]
    assert rows(conn, "SELECT result, seq FROM steps WHERE run_rid = ?", rid) == [(b'"fresh"', 1)]
    assert rows(conn, "SELECT count(*) FROM tasks WHERE run_rid = ?", rid) == [(0,)]
    # And once more, alone, after it: still nothing.
    assert repo.record(conn, [done(rid, 0, 7, b'"later"')], [], NOW).deliveries == []
    assert rows(conn, "SELECT result FROM steps WHERE run_rid = ?", rid) == [(b'"fresh"',)]


def test_a_mixed_batch_numbers_each_runs_results_in_batch_order(conn: Conn) -> None:
    a, b, c = runs_with_claimed_steps(conn, [3, 1, 2], token=7)
    reclaim(conn, a, 1, old=7, new=8)
    batch = [
        done(a, 2, 7, b"2"),
        Outcome(OutcomeKind.RETRY, c, 0, 7, error=b'{"type": "E"}', not_before=NOW + 5, shard=0),
        done(a, 1, 7, b"late"),  # its claim is 8 now: dropped, and a's numbering has no gap
        done(b, 0, 7, b"0"),
        done(c, 1, 7, b"1"),
        done(a, 0, 7, b"0"),
        done(a, 2, 7, b"again"),  # a duplicate of the first outcome of the batch
        Outcome(OutcomeKind.RELEASE, a, 1, 7, shard=0),  # late too: the claim is not released
    ]
    recorded = repo.record(conn, batch, [], NOW)
    assert [(d.run_rid, d.pos, d.seq) for d in recorded.deliveries] == [
        (a, 2, 1),
        (b, 0, 1),
        (c, 1, 1),
        (a, 0, 2),
    ]
    steps = rows(conn, "SELECT run_rid, pos, status, seq FROM steps ORDER BY run_rid, pos")
    assert [s for s in steps if s[0] in (a, b, c)] == [
        (a, 0, "succeeded", 2),
        (a, 1, "pending", None),
        (a, 2, "succeeded", 1),
        (b, 0, "succeeded", 1),
        (c, 0, "pending", None),
        (c, 1, "succeeded", 1),
    ]
    assert rows(
        conn, "SELECT rid, last_seq FROM runs WHERE rid IN (?, ?, ?) ORDER BY rid", a, b, c
    ) == [
        (a, 2),
        (b, 1),
        (c, 1),
    ]
    assert rows(conn, "SELECT run_rid, seq FROM replays ORDER BY run_rid") == [
        (a, 2),
        (b, 1),
        (c, 1),
    ]
    # a's second step still belongs to claim 8; c's first was given back to the queue, retried.
    assert rows(
        conn, "SELECT run_rid, pos, claim_token, attempt FROM tasks ORDER BY run_rid, pos"
    ) == [
        (a, 1, 8, 1),
        (c, 0, None, 2),
    ]


# --- any batch, against a model of the fences ---------------------------------------------------


KINDS = [OutcomeKind.DONE] * 4 + [OutcomeKind.RETRY, OutcomeKind.RELEASE]
# An outcome to send: the step (run index, position), whose claim ("held": the task's claim now;
# "stale": an older one), and its kind.
Sent = tuple[tuple[int, int], str, OutcomeKind]


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int]], list[Sent]]:
    steps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    every = [(r, p) for r, n in enumerate(steps) for p in range(n)]
    reclaimed = draw(st.lists(st.sampled_from(every), unique=True, max_size=len(every)))
    sent = st.tuples(
        st.sampled_from(every), st.sampled_from(["held", "stale"]), st.sampled_from(KINDS)
    )
    return steps, reclaimed, draw(st.lists(sent, min_size=1, max_size=12))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=batches())
def test_any_batch_records_each_step_at_most_once_in_batch_order(
    conn: Conn, case: tuple[list[int], list[tuple[int, int]], list[Sent]]
) -> None:
    steps, reclaimed, batch = case
    rids = runs_with_claimed_steps(conn, steps, token=7)
    holder = {(rids[r], p): 7 for r, n in enumerate(steps) for p in range(n)}
    for n, (r, p) in enumerate(reclaimed):  # a new claim each (a claim reads back its token)
        reclaim(conn, rids[r], p, old=7, new=100 + n)
        holder[(rids[r], p)] = 100 + n

    outcomes = []
    for n, ((r, pos), which, kind) in enumerate(batch):
        held = holder[(rids[r], pos)]
        token = held if which == "held" else (6 if held == 7 else 7)
        if kind is OutcomeKind.DONE:
            outcomes.append(done(rids[r], pos, token, b"%d" % n))
        else:
            outcomes.append(Outcome(kind, rids[r], pos, token, not_before=NOW, shard=0))

    # The model: outcomes that finish a step first, in batch order, then the others.
    expected, tasks, last = [], dict(holder), dict.fromkeys(rids, 0)
    results: dict[tuple[int, int], tuple[bytes, int]] = {}
    for o in outcomes:
        key = (o.run_rid, o.pos)
        if o.kind is OutcomeKind.DONE and tasks.get(key) == o.token:
            del tasks[key]
            last[o.run_rid] += 1
            results[key] = (o.result or b"", last[o.run_rid])
            expected.append((o.run_rid, o.pos, last[o.run_rid], o.result))
    released = {
        (o.run_rid, o.pos)
        for o in outcomes
        if o.kind is not OutcomeKind.DONE and tasks.get((o.run_rid, o.pos)) == o.token
    }

    recorded = repo.record(conn, outcomes, [], NOW)
    assert [(d.run_rid, d.pos, d.seq, d.result) for d in recorded.deliveries] == expected
    for (rid, pos), held in holder.items():
        step = rows(
            conn, "SELECT status, result, seq FROM steps WHERE run_rid = ? AND pos = ?", rid, pos
        )
        if (rid, pos) in results:
            result, seq = results[(rid, pos)]
            assert step == [("succeeded", result, seq)]
        else:
            assert step == [("pending", None, None)]
        task = rows(conn, "SELECT claim_token FROM tasks WHERE run_rid = ? AND pos = ?", rid, pos)
        if (rid, pos) in results:
            assert task == []
        elif (rid, pos) in released:
            assert task == [(None,)]
        else:
            assert task == [(held,)]
    for rid in rids:
        assert rows(conn, "SELECT last_seq FROM runs WHERE rid = ?", rid) == [(last[rid],)]
        replay = rows(conn, "SELECT seq FROM replays WHERE run_rid = ?", rid)
        assert replay == ([(last[rid],)] if last[rid] else [])
