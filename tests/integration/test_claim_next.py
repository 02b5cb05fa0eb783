"""A run's next step claimed in the replay commit that queues it (issue 15): for the slot its run
holds, only when FIFO allows, exactly as the dispatcher's claim would have claimed it, on SQLite
and on PostgreSQL. Store-level tests drive repository.commit_replays with a NextClaim; engine
tests check the path is taken, stays out of limited steps, and that such a claim is reclaimed
like any other when its engine dies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from executor import Client, Registry, codec, step, workflow
from executor.store import commitbatch, engines, leases
from executor.store import repository as repo
from executor.store.database import Store, open_database
from executor.store.leases import Fence
from executor.vocabulary import NewRun, NewStep, NextClaim, ReplayOutput, RunState, StepKind

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory, WaitUntil

from tests.support.engine import database_config

pytestmark = pytest.mark.anyio

DEADLINE_S = 15.0


@pytest.fixture
def database(database_url: str) -> str:
    """Every test runs on SQLite and on PostgreSQL."""
    return database_url


@pytest.fixture(params=["set-based", "per-row"])
def commit_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """SQLite commits plain outputs set-based from commitbatch.MIN_OUTPUTS outputs on: each
    store test runs both ways (PostgreSQL has one path: it runs twice)."""
    monkeypatch.setattr(commitbatch, "MIN_OUTPUTS", 1 if request.param == "set-based" else 10**9)
    return str(request.param)


@pytest.fixture
async def db(database: Path | str, commit_path: str) -> AsyncIterator[Store]:
    store = await open_database(database_config(database), shards=2)
    try:
        await store.run(leases.ensure, store.shards)
        yield store
    finally:
        await store.close()


async def start(db: Store, n: int, shard: int = 0) -> list[int]:
    """Start n runs in `shard`; their rids, oldest first."""
    now = time.time()
    runs = [NewRun(f"run-{shard}-{i}-{now}", "wf", None, shard, b"[]", None) for i in range(n)]
    await db.run(repo.create_runs, runs, now)
    rows = [await db.run(repo.get_run, r.id) for r in runs]
    return [row.rid for row in rows if row is not None]


def steps(*positions: int, limit_key: str | None = None) -> list[NewStep]:
    blob = codec.encode([7])
    fp = codec.fingerprint(blob)
    return [NewStep(p, StepKind.STEP, "s", fp, blob, None, limit_key) for p in positions]


def output(rid: int, new: list[NewStep], claim: int = 0, shard: int = 0) -> ReplayOutput:
    return ReplayOutput(rid, shard, 0, new, claimable=claim)


async def own(db: Store, engine: int) -> Fence:
    """Make `engine` the owner of every shard (epoch + 1); the fence it writes under."""

    def take(conn: Any) -> dict[int, int]:
        mark = "%s" if conn.dialect == "postgres" else "?"
        conn.execute(f"UPDATE shard_leases SET owner = {mark}, epoch = epoch + 1", (engine,))
        return dict(conn.execute("SELECT shard, epoch FROM shard_leases").fetchall())

    return Fence(engine, await db.run(take))


async def registered(db: Store) -> tuple[int, int, Fence]:
    engine, epoch = await db.run(engines.register_engine, 1, "test", time.time())
    return engine, epoch, await own(db, engine)


async def test_the_commit_claims_as_the_dispatcher_would(db: Store, dbfile: DbFile) -> None:
    a, b = await start(db, 2)
    engine, epoch, fence = await registered(db)
    now = time.time()
    # Run a: queued, then claimed by the dispatcher's claim. Run b: claimed in its commit.
    await db.run(repo.commit_replays, [output(a, steps(0))], now, fence)
    [by_claim] = await db.run(repo.claim, engine, epoch, 41, [(0, 10)], now, True, fence) or []
    out = output(b, steps(0), claim=1)
    claim = NextClaim(engine, epoch, 42, True)
    assert await db.run(repo.commit_replays, [out], now, fence, claim) == 1
    [in_commit] = out.claimed
    assert in_commit._replace(run_rid=0, run_id="") == by_claim._replace(
        run_rid=0, run_id="", token=42
    )
    assert (in_commit.run_rid, in_commit.token, codec.decode(in_commit.args)) == (b, 42, [7])
    assert dbfile.query(
        "SELECT run_rid, claim_token, claim_engine, claim_epoch, claimed_at FROM tasks"
        " ORDER BY run_rid"
    ) == [(a, 41, engine, epoch, now), (b, 42, engine, epoch, now)]
    assert dbfile.query("SELECT run_rid, attempts, started_at FROM steps ORDER BY run_rid") == [
        (a, 1, now),
        (b, 1, now),
    ]


async def test_claims_built_from_the_output_are_those_read_back(db: Store) -> None:
    """With a token apart for the heads and no limiter, the commit builds its runs' own claims
    from the outputs instead of reading them back: the same Claimed as the dispatcher's."""
    a, b, c = await start(db, 3)
    engine, epoch, fence = await registered(db)
    now = time.time()
    await db.run(repo.commit_replays, [output(a, steps(0))], now, fence)
    [by_claim] = await db.run(repo.claim, engine, epoch, 50, [(0, 1)], now, False, fence) or []
    run_b = await db.run(repo.get_run, f"run-0-1-{by_claim.run_id.split('-', 3)[3]}")
    assert run_b is not None and run_b.rid == b
    mine = output(b, steps(0, 1), claim=1)
    mine.run_id, mine.workflow, mine.holds = run_b.id, "wf", 1
    ends_c = ends(c)
    claim = NextClaim(engine, epoch, 51, False, heads_token=52)
    await db.run(repo.commit_replays, [mine, ends_c], now, fence, claim)
    [built] = mine.claimed
    assert built == by_claim._replace(run_rid=b, token=51, run_id=run_b.id)
    # c's slot went to the head of the queue: b's second step, read back under its own token.
    assert [(t.run_rid, t.pos, t.token) for t in ends_c.claimed] == [(b, 1, 52)]


async def test_attempts_are_counted_once_for_own_claims_and_heads(
    db: Store, dbfile: DbFile
) -> None:
    """A token apart for the heads: the commit's own claimed steps are written with their first
    attempt counted, a head (here a retry waiting in the queue) gets one more, and the steps
    left queued none: as the dispatcher's claim counts them."""
    b, a, c = await start(db, 3)
    engine, epoch, fence = await registered(db)
    earlier = time.time() - 60
    await db.run(repo.commit_replays, [output(a, steps(0)), output(c, steps(0))], earlier, fence)

    def retried(conn: Any) -> None:
        mark = "%s" if conn.dialect == "postgres" else "?"
        conn.execute(
            f"UPDATE steps SET attempts = 2, started_at = {mark} WHERE run_rid = {mark}",
            (earlier, a),
        )

    await db.run(retried)
    now = time.time()
    mine = output(b, steps(0, 1), claim=1)
    mine.holds = 2
    claim = NextClaim(engine, epoch, 61, False, heads_token=62)
    await db.run(repo.commit_replays, [mine], now, fence, claim)
    # b's first step was claimed for it; its second is queued (FIFO: the slot left goes to the
    # oldest task of the shard, b's own second step).
    assert sorted((t.run_rid, t.pos, t.token) for t in mine.claimed) == [(b, 0, 61), (b, 1, 62)]
    assert dbfile.query("SELECT run_rid, pos, attempts, started_at FROM steps ORDER BY 1, 2") == [
        (b, 0, 1, now),
        (b, 1, 1, now),
        (a, 0, 2, earlier),
        (c, 0, 0, None),
    ]
    out = output(a, [], shard=0)
    out.holds = 1
    await db.run(repo.commit_replays, [out], now, fence, NextClaim(engine, epoch, 63, False, 64))
    assert [(t.run_rid, t.pos, t.token, t.attempt) for t in out.claimed] == [(a, 0, 64, 1)]
    assert dbfile.query("SELECT attempts, started_at FROM steps WHERE run_rid = ?", a) == [
        (3, earlier)
    ]


async def test_attempts_are_counted_for_what_went_when_fifo_held_a_step_back(
    db: Store, dbfile: DbFile
) -> None:
    """Of two runs' own next steps, FIFO holds one back (an older task queued in its shard):
    only the one claimed gets its attempt, and the slot left goes to the older task."""
    q, r = await start(db, 2)
    [t] = await start(db, 1, shard=1)
    engine, epoch, fence = await registered(db)
    now = time.time()
    await db.run(repo.commit_replays, [output(q, steps(0))], now, fence)
    mine = [output(r, steps(0), claim=1), output(t, steps(0), claim=1, shard=1)]
    for out in mine:
        out.holds = 1
    claim = NextClaim(engine, epoch, 71, False, heads_token=72)
    await db.run(repo.commit_replays, mine, now, fence, claim)
    assert [(c.run_rid, c.token) for c in mine[0].claimed] == [(q, 72)]
    assert [(c.run_rid, c.token) for c in mine[1].claimed] == [(t, 71)]
    assert dbfile.query("SELECT run_rid, attempts, started_at FROM steps ORDER BY 1") == [
        (q, 1, now),
        (r, 0, None),
        (t, 1, now),
    ]


async def test_at_most_the_slots_the_run_holds(db: Store, dbfile: DbFile) -> None:
    [a] = await start(db, 1)
    engine, epoch, fence = await registered(db)
    out = output(a, steps(0, 1, 2), claim=2)
    await db.run(repo.commit_replays, [out], time.time(), fence, NextClaim(engine, epoch, 5, True))
    assert [c.pos for c in out.claimed] == [0, 1]
    assert dbfile.query("SELECT pos, claim_token FROM tasks ORDER BY pos") == [
        (0, 5),
        (1, 5),
        (2, None),
    ]
    assert dbfile.query("SELECT pos, attempts FROM steps ORDER BY pos") == [(0, 1), (1, 1), (2, 0)]


async def test_an_older_runs_queued_task_in_the_shard_keeps_fifo(db: Store, dbfile: DbFile) -> None:
    older, newer = await start(db, 2)
    [elsewhere] = await start(db, 1, shard=1)
    engine, epoch, fence = await registered(db)
    now = time.time()
    await db.run(repo.commit_replays, [output(older, steps(0))], now, fence)
    # An older run's queued task in another shard does not hold it back: one in its own does.
    blocked = output(newer, steps(0), claim=1)
    free = output(elsewhere, steps(0), claim=1, shard=1)
    claim = NextClaim(engine, epoch, 6, True)
    await db.run(repo.commit_replays, [blocked, free], now, fence, claim)
    assert (blocked.claimed, [c.run_rid for c in free.claimed]) == ([], [elsewhere])
    assert dbfile.query("SELECT run_rid, claim_token FROM tasks ORDER BY run_rid") == [
        (older, None),
        (newer, None),
        (elsewhere, 6),
    ]
    # The dispatcher's claim then takes the older one first.
    got = await db.run(repo.claim, engine, epoch, 7, [(0, 1)], now, True, fence) or []
    assert [c.run_rid for c in got] == [older]


async def test_an_older_task_that_is_not_due_still_counts(db: Store) -> None:
    """The probe does not look at not_before (one index seek): a task of an older run waiting
    for its retry keeps newer runs of its shard on the dispatcher's claim."""
    older, newer = await start(db, 2)
    engine, epoch, fence = await registered(db)
    now = time.time()
    await db.run(repo.commit_replays, [output(older, steps(0))], now, fence)

    def later(conn: Any) -> None:
        conn.execute("UPDATE tasks SET not_before = 1e12")

    await db.run(later)
    out = output(newer, steps(0), claim=1)
    await db.run(repo.commit_replays, [out], now, fence, NextClaim(engine, epoch, 8, True))
    assert out.claimed == []


async def test_a_limit_key_step_and_those_after_it_are_queued(db: Store, dbfile: DbFile) -> None:
    [a] = await start(db, 1)
    engine, epoch, fence = await registered(db)
    new = [*steps(0, limit_key="k"), *steps(1)]
    out = output(a, new, claim=2)
    await db.run(repo.commit_replays, [out], time.time(), fence, NextClaim(engine, epoch, 9, True))
    assert out.claimed == []
    assert dbfile.query("SELECT pos, claim_token FROM tasks ORDER BY pos") == [(0, None), (1, None)]


async def test_a_new_epoch_or_a_stolen_shard_claims_nothing(db: Store, dbfile: DbFile) -> None:
    a, b = await start(db, 2)
    engine, epoch, fence = await registered(db)
    now = time.time()
    # A newer epoch (executor bump-epoch): the commit writes, claims nothing.
    await db.run(engines.bump_epoch)
    stale_epoch = output(a, steps(0), claim=1)
    await db.run(repo.commit_replays, [stale_epoch], now, fence, NextClaim(engine, epoch, 10, True))
    assert (stale_epoch.claimed, stale_epoch.dropped) == ([], False)
    assert dbfile.query("SELECT run_rid, claim_token FROM tasks") == [(a, None)]
    # The shard went to another engine: neither the output nor a claim is written.
    await own(db, 99)
    stolen = output(b, steps(0), claim=1)
    await db.run(repo.commit_replays, [stolen], now, fence, NextClaim(engine, epoch, 11, True))
    assert (stolen.claimed, stolen.dropped) == ([], True)
    assert dbfile.value("SELECT count(*) FROM tasks WHERE run_rid = ?", b) == 0


async def test_a_second_replay_of_the_same_steps_writes_no_second_task(
    db: Store, dbfile: DbFile
) -> None:
    """Two replays of a run (two engines, say) produce the same steps: the second commit adds
    no step, no task and claims nothing; its replay entry still goes."""
    a, b = await start(db, 2)
    engine, epoch, fence = await registered(db)
    now = time.time()
    await db.run(repo.commit_replays, [output(a, steps(0, 1))], now, fence)
    again, other = output(a, steps(0, 1), claim=1), output(b, steps(0), claim=1)
    claim = NextClaim(engine, epoch, 12, True)
    assert await db.run(repo.commit_replays, [again, other], now, fence, claim) == 1
    assert (again.claimed, again.dropped, other.claimed) == ([], False, [])
    assert dbfile.query("SELECT run_rid, pos, claim_token FROM tasks ORDER BY run_rid, pos") == [
        (a, 0, None),
        (a, 1, None),
        (b, 0, None),
    ]
    assert dbfile.value("SELECT count(*) FROM replays") == 0


async def test_a_cancelled_runs_output_is_dropped_beside_the_others(
    db: Store, dbfile: DbFile
) -> None:
    a, b = await start(db, 2)
    engine, epoch, fence = await registered(db)
    now = time.time()
    row = await db.run(repo.get_run, dbfile.value("SELECT id FROM runs WHERE rid = ?", a))
    assert row is not None and await db.run(repo.cancel_run, row.id, now)
    gone, kept = output(a, steps(0), claim=1), output(b, steps(0), claim=1)
    claim = NextClaim(engine, epoch, 13, True)
    assert await db.run(repo.commit_replays, [gone, kept], now, fence, claim) == 1
    assert (gone.dropped, gone.claimed, kept.dropped) == (True, [], False)
    assert [c.run_rid for c in kept.claimed] == [b]
    assert dbfile.query("SELECT run_rid, claim_token FROM tasks") == [(b, 13)]
    assert dbfile.query("SELECT run_rid FROM replays") == []


async def test_a_run_that_ends_drops_its_queued_work_and_every_replay_entry(
    db: Store, dbfile: DbFile
) -> None:
    a, b = await start(db, 2)
    engine, epoch, fence = await registered(db)
    now = time.time()
    await db.run(repo.commit_replays, [output(a, steps(0, 1)), output(b, steps(0))], now, fence)
    [in_flight] = await db.run(repo.claim, engine, epoch, 20, [(0, 1)], now, True, fence) or []
    assert (in_flight.run_rid, in_flight.pos) == (a, 0)

    def queued_again(conn: Any) -> None:  # results recorded since (seq 5): replays queued again
        mark = "%s" if conn.dialect == "postgres" else "?"
        for rid in (a, b):
            conn.execute(f"INSERT INTO replays VALUES ({mark}, 0, 5, 0)", (rid,))

    await db.run(queued_again)
    ends = ReplayOutput(a, 0, 0, [], finished=RunState.SUCCEEDED, result=b"3")
    goes_on = output(b, steps(1))
    assert await db.run(repo.commit_replays, [ends, goes_on], now + 1, fence) == 1
    assert dbfile.query("SELECT rid, status, result, finished_at FROM runs ORDER BY rid") == [
        (a, "succeeded", b"3", now + 1),
        (b, "running", None, None),
    ]
    # a's step that was never awaited goes; its claimed one stays until its result is fenced.
    assert dbfile.query("SELECT run_rid, pos, claim_token FROM tasks ORDER BY run_rid, pos") == [
        (a, 0, 20),
        (b, 0, None),
        (b, 1, None),
    ]
    # Every entry of a run that ended goes; another run's only up to the seq it consumed.
    assert dbfile.query("SELECT run_rid, seq FROM replays") == [(b, 5)]


# --- the head of the shard's queue for the slots a commit's runs leave -------------------------


def ends(rid: int, holds: int = 1, shard: int = 0) -> ReplayOutput:
    out = ReplayOutput(rid, shard, 0, [], finished=RunState.SUCCEEDED, result=b"1")
    out.holds = holds
    return out


async def test_a_run_that_ends_leaves_its_slot_to_the_head_of_the_queue(
    db: Store, dbfile: DbFile
) -> None:
    """Exactly the task, and the claim, the dispatcher's claim would have made for that slot:
    the oldest workflow's first, in the shard of the run that ended only; nothing deleted."""
    a, b, c = await start(db, 3)
    [elsewhere] = await start(db, 1, shard=1)
    engine, epoch, fence = await registered(db)
    now = time.time()
    await db.run(repo.commit_replays, [output(a, steps(0))], now, fence)
    queued = [output(c, steps(0, 1)), output(b, steps(0)), output(elsewhere, steps(0), shard=1)]
    await db.run(repo.commit_replays, queued, now, fence)
    [by_claim] = await db.run(repo.claim, engine, epoch, 30, [(0, 1)], now, True, fence) or []
    assert (by_claim.run_rid, by_claim.pos) == (a, 0)

    def unclaim(conn: Any) -> None:
        conn.execute("UPDATE tasks SET claim_token = NULL, claim_engine = NULL")
        conn.execute("UPDATE steps SET attempts = 0, started_at = NULL")

    await db.run(unclaim)
    out = ends(a, holds=2)  # a held two slots: its task and the next go to b's, then c's first
    await db.run(repo.commit_replays, [out], now, fence, NextClaim(engine, epoch, 31, True))
    got = [(t.run_rid, t.pos, t.token) for t in out.claimed]
    assert got == [(b, 0, 31), (c, 0, 31)]
    assert out.claimed[0] == by_claim._replace(
        run_rid=b, pos=0, token=31, run_id=out.claimed[0].run_id
    )
    # a's own task went with its end (never awaited); every other task is still there.
    assert dbfile.query("SELECT run_rid, pos, claim_token FROM tasks ORDER BY run_rid, pos") == [
        (b, 0, 31),
        (c, 0, 31),
        (c, 1, None),
        (elsewhere, 0, None),
    ]
    assert dbfile.query("SELECT run_rid, pos, attempts FROM steps WHERE attempts > 0") == [
        (b, 0, 1),
        (c, 0, 1),
    ]


async def test_own_next_steps_first_then_the_head_for_the_slots_left(
    db: Store, dbfile: DbFile
) -> None:
    older, newer, runner = await start(db, 3)
    engine, epoch, fence = await registered(db)
    now = time.time()
    await db.run(
        repo.commit_replays, [output(older, steps(0)), output(newer, steps(0))], now, fence
    )
    # `runner` holds three slots: the one for its own next step cannot go before the older
    # runs' queued tasks (FIFO); all three slots go to the shard's queue in its order.
    mine = output(runner, steps(0), claim=1)
    mine.holds = 3
    await db.run(repo.commit_replays, [mine], now, fence, NextClaim(engine, epoch, 32, True))
    assert [(t.run_rid, t.pos) for t in mine.claimed] == [(runner, 0), (older, 0), (newer, 0)]
    assert dbfile.value("SELECT count(*) FROM tasks WHERE claim_token IS NULL") == 0


async def test_heads_fill_the_slots_each_shards_own_claims_left(db: Store, dbfile: DbFile) -> None:
    """Runs of two shards claim their own next steps, then the heads of their own shard's queue
    for the slots left: what the own claims took is counted per shard, not over the batch."""
    x, q0 = await start(db, 2)
    y, q1, q2 = await start(db, 3, shard=1)
    engine, epoch, fence = await registered(db)
    now = time.time()
    queued = [output(q0, steps(0)), output(q1, steps(0), shard=1), output(q2, steps(0), shard=1)]
    await db.run(repo.commit_replays, queued, now, fence)
    mine = [output(x, steps(0), claim=1), output(y, steps(0), claim=1, shard=1)]
    for out in mine:
        out.holds = 2
    await db.run(repo.commit_replays, mine, now, fence, NextClaim(engine, epoch, 34, True))
    assert [(t.run_rid, t.pos) for t in mine[0].claimed] == [(x, 0), (q0, 0)]
    assert [(t.run_rid, t.pos) for t in mine[1].claimed] == [(y, 0), (q1, 0)]
    assert dbfile.query("SELECT run_rid FROM tasks WHERE claim_token IS NULL") == [(q2,)]


async def test_heads_skip_parked_and_not_due_tasks_and_stop_at_the_slots_held(
    db: Store, dbfile: DbFile
) -> None:
    a, parked, later, b, c = await start(db, 5)
    engine, epoch, fence = await registered(db)
    now = time.time()
    queued = [output(r, steps(0)) for r in (parked, later, b, c)]
    await db.run(repo.commit_replays, queued, now, fence)

    def hold_back(conn: Any) -> None:
        mark = "%s" if conn.dialect == "postgres" else "?"
        conn.execute(f"UPDATE tasks SET parked = 'g' WHERE run_rid = {mark}", (parked,))
        conn.execute(f"UPDATE tasks SET not_before = 1e12 WHERE run_rid = {mark}", (later,))

    await db.run(hold_back)
    out = ends(a)
    await db.run(repo.commit_replays, [out], now, fence, NextClaim(engine, epoch, 33, True))
    assert [t.run_rid for t in out.claimed] == [b]
    assert dbfile.value("SELECT count(*) FROM tasks") == 4


async def test_no_head_claimed_at_a_newer_epoch_or_in_a_shard_given_away(
    db: Store, dbfile: DbFile
) -> None:
    a, b, queued_run = await start(db, 3)
    engine, epoch, fence = await registered(db)
    now = time.time()
    await db.run(repo.commit_replays, [output(queued_run, steps(0))], now, fence)
    await db.run(engines.bump_epoch)
    first = ends(a)
    await db.run(repo.commit_replays, [first], now, fence, NextClaim(engine, epoch, 34, True))
    assert (first.claimed, first.dropped) == ([], False)
    await own(db, 99)
    second = ends(b)
    await db.run(repo.commit_replays, [second], now, fence, NextClaim(engine, epoch, 35, True))
    assert (second.claimed, second.dropped) == ([], True)
    assert dbfile.query("SELECT run_rid, claim_token FROM tasks") == [(queued_run, None)]


# --- in the engine -------------------------------------------------------------------------------


def chain(reg: Registry, ran: list[tuple[int, int]], k: int) -> None:
    @step(registry=reg, name="claim_next.link")
    async def link(i: int, j: int) -> int:
        ran.append((i, j))
        return j

    @workflow(registry=reg, name="claim_next.chain")
    async def chained(ctx: Any, i: int) -> int:
        total = 0
        for j in range(k):
            total += await link(i, j)
        return total


async def test_the_engine_runs_next_steps_claimed_in_the_commit(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile
) -> None:
    reg = Registry()
    ran: list[tuple[int, int]] = []
    chain(reg, ran, 5)
    ids = await client.start_many("claim_next.chain", [[i] for i in range(20)])
    async with engine_factory(reg) as engine:
        results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
        load = engine.load()
    assert results == [10] * 20
    assert sorted(ran) == [(i, j) for i in range(20) for j in range(5)]
    # Each run's first step comes from the dispatcher or, for a slot a run that ended left, a
    # commit (a head); most later ones from the commits.
    assert 0 < load["claimed_in_commit"] - load["heads_in_commit"] <= 20 * 4
    assert load["steps"] == 100
    assert dbfile.query("SELECT DISTINCT attempts FROM steps") == [(1,)]


async def test_limited_steps_are_claimed_only_as_the_dispatcher_would(
    engine_factory: EngineFactory, client: Client
) -> None:
    from executor.config import LimitSpec

    reg = Registry()

    @step(registry=reg, name="claim_next.paced", limits=["api"])
    async def paced(j: int) -> int:
        return j

    @workflow(registry=reg, name="claim_next.limited")
    async def limited(ctx: Any) -> int:
        return sum([await paced(j) for j in range(4)])

    ids = await client.start_many("claim_next.limited", [[] for _ in range(3)])
    spec = LimitSpec(name="api", requests_per_second=10_000)
    async with engine_factory(reg, limits=[spec]) as engine:
        results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
        load = engine.load()
    assert results == [6, 6, 6]
    # Never as a run's own next step; a commit may claim one for a slot its run leaves, with
    # the dispatcher's claim (mark_claimed), and the runner then asks the limiter as for any.
    assert load["claimed_in_commit"] == load["heads_in_commit"]


async def test_one_slot_runs_the_queue_in_order_through_the_heads(
    engine_factory: EngineFactory, client: Client
) -> None:
    """One slot per shard: each run that ends hands its slot to the oldest queued run of its
    shard in its commit, so the steps run one at a time, oldest workflow first."""
    reg = Registry()
    ran: list[tuple[int, int]] = []
    running: list[int] = []
    most = [0]

    @step(registry=reg, name="claim_next.one")
    async def one(i: int, j: int) -> int:
        running.append(i)
        most[0] = max(most[0], len(running))
        await asyncio.sleep(0.002)  # a step that takes a while: another in it would show
        running.remove(i)
        ran.append((i, j))
        return j

    @workflow(registry=reg, name="claim_next.two")
    async def two(ctx: Any, i: int) -> int:
        return await one(i, 0) + await one(i, 1)

    ids = await client.start_many("claim_next.two", [[i] for i in range(12)], shard_keys=["k"] * 12)
    async with engine_factory(reg, concurrency=1) as engine:
        assert [await client.result(r, timeout=DEADLINE_S) for r in ids] == [1] * 12
        load = engine.load()
    assert most == [1]
    assert ran == [(i, j) for i in range(12) for j in range(2)]
    assert load["heads_in_commit"] > 0


async def test_a_claim_of_a_crashed_engine_made_in_its_commit_is_reclaimed(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    """An engine claimed run a's next step in its replay commit and died before recording it (no
    stop: its claim stays, its heartbeat and leases age). The next engine reclaims it."""
    reg = Registry()
    ran: list[tuple[int, int]] = []
    chain(reg, ran, 2)
    [run] = await client.start_many("claim_next.chain", [[3]])
    db = client.db
    row = await db.run(repo.get_run, run)
    assert row is not None
    long_ago = time.time() - 60
    ghost, epoch = await db.run(engines.register_engine, 4242, "ghost-host", long_ago)
    await db.run(leases.ensure, db.shards)
    fence = await own(db, ghost)

    def expire(conn: Any) -> None:
        mark = "%s" if conn.dialect == "postgres" else "?"
        conn.execute(f"UPDATE shard_leases SET expires_at = {mark}", (long_ago,))

    blob = codec.encode([3, 0])
    first = NewStep(0, StepKind.STEP, "claim_next.link", codec.fingerprint(blob), blob, None)
    out = ReplayOutput(row.rid, row.shard, 0, [first], claimable=1)
    await db.run(repo.commit_replays, [out], long_ago, fence, NextClaim(ghost, epoch, 77, True))
    assert [c.pos for c in out.claimed] == [0]
    await db.run(expire)
    assert dbfile.query("SELECT claim_engine FROM tasks") == [(ghost,)]
    async with engine_factory(reg):
        assert await client.result(run, timeout=DEADLINE_S) == 1
        await wait_until(
            lambda: dbfile.value("SELECT state FROM engines WHERE id = ?", ghost) == "dead",
            "a heartbeat of the engine to mark the ghost dead",
        )
    assert ran == [(3, 0), (3, 1)]
    assert dbfile.query("SELECT pos, attempts FROM steps ORDER BY pos") == [(0, 2), (1, 1)]


async def test_a_step_claimed_in_the_commit_drained_at_stop_runs_again(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    """The engine stops while a step it claimed in a commit is in flight: cancelled by the
    drain, no outcome recorded, its claim goes back to the queue, the next engine runs it."""
    reg = Registry()
    gate = asyncio.Event()
    calls: list[int] = []

    @step(registry=reg, name="claim_next.first")
    async def first() -> int:
        return 1

    @step(registry=reg, name="claim_next.second")
    async def second() -> int:
        calls.append(1)
        if len(calls) == 1:
            await gate.wait()  # the first attempt never finishes
        return 2

    @workflow(registry=reg, name="claim_next.pair")
    async def pair(ctx: Any) -> int:
        return await first() + await second()

    run = await client.start(pair)
    async with engine_factory(reg, drain_timeout_s=0.2) as engine:
        await wait_until(lambda: calls == [1], "the second step in flight")
        assert engine.load()["claimed_in_commit"] == 1
    assert dbfile.query("SELECT pos, claim_token FROM tasks") == [(1, None)]
    async with engine_factory(reg):
        assert await client.result(run, timeout=DEADLINE_S) == 3
    assert calls == [1, 1]


async def test_children_end_through_the_per_row_path_when_commits_are_set_based(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every SQLite commit set-based: a child's end still goes into its parent's journal, and a
    parent that ends cancels the child it never awaited (children.run_left, per row)."""
    monkeypatch.setattr(commitbatch, "MIN_OUTPUTS", 1)
    reg = Registry()
    gate = asyncio.Event()

    @step(registry=reg, name="claim_next.wait_forever")
    async def wait_forever() -> int:
        await gate.wait()
        return 0

    @workflow(registry=reg, name="claim_next.leaf")
    async def leaf(ctx: Any, i: int) -> int:
        return await plus_one(i)

    @workflow(registry=reg, name="claim_next.stuck")
    async def stuck(ctx: Any) -> int:
        return await wait_forever()

    @step(registry=reg, name="claim_next.plus_one")
    async def plus_one(i: int) -> int:
        return i + 1

    @workflow(registry=reg, name="claim_next.parent")
    async def parent(ctx: Any) -> int:
        ctx.child(stuck)  # never awaited: cancelled when the parent ends
        return sum([await ctx.child(leaf, i) for i in range(3)])

    run = await client.start(parent)
    async with engine_factory(reg):
        assert await client.result(run, timeout=DEADLINE_S) == 6
        gate.set()
    runs = dict(dbfile.query("SELECT DISTINCT workflow, status FROM runs"))
    assert runs == {
        "claim_next.parent": "succeeded",
        "claim_next.leaf": "succeeded",
        "claim_next.stuck": "cancelled",
    }
