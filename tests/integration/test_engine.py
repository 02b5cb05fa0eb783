"""The engine on real SQLite files: claim order and size, fencing, retries, timeouts, durable
sleeps, cancellation, draining, reclaiming, and a second engine taking over.

Every test runs on plain asyncio and on uvloop. Workflows and steps are defined inside each test
on a private Registry, so their state (gates, counters) stays local to the test.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import uvloop

from executor import (
    Client,
    Engine,
    Registry,
    RetryPolicy,
    codec,
    errors,
    step,
    vocabulary,
    workflow,
)
from executor.store import engines, leases, sharding
from executor.store import repository as repo
from executor.store.database import Store, open_database

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory, WaitUntil

from tests.support.engine import database_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


DEADLINE_S = 15.0


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


def shard_key_for(shard: int, shards: int = 2) -> str:
    """A shard key that lands on `shard`."""
    return next(
        k for k in (f"key-{i}" for i in range(1000)) if sharding.shard_of(k, shards) == shard
    )


async def run_to_end(engine: Engine) -> None:
    async with asyncio.timeout(DEADLINE_S):
        await engine.wait()


# --- claim order and claim size ------------------------------------------------------------------


async def test_first_steps_run_in_creation_order(
    engine_factory: EngineFactory, database: Path | str
) -> None:
    reg = Registry()
    ran: list[tuple[int, int]] = []

    @step(registry=reg, name="mark")
    async def mark(i: int, part: int) -> int:
        ran.append((i, part))
        return i

    @workflow(registry=reg, name="two_marks")
    async def two_marks(ctx: Any, i: int) -> int:
        await mark(i, 0)
        return await mark(i, 1)

    async with Client(database, shards=1) as client:
        ids = [await client.start(two_marks, i) for i in range(5)]
        ids += await client.start_many(two_marks, [[i] for i in range(5, 20)])
        async with engine_factory(reg, shards=1, concurrency=1):
            results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
    assert results == list(range(20))
    assert [i for i, part in ran if part == 0] == list(range(20))
    assert sorted(ran) == [(i, p) for i in range(20) for p in (0, 1)]  # each exactly once


async def hand_made_queue(db: Store, runs: int, steps_per_run: int, shard: int) -> list[int]:
    """Runs with queued tasks, committed newest run first; return the rids, oldest first."""
    new = [vocabulary.NewRun(f"run-{i}", "wf", None, shard, b"[]", None) for i in range(runs)]
    await db.run(repo.create_runs, new, 1.0)
    rids = []
    for r in new:
        row = await db.run(repo.get_run, r.id)
        assert row is not None
        rids.append(row.rid)
    outputs = [
        vocabulary.ReplayOutput(
            rid,
            shard,
            0,
            [
                vocabulary.NewStep(pos, vocabulary.StepKind.STEP, "s", "fp", b"[]", None)
                for pos in range(steps_per_run)
            ],
        )
        for rid in reversed(rids)
    ]
    assert await db.run(repo.commit_replays, outputs, 2.0) == runs * steps_per_run
    return rids


async def test_claim_takes_the_oldest_run_first_and_at_most_n(database: Path | str) -> None:
    db = await open_database(database_config(database), shards=2)
    try:
        rids = await hand_made_queue(db, runs=4, steps_per_run=2, shard=1)
        engine_id, epoch = await db.run(engines.register_engine, 1, "test", 3.0)

        one = await db.run(repo.claim, engine_id, epoch, 7, [(1, 1)], 4.0)
        assert one is not None
        assert [(c.run_rid, c.pos, c.shard, c.attempt, c.token) for c in one] == [
            (rids[0], 0, 1, 1, 7)
        ]
        three = await db.run(repo.claim, engine_id, epoch, 8, [(0, 5), (1, 3)], 4.0)
        assert three is not None
        assert [(c.run_rid, c.pos) for c in three] == [(rids[0], 1), (rids[1], 0), (rids[1], 1)]
        assert await db.run(repo.claim, engine_id, epoch, 9, [(1, 0)], 4.0) == []
        rest = await db.run(repo.claim, engine_id, epoch, 9, [(1, 100)], 4.0)
        assert rest is not None and len(rest) == 4  # all that is left, not 100
        assert await db.run(repo.claim, engine_id, epoch, 10, [(1, 100)], 4.0) == []

        # An engine whose epoch is no longer current claims nothing and learns it must drain.
        await db.run(engines.bump_epoch)
        assert await db.run(repo.claim, engine_id, epoch, 11, [(1, 1)], 4.0) is None
    finally:
        await db.close()


async def test_claims_skip_tasks_not_yet_due(database: Path | str, dbfile: DbFile) -> None:
    db = await open_database(database_config(database), shards=1)
    try:
        rids = await hand_made_queue(db, runs=2, steps_per_run=1, shard=0)
        dbfile.execute("UPDATE tasks SET not_before = 100.0 WHERE run_rid = ?", rids[0])
        engine_id, epoch = await db.run(engines.register_engine, 1, "test", 3.0)
        early = await db.run(repo.claim, engine_id, epoch, 1, [(0, 5)], 50.0)
        assert early is not None and [c.run_rid for c in early] == [rids[1]]
        late = await db.run(repo.claim, engine_id, epoch, 2, [(0, 5)], 100.0)
        assert late is not None and [c.run_rid for c in late] == [rids[0]]
    finally:
        await db.close()


async def test_in_flight_steps_never_exceed_the_slots_of_their_shard(
    engine_factory: EngineFactory, client: Client
) -> None:
    reg = Registry()
    current = [0, 0]
    peak = [0, 0]

    @step(registry=reg, name="busy")
    async def busy(shard: int, i: int) -> int:
        current[shard] += 1
        peak[shard] = max(peak[shard], current[shard])
        try:
            await asyncio.sleep(0.005)  # stands in for work, so that steps overlap
        finally:
            current[shard] -= 1
        return i

    @workflow(registry=reg, name="fan_out")
    async def fan_out(ctx: Any, shard: int, n: int) -> list[int]:
        return list(await asyncio.gather(*(busy(shard, i) for i in range(n))))

    ids = [
        await client.start(fan_out, shard, 8, shard_key=shard_key_for(shard))
        for shard in (0, 1, 0, 1)
    ]
    async with engine_factory(reg, concurrency=3) as engine:
        for r in ids:
            assert await client.result(r, timeout=DEADLINE_S) == list(range(8))
        assert engine.counters["steps"] == 32
    assert peak == [3, 3]  # full use of the slots, never more
    assert current == [0, 0]


# --- fencing of duplicate and late results -------------------------------------------------------


async def one_claimed_step(
    db: Store, *, heartbeat_at: float
) -> tuple[int, int, vocabulary.Claimed]:
    """A run with one queued step, claimed by a new engine registered at `heartbeat_at`."""
    [rid] = await hand_made_queue(db, runs=1, steps_per_run=1, shard=0)
    engine_id, epoch = await db.run(engines.register_engine, 1, "test", heartbeat_at)
    claimed = await db.run(repo.claim, engine_id, epoch, 100 + engine_id, [(0, 1)], heartbeat_at)
    assert claimed is not None and len(claimed) == 1
    return rid, engine_id, claimed[0]


def done(c: vocabulary.Claimed, result: object, token: int | None = None) -> vocabulary.Outcome:
    return vocabulary.Outcome(
        vocabulary.OutcomeKind.DONE,
        c.run_rid,
        c.pos,
        c.token if token is None else token,
        vocabulary.StepState.SUCCEEDED,
        orjson.dumps(result),
    )


async def test_a_second_result_for_the_same_claim_is_dropped(
    database: Path | str, dbfile: DbFile
) -> None:
    db = await open_database(database_config(database), shards=1)
    try:
        rid, _, c = await one_claimed_step(db, heartbeat_at=time.time())
        first = (await db.run(repo.record, [done(c, "first")], [], 10.0)).deliveries
        assert [(e.run_rid, e.pos, e.seq, e.result) for e in first] == [(rid, 0, 1, b'"first"')]
        assert (await db.run(repo.record, [done(c, "second")], [], 11.0)).deliveries == []
        # Both in one batch: only the first counts.
        assert (
            await db.run(repo.record, [done(c, "third"), done(c, "fourth")], [], 12.0)
        ).deliveries == []
    finally:
        await db.close()
    assert dbfile.query("SELECT status, result, seq, finished_at FROM steps") == [
        ("succeeded", b'"first"', 1, 10.0)
    ]
    assert dbfile.value("SELECT last_seq FROM runs") == 1
    assert dbfile.value("SELECT count(*) FROM tasks") == 0
    assert dbfile.query("SELECT run_rid, seq FROM replays") == [(rid, 1)]


async def test_a_late_result_from_a_reclaimed_claim_never_overwrites(
    database: Path | str, dbfile: DbFile
) -> None:
    db = await open_database(database_config(database), shards=1)
    try:
        _, dead_engine, stale = await one_claimed_step(db, heartbeat_at=time.time() - 60)
        live_engine, epoch = await db.run(engines.register_engine, 2, "test", time.time())
        hb = await db.run(engines.heartbeat, live_engine, "running", time.time(), 15.0)
        assert hb.reclaimed == 1
        [fresh] = await db.run(repo.claim, live_engine, epoch, 555, [(0, 1)], time.time()) or []
        assert (fresh.run_rid, fresh.pos, fresh.token) == (stale.run_rid, stale.pos, 555)
        assert fresh.attempt == 1  # a reclaim is not a failed attempt

        # The dead engine wakes up: neither its retry, nor its release, nor its result count.
        late = [
            vocabulary.Outcome(
                vocabulary.OutcomeKind.RETRY, stale.run_rid, stale.pos, stale.token, not_before=1e12
            ),
            vocabulary.Outcome(
                vocabulary.OutcomeKind.RELEASE, stale.run_rid, stale.pos, stale.token
            ),
            done(stale, "late"),
        ]
        assert (await db.run(repo.record, late, [], 20.0)).deliveries == []
        assert dbfile.query("SELECT claim_token, claim_engine, not_before FROM tasks") == [
            (555, live_engine, 0.0)
        ]
        assert dbfile.value("SELECT status FROM steps") == "pending"
        events = (await db.run(repo.record, [done(fresh, "fresh")], [], 21.0)).deliveries
        assert [e.result for e in events] == [b'"fresh"']
        assert (await db.run(repo.record, [done(stale, "later still")], [], 22.0)).deliveries == []
    finally:
        await db.close()
    assert dbfile.query("SELECT status, result, attempts FROM steps") == [
        ("succeeded", b'"fresh"', 2)
    ]
    assert dbfile.value("SELECT state FROM engines WHERE id = ?", dead_engine) == "dead"


async def test_a_result_for_a_cancelled_run_is_dropped_and_its_task_deleted(
    database: Path | str, dbfile: DbFile
) -> None:
    db = await open_database(database_config(database), shards=1)
    try:
        _, engine_id, c = await one_claimed_step(db, heartbeat_at=time.time())
        assert await db.run(repo.cancel_run, "run-0", 5.0)
        # The claimed task stays until its engine notices the run is gone ...
        hb = await db.run(engines.heartbeat, engine_id, "running", time.time(), 15.0)
        assert hb.orphaned == [(c.run_rid, c.pos)]
        assert dbfile.value("SELECT count(*) FROM tasks") == 1
        # ... and its result then only deletes the task.
        assert (await db.run(repo.record, [done(c, "too late")], [], 6.0)).deliveries == []
    finally:
        await db.close()
    assert dbfile.value("SELECT count(*) FROM tasks") == 0
    assert dbfile.query("SELECT status, result FROM steps") == [("pending", None)]
    assert dbfile.query("SELECT status, last_seq FROM runs") == [("cancelled", 0)]
    assert dbfile.value("SELECT count(*) FROM replays") == 0


# --- retries, backoff and exhaustion -------------------------------------------------------------


def fast_retry(attempts: int, **kwargs: Any) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, initial_backoff_s=0.01, jitter=0.0, **kwargs)


async def test_a_step_failing_twice_then_succeeding(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile
) -> None:
    reg = Registry()
    calls: list[int] = []
    seen_by_third_attempt: list[tuple[Any, ...]] = []

    @step(registry=reg, name="flaky", retry=fast_retry(3))
    def flaky(x: int) -> int:  # a plain function: runs in a thread
        calls.append(x)
        if len(calls) < 3:
            raise ConnectionError(f"boom {len(calls)}")
        seen_by_third_attempt.extend(dbfile.query("SELECT attempts, error FROM steps"))
        return x * 10

    @workflow(registry=reg, name="uses_flaky")
    async def uses_flaky(ctx: Any, x: int) -> int:
        return await flaky(x)

    async with engine_factory(reg) as engine:
        run = await client.start(uses_flaky, 4)
        assert await client.result(run, timeout=DEADLINE_S) == 40
        assert engine.counters["retries"] == 2
    assert calls == [4, 4, 4]
    [(attempts, error)] = seen_by_third_attempt
    assert attempts == 3
    assert orjson.loads(error)["type"] == "ConnectionError"
    assert orjson.loads(error)["message"] == "boom 2"  # the last error, noted at the retry
    assert dbfile.query("SELECT status, attempts, result FROM steps") == [("succeeded", 3, b"40")]


async def test_exhausted_retries_raise_step_failed_inside_the_workflow(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile
) -> None:
    reg = Registry()
    calls: list[str] = []

    @step(registry=reg, name="always_fails", retry=fast_retry(2))
    async def always_fails(who: str) -> None:
        calls.append(who)
        raise ValueError(f"no {calls.count(who)}")

    @workflow(registry=reg, name="catches")
    async def catches(ctx: Any) -> list[Any]:
        try:
            await always_fails("catches")
        except errors.StepFailed as exc:
            return [exc.step, exc.error_type, exc.error["message"]]
        return ["not reached"]

    @workflow(registry=reg, name="lets_it_fly")
    async def lets_it_fly(ctx: Any) -> None:
        await always_fails("lets_it_fly")

    async with engine_factory(reg):
        caught = await client.start(catches)
        uncaught = await client.start(lets_it_fly)
        assert await client.result(caught, timeout=DEADLINE_S) == [
            "always_fails",
            "ValueError",
            "no 2",
        ]
        with pytest.raises(errors.WorkflowFailed) as info:
            await client.result(uncaught, timeout=DEADLINE_S)
    assert info.value.run_id == uncaught
    assert info.value.error["type"] == "StepFailed"
    assert info.value.error["message"] == "step always_fails failed: ValueError: no 2"
    assert "Traceback" in str(info.value.error["traceback"])
    status = await client.status(uncaught)
    assert status.status == "failed" and status.error == info.value.error
    assert sorted(calls) == ["catches"] * 2 + ["lets_it_fly"] * 2
    rows = dbfile.query("SELECT status, attempts, error FROM steps")
    assert [(s, a, orjson.loads(e)["message"]) for s, a, e in rows] == [("failed", 2, "no 2")] * 2


async def test_non_retryable_errors_fail_at_once(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile
) -> None:
    reg = Registry()
    calls: list[str] = []

    @step(registry=reg, name="picky", retry=fast_retry(5, non_retryable=(KeyError,)))
    async def picky(kind: str) -> None:
        calls.append(kind)
        raise KeyError(kind) if kind == "key" else RuntimeError(kind)

    @workflow(registry=reg, name="try_picky")
    async def try_picky(ctx: Any, kind: str) -> str:
        try:
            await picky(kind)
        except errors.StepFailed as exc:
            return exc.error_type
        return "no error"

    async with engine_factory(reg):
        key = await client.start(try_picky, "key")
        runtime = await client.start(try_picky, "runtime")
        assert await client.result(key, timeout=DEADLINE_S) == "KeyError"
        assert await client.result(runtime, timeout=DEADLINE_S) == "RuntimeError"
    assert calls.count("key") == 1
    assert calls.count("runtime") == 5
    assert sorted(dbfile.query("SELECT attempts FROM steps")) == [(1,), (5,)]


async def test_backoff_delays_grow_and_are_capped(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    wait_until: WaitUntil,
) -> None:
    reg = Registry()
    failed_at: list[float] = []
    policy = RetryPolicy(
        max_attempts=4, initial_backoff_s=30.0, multiplier=3.0, max_backoff_s=100.0, jitter=0.0
    )

    @step(registry=reg, name="hopeless", retry=policy)
    async def hopeless() -> None:
        failed_at.append(time.time())
        raise TimeoutError("remote did not answer")

    @workflow(registry=reg, name="hopes")
    async def hopes(ctx: Any) -> None:
        await hopeless()

    delays = []
    async with engine_factory(reg):
        run = await client.start(hopes)
        for attempt in (2, 3, 4):
            row = await wait_until(
                lambda a=attempt: dbfile.query(
                    "SELECT not_before FROM tasks WHERE attempt = ? AND claim_token IS NULL", a
                ),
                f"the retry before attempt {attempt}",
            )
            delays.append(row[0][0] - failed_at[-1])
            # Make it due now instead of waiting out the backoff.
            assert dbfile.execute("UPDATE tasks SET not_before = 0") == 1
        with pytest.raises(errors.WorkflowFailed, match="remote did not answer"):
            await client.result(run, timeout=DEADLINE_S)
    assert len(failed_at) == 4
    assert [round(d) for d in delays] == [30, 90, 100]
    assert all(abs(d - round(d)) < 1.0 for d in delays)


def test_backoff_policy_jitter_stays_in_its_band() -> None:
    import random

    policy = RetryPolicy(initial_backoff_s=1.0, multiplier=2.0, max_backoff_s=10.0, jitter=0.2)
    rng = random.Random(7)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        values = [policy.backoff_s(attempt, rng) for _ in range(200)]
        assert all(base * 0.8 <= v <= base * 1.2 for v in values)
        assert max(values) - min(values) > base * 0.2  # jitter does spread them
    with pytest.raises(errors.RegistryError):
        RetryPolicy(max_attempts=0)


# --- timeouts ------------------------------------------------------------------------------------


async def test_a_step_over_its_timeout_is_cancelled_and_retried(
    engine_factory: EngineFactory, dbfile: DbFile
) -> None:
    reg = Registry()
    calls: list[int] = []
    cancelled: list[int] = []

    @step(registry=reg, name="hangs_once", timeout=0.1, retry=fast_retry(2))
    async def hangs_once(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            try:
                await asyncio.Event().wait()  # never set: only the timeout ends this
            except asyncio.CancelledError:
                cancelled.append(x)
                raise
        return x

    @step(registry=reg, name="quick")
    async def quick(x: int) -> int:
        return x

    @workflow(registry=reg, name="slow_flow")
    async def slow_flow(ctx: Any) -> int:
        return await hangs_once(1)

    @workflow(registry=reg, name="quick_flow")
    async def quick_flow(ctx: Any, x: int) -> int:
        return await quick(x)

    async with Client(dbfile.path, shards=1) as one_shard:
        slow = await one_shard.start(slow_flow)  # oldest: claimed first, into the only slot
        quick_runs = [await one_shard.start(quick_flow, x) for x in range(3)]
        async with engine_factory(reg, shards=1, concurrency=1) as engine:
            # These can only run once the hung attempt gives its slot back.
            for x, r in enumerate(quick_runs):
                assert await client_result(one_shard, r) == x
            assert await client_result(one_shard, slow) == 1
            assert engine.counters["retries"] == 1
    assert cancelled == [1]
    assert calls == [1, 1]
    row = dbfile.query(
        "SELECT s.attempts, s.status FROM steps AS s JOIN runs AS r ON r.rid = s.run_rid"
        " WHERE r.id = ?",
        slow,
    )
    assert row == [(2, "succeeded")]


async def client_result(client: Client, run_id: str) -> Any:
    return await client.result(run_id, timeout=DEADLINE_S)


# --- durable sleep -------------------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # a whole second: one loop is enough
async def test_a_durable_sleep_survives_a_restart(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    wait_until: WaitUntil,
) -> None:
    reg = Registry()

    @step(registry=reg, name="after_nap")
    async def after_nap(x: int) -> int:
        return x + 1

    @workflow(registry=reg, name="napper")
    async def napper(ctx: Any, x: int) -> list[Any]:
        before = ctx.time()
        await ctx.sleep(1.0)
        slept = ctx.time() - before
        return [await after_nap(x), slept >= 1.0]

    async with engine_factory(reg):
        run = await client.start(napper, 41)
        timer = await wait_until(
            lambda: dbfile.query("SELECT pos, fire_at FROM timers"), "the timer row"
        )
    assert (await client.status(run)).status == "running"
    created = dbfile.value("SELECT created_at FROM runs")
    assert timer == dbfile.query("SELECT pos, fire_at FROM timers")  # still there after stop
    assert timer[0][0] == 0 and 0.99 <= timer[0][1] - created < 1.5
    assert dbfile.query("SELECT kind, name, status FROM steps") == [("sleep", "sleep", "pending")]

    async with engine_factory(reg) as engine:
        assert await client.result(run, timeout=DEADLINE_S) == [42, True]
        assert engine.counters["full_replays"] >= 1  # rebuilt from the journal
    assert dbfile.value("SELECT count(*) FROM timers") == 0
    assert dbfile.value("SELECT finished_at FROM steps WHERE pos = 0") >= timer[0][1]


# --- cancellation --------------------------------------------------------------------------------


async def test_cancelling_a_running_run(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    wait_until: WaitUntil,
) -> None:
    reg = Registry()
    started: list[int] = []
    saw_cancel: list[int] = []

    @step(registry=reg, name="held")
    async def held(i: int) -> int:
        started.append(i)
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends this
        except asyncio.CancelledError:
            saw_cancel.append(i)
            raise
        return i

    @step(registry=reg, name="free")
    async def free(i: int) -> int:
        return i

    @workflow(registry=reg, name="holds")
    async def holds(ctx: Any) -> list[int]:
        return list(await asyncio.gather(*(held(i) for i in range(4))))

    @workflow(registry=reg, name="frees")
    async def frees(ctx: Any) -> int:
        return await free(7)

    key = shard_key_for(0)
    async with engine_factory(reg, concurrency=1):
        run = await client.start(holds, shard_key=key)
        rid = dbfile.rid(run)
        await wait_until(lambda: started == [0], "the first step to start")
        assert dbfile.query(
            "SELECT pos, claim_token IS NOT NULL FROM tasks WHERE run_rid = ? ORDER BY pos", rid
        ) == [(0, 1), (1, 0), (2, 0), (3, 0)]

        assert await client.cancel(run) is True
        # Queued tasks go at once; the in-flight one stays until the engine notices.
        assert dbfile.query("SELECT pos FROM tasks WHERE claim_token IS NULL") == []
        await wait_until(lambda: saw_cancel == [0], "the in-flight step to be cancelled")
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM tasks") == 0, "its task row to go"
        )
        status = await client.status(run)
        assert status.status == "cancelled" and status.error is not None
        assert status.error["type"] == "Cancelled"
        with pytest.raises(errors.RunCancelled):
            await client.result(run, timeout=1)
        # The slot is free again for other work.
        other = await client.start(frees, shard_key=key)
        assert await client.result(other, timeout=DEADLINE_S) == 7
    assert started == [0]
    assert dbfile.query("SELECT DISTINCT status FROM steps WHERE run_rid = ?", rid) == [
        ("pending",)
    ]
    assert dbfile.stuck_runs() == []
    assert await client.cancel(run) is False
    with pytest.raises(errors.RunNotFound):
        await client.cancel("no-such-run")


# --- draining ------------------------------------------------------------------------------------


async def test_bump_epoch_drains_in_flight_steps_and_stops(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    wait_until: WaitUntil,
) -> None:
    reg = Registry()
    started: list[int] = []
    gates: dict[int, asyncio.Event] = {i: asyncio.Event() for i in range(4)}

    @step(registry=reg, name="gated")
    async def gated(i: int) -> int:
        started.append(i)
        await gates[i].wait()
        return i * 10

    @workflow(registry=reg, name="one_gated")
    async def one_gated(ctx: Any, i: int) -> int:
        return await gated(i)

    key = shard_key_for(1)
    ids = await client.start_many(one_gated, [[i] for i in range(4)], shard_keys=[key] * 4)
    async with engine_factory(reg, concurrency=2) as engine:
        await wait_until(lambda: len(started) == 2, "two steps in flight")
        first_epoch = engine.epoch
        assert await client.bump_epoch() == first_epoch + 1
        await wait_until(lambda: engine.draining, "the engine to notice the new epoch")
        assert engine.stop_reason == "a newer epoch took over"

        gates[started[0]].set()
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM steps WHERE status = 'succeeded'") == 1,
            "the first in-flight step to be recorded while draining",
        )
        gates[started[1]].set()
        await run_to_end(engine)
        assert engine.state is vocabulary.EngineState.STOPPED
        # A slot was free for a while, and queued work was there: it was not claimed.
        assert len(started) == 2
    assert dbfile.value("SELECT state FROM engines WHERE id = ?", engine.engine_id) == "stopped"
    assert dbfile.query("SELECT status, count(*) FROM steps GROUP BY status") == [
        ("pending", 2),
        ("succeeded", 2),
    ]
    assert dbfile.value("SELECT count(*) FROM tasks WHERE claim_token IS NOT NULL") == 0
    assert dbfile.value("SELECT count(*) FROM tasks") == 2
    assert [s.status for s in await client.list()] == ["running"] * 4
    assert dbfile.stuck_runs() == []

    for gate in gates.values():
        gate.set()
    async with engine_factory(reg):
        results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
    assert results == [0, 10, 20, 30]
    assert sorted(started) == [0, 1, 2, 3]  # the recorded two were not run again


async def test_steps_over_the_drain_timeout_go_back_to_the_queue(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()
    started: list[int] = []
    cancelled: list[int] = []
    release = asyncio.Event()

    @step(registry=reg, name="stubborn")
    async def stubborn(i: int) -> int:
        started.append(i)
        if len(started) == 1:
            try:
                await release.wait()  # only the drain timeout ends the first attempt
            except asyncio.CancelledError:
                cancelled.append(i)
                raise
        return i

    @workflow(registry=reg, name="one_stubborn")
    async def one_stubborn(ctx: Any) -> int:
        return await stubborn(9)

    run = await client.start(one_stubborn)
    async with engine_factory(reg, drain_timeout_s=0.05) as engine:
        await wait_until(lambda: started == [9], "the step to start")
        await engine.stop("test")
        assert cancelled == [9]
    # Released, not failed: the task is queued again and no error was recorded.
    assert dbfile.query("SELECT claim_token, attempt FROM tasks") == [(None, 1)]
    assert dbfile.query("SELECT status, error FROM steps") == [("pending", None)]
    assert dbfile.stuck_runs() == []
    async with engine_factory(reg):
        assert await client.result(run, timeout=DEADLINE_S) == 9
    assert started == [9, 9]


# --- reclaiming ----------------------------------------------------------------------------------


async def claim_for_ghost(
    client: Client, ids: list[str], heartbeat_at: float, state: str = "running"
) -> int:
    """Queue each run's first step (as the `squared` workflow asks for it) by hand, and claim
    them all for a fake engine that last heartbeated (and renewed its shard leases, with the
    tests' lease of 0.5s) at `heartbeat_at`."""
    db = client.db
    outputs = []
    for run_id in ids:
        row = await db.run(repo.get_run, run_id)
        assert row is not None
        snap = (await db.run(repo.load_runs, [row.rid]))[row.rid]
        blob = codec.encode(codec.decode(snap.args))
        new_step = vocabulary.NewStep(
            0, vocabulary.StepKind.STEP, "square", codec.fingerprint(blob), blob, None
        )
        outputs.append(vocabulary.ReplayOutput(row.rid, row.shard, 0, [new_step]))
    assert await db.run(repo.commit_replays, outputs, time.time()) == len(ids)
    ghost, epoch = await db.run(engines.register_engine, 4242, "ghost-host", heartbeat_at)
    if state != "running":
        await db.run(engines.heartbeat, ghost, state, heartbeat_at, 15.0)
    await db.run(leases.ensure, db.shards)
    await db.run(take_every_shard, ghost, heartbeat_at + 0.5)
    claimed = await db.run(repo.claim, ghost, epoch, 99, [(0, 100), (1, 100)], heartbeat_at)
    assert claimed is not None and len(claimed) == len(ids)
    return ghost


def take_every_shard(conn: Any, engine_id: int, expires_at: float) -> None:
    """Make `engine_id` the owner of every shard's lease until `expires_at` (a ghost's)."""
    mark = "%s" if conn.dialect == "postgres" else "?"
    conn.execute(
        f"UPDATE shard_leases SET owner = {mark}, epoch = epoch + 1, expires_at = {mark}",
        (engine_id, expires_at),
    )


def squares(reg: Registry, ran: list[int]) -> None:
    @step(registry=reg, name="square")
    async def square(i: int) -> int:
        ran.append(i)
        return i * i

    @workflow(registry=reg, name="squared")
    async def squared(ctx: Any, i: int) -> int:
        return await square(i)


async def test_claims_of_a_dead_engine_are_reclaimed(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()
    ran: list[int] = []
    squares(reg, ran)
    ids = await client.start_many("squared", [[i] for i in range(5)])
    ghost = await claim_for_ghost(client, ids, heartbeat_at=time.time() - 60)
    assert dbfile.stuck_runs() == []
    async with engine_factory(reg) as engine:
        results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
        # Its leases had run out: the engine took its shards at start, and its claims with them.
        assert dbfile.value("SELECT count(*) FROM shard_leases WHERE owner = ?", ghost) == 0
        assert dbfile.value(
            "SELECT count(*) FROM shard_leases WHERE owner = ?", engine.engine_id
        ) == dbfile.value("SELECT count(*) FROM shard_leases")
        await wait_until(
            lambda: dbfile.value("SELECT state FROM engines WHERE id = ?", ghost) == "dead",
            "a heartbeat of the engine to mark the ghost dead",
        )
    assert results == [i * i for i in range(5)]
    assert sorted(ran) == list(range(5))


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # waits out a lease: one loop is enough
async def test_claims_of_a_draining_engine_with_a_fresh_heartbeat_are_kept(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    wait_until: WaitUntil,
) -> None:
    reg = Registry()
    ran: list[int] = []
    squares(reg, ran)
    ids = await client.start_many("squared", [[i] for i in range(3)])
    ghost = await claim_for_ghost(client, ids, heartbeat_at=time.time(), state="draining")
    alive = True

    async def ghost_heartbeat() -> None:
        held = dict.fromkeys(range(client.db.shards), 1)
        while alive:
            await client.db.run(engines.heartbeat, ghost, "draining", time.time(), 15.0)
            tick = await client.db.run(
                leases.tick, ghost, held, {}, vocabulary.EngineState.DRAINING, time.time(), 0.5
            )
            held = tick.kept
            await asyncio.sleep(0.02)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(ghost_heartbeat())
        async with engine_factory(reg) as engine:
            # Several of the real engine's heartbeats (each one looks for dead engines) pass.
            await wait_until(
                lambda: (
                    dbfile.value(
                        "SELECT heartbeat_at - started_at FROM engines WHERE id = ?",
                        engine.engine_id,
                    )
                    >= 0.3
                ),
                "six heartbeats of the engine",
            )
            assert dbfile.value("SELECT count(*) FROM tasks WHERE claim_engine = ?", ghost) == 3
            assert dbfile.value("SELECT state FROM engines WHERE id = ?", ghost) == "draining"
            assert ran == []
            # The ghost goes quiet: after its lease its claims come back and get done.
            alive = False
            results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
            # The claims come back when the ghost's lease runs out; the engine marks it dead at
            # one of its next heartbeats, not necessarily before the results are in.
            await wait_until(
                lambda: dbfile.value("SELECT state FROM engines WHERE id = ?", ghost) == "dead",
                "a heartbeat of the engine to mark the ghost dead",
            )
    assert results == [0, 1, 4]
    assert sorted(ran) == [0, 1, 2]


# --- a second engine on the same file ------------------------------------------------------------


# On PostgreSQL a second daemon joins and shares the shards by lease (test_leases).
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_second_engine_makes_the_first_drain_and_stop(
    engine_factory: EngineFactory, client: Client, wait_until: WaitUntil
) -> None:
    reg = Registry()
    ran: dict[tuple[int, int], int] = {}

    @step(registry=reg, name="tick")
    async def tick(i: int, j: int) -> int:
        ran[i, j] = ran.get((i, j), 0) + 1
        await asyncio.sleep(0.002)  # stands in for work, so some steps are in flight
        return j

    @workflow(registry=reg, name="ticks")
    async def ticks(ctx: Any, i: int) -> int:
        total = 0
        for j in range(4):
            total += await tick(i, j)
        return total

    ids = await client.start_many(ticks, [[i] for i in range(20)])
    async with engine_factory(reg, concurrency=4) as first:
        await wait_until(lambda: len(ran) >= 10, "the first engine to get going")
        async with engine_factory(reg, concurrency=4) as second:
            await run_to_end(first)
            assert first.stop_reason == "a newer epoch took over"
            assert second.epoch == first.epoch + 1
            assert second.state is vocabulary.EngineState.RUNNING
            results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
    assert results == [6] * 20
    assert sorted(ran) == [(i, j) for i in range(20) for j in range(4)]
    assert set(ran.values()) == {1}  # a graceful hand-over runs nothing twice
    assert first.counters["steps"] > 0 and second.counters["steps"] > 0
