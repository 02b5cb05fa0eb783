"""Repairing runs, in-process on real files: retry in place (and its generation fence), fork, every
run filter, actions by filter cut short and continued, purge giving space back, idempotency
conflicts, parking on unregistered names, takeover refusal, and the cancel race."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from executor import (
    Client,
    DatabaseConfig,
    Engine,
    EngineConfig,
    Registry,
    RetryPolicy,
    check,
    errors,
    step,
    workflow,
)
from executor.config import RetentionConfig
from executor.daemon import retention
from executor.runfilter import FilterError, RunFilter, parse_time
from executor.store import actions, sql
from executor.store import repository as repo
from executor.vocabulary import child_run_id

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory, WaitUntil

pytestmark = pytest.mark.anyio
# The test runs on SQLite only (the reason is beside each use).
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def database(database_url: str) -> str:
    """Every test here runs on SQLite and on PostgreSQL, but those marked SQLITE_ONLY."""
    return database_url


DEADLINE_S = 15.0
NO_RETRY = RetryPolicy(max_attempts=1)


def file_size(path: Path) -> int:
    return path.stat().st_size


def assert_clean(db_path: Path | str) -> None:
    report = check.check(db_path, lease_s=60.0)
    assert report.ok, report.summary()


class Outage:
    """Steps that fail while `down` is set, counting every time each (run, step) really ran."""

    def __init__(self, reg: Registry) -> None:
        self.down = False
        self.ran: dict[tuple[str, str], int] = {}
        outage = self

        @step(registry=reg, name="fetch", retry=NO_RETRY)
        async def fetch(key: str) -> str:
            outage.ran[(key, "fetch")] = outage.ran.get((key, "fetch"), 0) + 1
            return f"doc-{key}"

        @step(registry=reg, name="summarize", retry=NO_RETRY)
        async def summarize(key: str, doc: str) -> str:
            outage.ran[(key, "summarize")] = outage.ran.get((key, "summarize"), 0) + 1
            if outage.down:
                raise ConnectionError("provider overloaded")
            return f"summary of {doc}"

        @step(registry=reg, name="store", retry=NO_RETRY)
        async def store(key: str, text: str) -> str:
            outage.ran[(key, "store")] = outage.ran.get((key, "store"), 0) + 1
            return f"stored {text}"

        @workflow(registry=reg, name="pipeline")
        async def pipeline(ctx: Any, key: str) -> str:
            doc = await fetch(key)
            text = await summarize(key, doc)
            return await store(key, text)

        self.workflow = pipeline


async def finished(client: Client, ids: list[str], wait_until: WaitUntil) -> list[str]:
    async def all_done() -> list[str] | None:
        statuses = [(await client.status(i)).status for i in ids]
        return statuses if all(s not in ("running",) for s in statuses) else None

    result: list[str] = await wait_until(all_done, "the runs to finish")
    return result


# --- the run filter -------------------------------------------------------------------------------


def test_times_relative_absolute_and_unix() -> None:
    now = 1_800_000_000.0
    assert parse_time("2h", now) == now - 7200
    assert parse_time("30m", now) == now - 1800
    assert parse_time("1.5d", now) == now - 1.5 * 86400
    assert parse_time("2026-11-27T14:00", now) == parse_time("2026-11-27T14:00+00:00", now)
    assert parse_time("1700000000", now) == 1_700_000_000.0
    with pytest.raises(FilterError, match="--since: 'yesterday' is neither"):
        parse_time("yesterday", now, "--since")
    with pytest.raises(FilterError, match="unknown status 'done'"):
        RunFilter.parse(status=["failed,done"])
    with pytest.raises(FilterError, match="expected KEY=VALUE"):
        RunFilter.parse(label=["batch"])
    f = RunFilter.parse(status=["failed,cancelled", "failed"], label=["b=2", "a=1"], since="1h")
    assert f.statuses == ("failed", "cancelled")
    assert f.labels == (("a", "1"), ("b", "2"))
    assert RunFilter.from_json(f.to_json()) == f


async def test_every_filter(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()

    @step(registry=reg, name="app.steps.call_llm", retry=NO_RETRY)
    async def call_llm(kind: str) -> str:
        if kind == "overload":
            raise ConnectionError("provider Overloaded (529)")
        if kind == "bad":
            raise ValueError("bad prompt")
        return kind

    @workflow(registry=reg, name="ask")
    async def ask(ctx: Any, kind: str) -> str:
        return await call_llm(kind)

    @workflow(registry=reg, name="other")
    async def other(ctx: Any, kind: str) -> str:
        if kind == "crash":
            raise RuntimeError("workflow code crashed")
        return kind

    early = await client.start_many(ask, [["ok"], ["overload"]], labels={"batch": "1"})
    cutoff = time.time() - 50
    for run_id in early:  # started "a minute ago"
        dbfile.execute("UPDATE runs SET created_at = created_at - 100 WHERE id = ?", run_id)
    late = await client.start_many(ask, [["overload"], ["bad"]], labels={"batch": "2", "t": "x"})
    others = await client.start_many(other, [["ok"], ["crash"]])
    async with engine_factory(reg):
        await finished(client, early + late + others, wait_until)

    async def ids(**kw: Any) -> set[str]:
        page = await client.runs(RunFilter(**kw), limit=1000)
        assert await client.count(RunFilter(**kw)) == len(page.runs)
        return {st.id for st in page.runs}

    everything = set(early + late + others)
    assert await ids() == everything
    assert await ids(workflow="ask") == set(early + late)
    assert await ids(workflow="nope") == set()
    assert await ids(statuses=("failed",)) == {early[1], *late, others[1]}
    assert await ids(statuses=("failed", "succeeded")) == everything
    assert await ids(since=cutoff) == set(late + others)
    assert await ids(until=cutoff) == set(early)
    assert await ids(error="overloaded") == {early[1], late[0]}  # any case
    assert await ids(error="ConnectionError") == {early[1], late[0]}  # the step's error type
    assert await ids(error="StepFailed") == {early[1], *late}
    assert await ids(error="crashed") == {others[1]}
    assert await ids(step="call_llm") == {early[1], *late}  # the last dotted part
    assert await ids(step="app.steps.call_llm") == {early[1], *late}
    assert await ids(step="llm") == set()
    assert await ids(labels=(("batch", "2"),)) == set(late)
    assert await ids(labels=(("batch", "2"), ("t", "x"))) == set(late)
    assert await ids(labels=(("batch", "1"), ("t", "x"))) == set()
    assert await ids(statuses=("failed",), labels=(("batch", "1"),)) == {early[1]}
    st = await client.status(late[0])
    assert st.labels == {"batch": "2", "t": "x"}
    # Keyset pages, newest first, each run once.
    seen: list[str] = []
    cursor = None
    while True:
        page = await client.runs(limit=2, cursor=cursor)
        seen += [r.id for r in page.runs]
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == list(reversed(early + late + others))
    with pytest.raises(errors.ExecutorError, match="not a cursor"):
        await client.runs(cursor="abc")
    with pytest.raises(FilterError, match="label key"):
        await client.start(ask, "ok", labels={"bad key": "x"})


# --- retry in place -------------------------------------------------------------------------------


async def test_retry_after_an_outage_runs_only_what_had_not_succeeded(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()
    outage = Outage(reg)
    outage.down = True
    keys = [f"k{i}" for i in range(20)]
    ids = await client.start_many(outage.workflow, [[k] for k in keys], labels={"batch": "b1"})
    async with engine_factory(reg):
        assert set(await finished(client, ids, wait_until)) == {"failed"}
        assert await client.count(RunFilter(step="summarize", statuses=("failed",))) == 20
        outage.down = False
        point = await client.retry(ids[0])
        assert point == 1  # fetch (position 0) succeeded: kept
        report = await client.retry_runs(RunFilter(statuses=("failed",)), batch_size=7)
        assert (report.acted, report.skipped) == (19, 0)
        assert [await client.result(i, timeout=DEADLINE_S) for i in ids] == [
            f"stored summary of doc-{k}" for k in keys
        ]
    for k in keys:
        assert outage.ran[(k, "fetch")] == 1  # never again
        assert outage.ran[(k, "summarize")] == 2  # the failed attempt and the retry
        assert outage.ran[(k, "store")] == 1
    st = await client.status(ids[3])
    assert st.generation == 1 and st.status == "succeeded"
    with pytest.raises(errors.RunStateError, match=r"is succeeded.*fork it"):
        await client.retry(ids[3])
    with pytest.raises(errors.RunNotFound):
        await client.retry("no-such-run")
    assert dbfile.stuck_runs() == []
    assert_clean(dbfile.path)


async def test_retry_from_an_earlier_step_and_a_late_result_of_the_old_attempt(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()
    gate = asyncio.Event()
    calls: list[tuple[str, int]] = []

    @step(registry=reg, name="first")
    async def first(n: int) -> int:
        calls.append(("first", n))
        return n

    @step(registry=reg, name="slow")
    async def slow(n: int) -> str:
        calls.append(("slow", n))
        if len([c for c in calls if c[0] == "slow"]) == 1:
            await gate.wait()  # the first attempt hangs until the test lets it go
            return "late result of the old attempt"
        return "new result"

    @workflow(registry=reg, name="two")
    async def two(ctx: Any) -> list[Any]:
        return [await first(1), await slow(2)]

    # A slow heartbeat: the old attempt must not be cancelled as an orphan before it finishes.
    async with engine_factory(reg, heartbeat_interval_s=10.0, lease_s=30.0):
        run = await client.start(two)
        await wait_until(lambda: ("slow", 2) in calls, "the slow step to start")
        assert await client.cancel(run)
        # Retrying from position 0 drops everything, even the succeeded first step.
        assert await client.retry(run, from_step=0) == 0
        await wait_until(lambda: len([c for c in calls if c[0] == "slow"]) == 2, "a new attempt")
        assert await client.result(run, timeout=DEADLINE_S) == [1, "new result"]
        gate.set()  # the old attempt's result arrives now: its claim holds no task any more
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM tasks") == 0, "no task left", DEADLINE_S
        )
    assert calls.count(("first", 1)) == 2
    assert await client.result(run) == [1, "new result"]
    assert (await client.status(run)).generation == 1
    with pytest.raises(errors.RunStateError, match="outside its journal"):
        await client.fork(run, from_step=3)
    assert_clean(dbfile.path)


async def test_a_cancelled_runs_live_instance_is_rebuilt_after_a_retry(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    """The cancelled run's instance stays in the engine's cache with a higher last_seq than the
    retried journal: the generation makes the engine rebuild it instead of skipping the replay."""
    reg = Registry()
    release = asyncio.Event()
    seen: list[int] = []

    @step(registry=reg, name="quick")
    async def quick(i: int) -> int:
        return i

    @step(registry=reg, name="wait")
    async def wait_step(i: int) -> int:
        seen.append(i)
        await release.wait()
        return i

    @workflow(registry=reg, name="chain")
    async def chain(ctx: Any) -> int:
        total = 0
        for i in range(3):
            total += await quick(i)
        return total + await wait_step(10)

    async with engine_factory(reg) as engine:
        run = await client.start(chain)
        await wait_until(lambda: seen == [10], "the last step to start")
        assert engine.load()["live_workflows"] == 1  # its instance is cached
        assert await client.cancel(run)
        assert await client.retry(run, from_step=1) == 1
        release.set()
        assert await client.result(run, timeout=DEADLINE_S) == 13
    assert_clean(dbfile.path)


# --- fork -----------------------------------------------------------------------------------------


async def test_fork_from_a_middle_step_keeps_the_prefix_and_its_clock_and_randomness(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()
    ran: list[str] = []
    version = ["v1"]

    @step(registry=reg, name="draw")
    async def draw(tag: str, value: str) -> str:
        ran.append(tag)
        return value

    @step(registry=reg, name="finish")
    async def finish(prompt: str) -> str:
        ran.append("finish")
        return f"{version[0]}:{prompt}"

    @workflow(registry=reg, name="exp")
    async def exp(ctx: Any) -> dict[str, Any]:
        a = await draw("a", f"{ctx.uuid()}|{ctx.random()}|{ctx.time()}")
        b = await draw("b", f"{ctx.uuid()}|{ctx.random()}|{ctx.time()}")
        c = await finish(f"{ctx.uuid()}")
        return {"a": a, "b": b, "c": c}

    async with engine_factory(reg):
        source = await client.start(exp, labels={"batch": "x"})
        original = await client.result(source, timeout=DEADLINE_S)
        version[0] = "v2"  # today's code differs after the fork point
        fork = await client.fork(source, from_step=2)
        forked = await client.result(fork, timeout=DEADLINE_S)
        other = await client.fork(source, from_step=1, labels={"exp": "3"})
        again = await client.result(other, timeout=DEADLINE_S)
    assert forked["a"] == original["a"] and forked["b"] == original["b"]
    assert forked["c"] == original["c"].replace("v1", "v2")  # same uuid in the prompt
    assert again["a"] == original["a"]
    assert ran == ["a", "b", "finish", "finish", "b", "finish"]
    st = await client.status(fork)
    assert st.forked_from == source and st.labels == {"batch": "x"}
    assert (await client.status(other)).labels == {"exp": "3"}
    assert (await client.status(source)).generation == 0
    assert await client.result(source) == original
    assert_clean(dbfile.path)


# --- actions by filter ----------------------------------------------------------------------------


async def test_an_action_cut_short_continues_and_acts_on_each_run_once(
    client: Client, dbfile: DbFile
) -> None:
    reg = Registry()
    outage = Outage(reg)
    ids = await client.start_many(outage.workflow, [[f"k{i}"] for i in range(30)])
    for run_id in ids:  # a failure without an engine: cancel them
        await client.cancel(run_id)
    where = RunFilter(statuses=("cancelled",))
    # The first attempt: a batch of 10 commits, then the process "dies".
    spec = actions.spec_of("spec-1", {})
    state = await client.db.run(actions.begin_action, "retry", spec, where, time.time())
    batch = await client.db.run(actions.action_batch, state, "retry", {}, 0, 10, time.time())
    assert (batch.acted, batch.done) == (10, False)
    # Meanwhile the retried runs are cancelled again, and a new run starts.
    for run_id in ids[:10]:
        await client.cancel(run_id)
    newcomer = await client.start(outage.workflow, "new")
    await client.cancel(newcomer)
    report = await client.act("retry", where, spec="spec-1", batch_size=7)
    assert report.resumed and (report.acted, report.skipped) == (30, 0)
    generations = {
        run_id: dbfile.value("SELECT generation FROM runs WHERE id = ?", run_id)
        for run_id in [*ids, newcomer]
    }
    assert generations == {**dict.fromkeys(ids, 1), newcomer: 0}
    # Done: the same command again begins a new action.
    again = await client.act("retry", where, spec="spec-1")
    assert not again.resumed and again.acted == 11
    assert_clean(dbfile.path)


async def test_a_purge_and_a_retry_racing_for_the_same_runs_leave_each_run_whole(
    client: Client, dbfile: DbFile, database: str
) -> None:
    """Two operators at once, each on its own connection: on PostgreSQL nothing serializes them
    but the row locks of the retry and of the purge. Every run ends purged (gone, with all its
    rows) or retried (running, with its replay entry), never half of each."""
    n = 300
    await client.start_many("w", [[i] for i in range(n)])
    await client.cancel_runs(RunFilter())
    async with Client(database) as other:
        purged, retried = await asyncio.gather(
            client.purge_runs(RunFilter(statuses=("cancelled",)), batch_size=7),
            other.retry_runs(RunFilter(statuses=("cancelled",)), batch_size=5),
        )
    assert purged.acted + retried.acted == n, (purged, retried)
    assert dbfile.value("SELECT count(*) FROM runs") == retried.acted
    assert dbfile.value("SELECT count(*) FROM runs WHERE status = 'running'") == retried.acted
    assert dbfile.value("SELECT count(*) FROM replays") == retried.acted
    assert_clean(database)


async def test_an_action_begun_while_the_same_one_begins_continues_it(
    pg_url: str, wait_until: WaitUntil
) -> None:
    """PostgreSQL (SQLite's write lock serializes this): while one operator's transaction begins
    an action, a second operator with the same command waits for it, then continues that action
    instead of opening another beside it."""
    where = RunFilter(statuses=("cancelled",))
    spec = actions.spec_of(where.to_json(), {})
    async with Client(pg_url) as client:
        await client.start_many("w", [[i] for i in range(10)])
        await client.cancel_runs(RunFilter())
        with psycopg.connect(pg_url, autocommit=True) as first:
            first.execute("BEGIN")
            first.execute(sql.queries("postgres")["lock_action"], ("retry", spec))
            second = asyncio.ensure_future(client.retry_runs(where))

            def waiting() -> bool:
                row = first.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()
                return row is not None and row[0] == 1

            await wait_until(waiting, "the second operator to wait for the first")
            (began,) = first.execute(
                "INSERT INTO run_actions (action, spec, filter, phase, cutoff_rid, created_at,"
                " updated_at) SELECT 'retry', %s, %s, 'open', max(rid), 0, 0 FROM runs"
                " RETURNING id",
                (spec, where.to_json()),
            ).fetchone()
            first.execute("COMMIT")
            report = await second
    assert report.resumed and report.id == began and report.acted == 10


async def test_cancel_resume_fail_by_filter(client: Client, dbfile: DbFile) -> None:
    reg = Registry()
    outage = Outage(reg)
    ids = await client.start_many(outage.workflow, [[f"k{i}"] for i in range(6)])
    a = await client.cancel_runs(RunFilter(), batch_size=4)
    assert (a.acted, a.skipped) == (6, 0)
    b = await client.cancel_runs(RunFilter())
    assert (b.acted, b.skipped) == (0, 6)
    dbfile.execute("UPDATE runs SET status = 'parked' WHERE id IN (?, ?)", ids[0], ids[1])
    assert (await client.resume_runs(RunFilter(statuses=("parked",)))).acted == 2
    dbfile.execute("UPDATE runs SET status = 'parked' WHERE id = ?", ids[2])
    failed = await client.fail_runs(RunFilter(), reason="gave up")
    assert (failed.acted, failed.skipped) == (1, 5)
    st = await client.status(ids[2])
    assert st.status == "failed" and st.error == {"type": "FailedByOperator", "message": "gave up"}
    with pytest.raises(errors.ExecutorError, match="unknown action"):
        await client.act("frob", RunFilter())


async def test_purge_deletes_finished_runs_and_gives_the_space_back(
    client: Client, dbfile: DbFile
) -> None:
    """SQLite gives the space back as the purge goes (incremental vacuum); PostgreSQL makes it
    reusable (autovacuum) and gives it back at `executor vacuum` (VACUUM FULL)."""
    reg = Registry()
    outage = Outage(reg)
    big = "x" * 2000
    ids = await client.start_many(outage.workflow, [[f"{big}{i}"] for i in range(2000)])
    await client.cancel_runs(RunFilter())
    keep = await client.start(outage.workflow, "running")
    await checkpoint(client)
    before = await client.db.run(actions.database_bytes)
    report = await client.purge_runs(RunFilter(statuses=("cancelled",)), batch_size=300)
    assert report.acted == len(ids)
    await checkpoint(client)
    if dbfile.postgres:
        _, after = await client.vacuum()
        # The database's own catalogs stay: what must go is (most of) the 4 MB of arguments.
        assert before - after > len(ids) * len(big) * 0.8, (before, after)
    else:
        after = await client.db.run(actions.database_bytes)
        assert after < before / 5, (before, after)
    assert dbfile.value("SELECT count(*) FROM runs") == 1
    assert (await client.status(keep)).status == "running"
    assert dbfile.value("SELECT count(*) FROM steps") == 0
    assert_clean(dbfile.path)


async def test_the_newest_run_is_never_purged(client: Client, dbfile: DbFile) -> None:
    """On SQLite, where a new row takes max(rid) + 1; PostgreSQL's identity sequence never hands
    out a number twice, so there the newest run goes too."""
    ids = await client.start_many("w", [[1], [2]])
    newest = dbfile.rid(ids[1])
    await client.cancel_runs(RunFilter())
    if dbfile.postgres:
        assert (await client.purge_runs(RunFilter())).acted == 2
        assert dbfile.query("SELECT id FROM runs") == []
    else:
        assert (await client.purge_runs(RunFilter())).acted == 1
        assert dbfile.query("SELECT id FROM runs") == [(ids[1],)]
    new = await client.start("w", 3)
    assert dbfile.rid(new) > newest  # rids are never reused


# --- idempotency keys that cannot lie -------------------------------------------------------------


async def test_idempotency_conflicts(client: Client, dbfile: DbFile) -> None:
    first = await client.start("slow", {"a": 1, "b": 2}, idempotency_key="k1")
    assert await client.start("slow", {"b": 2, "a": 1}, idempotency_key="k1") == first
    with pytest.raises(errors.IdempotencyConflict, match=f"run {first} of workflow slow"):
        await client.start("boom", idempotency_key="k1")
    with pytest.raises(errors.IdempotencyConflict, match="other arguments"):
        await client.start("slow", {"a": 2}, idempotency_key="k1")
    with pytest.raises(errors.IdempotencyConflict):
        await client.start_many("slow", [[1], [2]], idempotency_keys=["k2", "k1"])
    assert dbfile.value("SELECT count(*) FROM runs") == 1  # the batch started nothing


# --- deploy mistakes park, not fail ---------------------------------------------------------------


async def test_unregistered_workflow_and_step_park_and_resume(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    full = Registry()

    @step(registry=full, name="known")
    async def known(x: int) -> int:
        return x + 1

    @workflow(registry=full, name="flow")
    async def flow(ctx: Any, x: int) -> int:
        return await known(x)

    bare = Registry()  # a deploy without the workflow module
    workflow(registry=bare, name="flow")(flow.fn)  # ... or with the workflow but not the step
    run = await client.start("flow", 1)
    async with engine_factory(Registry()):
        await wait_until(
            lambda: dbfile.value("SELECT status FROM runs") == "parked", "the run to park"
        )
    st = await client.status(run)
    assert st.error is not None and st.error["type"] == "Unregistered"
    assert "workflow 'flow' is not registered" in st.error["message"]
    assert await client.resume(run)
    async with engine_factory(bare):
        await wait_until(lambda: dbfile.value("SELECT parked FROM tasks"), "the step held back")
        await wait_until(
            lambda: dbfile.value("SELECT status FROM runs") == "parked", "the run to park"
        )
        assert "step 'known' is not registered" in (await client.status(run)).error["message"]  # type: ignore[index]
        assert_clean(dbfile.path)
    assert await client.resume(run)
    async with engine_factory(full):
        assert await client.result(run, timeout=DEADLINE_S) == 2
    assert_clean(dbfile.path)


# --- safe takeover --------------------------------------------------------------------------------


@SQLITE_ONLY  # several engines share a PostgreSQL database by shard leases (test_leases*)
async def test_an_engine_refuses_to_start_while_another_is_alive(
    engine_factory: EngineFactory, db_path: Path
) -> None:
    cfg = EngineConfig(shards=2, heartbeat_interval_s=0.05, lease_s=5.0)
    async with engine_factory(Registry()) as first:
        second = Engine(cfg, DatabaseConfig(path=db_path), reg=Registry(), takeover=False)
        with pytest.raises(errors.EngineHeld, match=r"pid \d+ on host .*--takeover"):
            await second.start()
        assert not first.draining
        # After `executor bump-epoch` the first one drains: a new one may start at once.
        async with Client(db_path) as other:
            await other.bump_epoch()
        fourth = Engine(cfg, DatabaseConfig(path=db_path), reg=Registry(), takeover=False)
        await fourth.start()
        await fourth.stop()
    third = Engine(cfg, DatabaseConfig(path=db_path), reg=Registry(), takeover=False)
    await third.start()  # the first one stopped: nothing holds the file
    await third.stop()


# --- the cancel race ------------------------------------------------------------------------------


async def test_a_cancel_between_a_replays_load_and_its_commit_leaves_no_task(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    wait_until: WaitUntil,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forces the interleaving: the cancel commits on the database thread right before the replay
    commit that was built while the run was still running."""
    reg = Registry()
    ran: list[int] = []

    @step(registry=reg, name="paid")
    async def paid(i: int) -> int:
        ran.append(i)
        return i

    @workflow(registry=reg, name="calls")
    async def calls(ctx: Any) -> int:
        return await paid(1) + await paid(2)

    run = await client.start(calls)
    target = dbfile.rid(run)
    commit = repo.commit_replays
    raced: list[bool] = []

    def cancel_then_commit(
        conn: Any, outputs: Any, now: float, fence: Any = None, claim: Any = None
    ) -> int:
        if not raced and any(o.run_rid == target and o.new_steps for o in outputs):
            repo.cancel_run(conn, run, now)  # another process's cancel, committed first
            raced.append(True)
        return commit(conn, outputs, now, fence, claim)

    monkeypatch.setattr(repo, "commit_replays", cancel_then_commit)
    async with engine_factory(reg):
        await wait_until(lambda: raced, "the forced interleaving")
        await wait_until(lambda: dbfile.value("SELECT count(*) FROM replays") == 0, "quiet")
    assert dbfile.value("SELECT count(*) FROM tasks") == 0
    assert dbfile.value("SELECT count(*) FROM steps") == 0
    assert ran == []
    assert (await client.status(run)).status == "cancelled"
    assert_clean(dbfile.path)


@SQLITE_ONLY  # PostgreSQL gives the space back at `executor vacuum`: see the purge test above
async def test_retention_purges_90_percent_and_the_file_shrinks(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    db_path: Path,
    wait_until: WaitUntil,
) -> None:
    reg = Registry()

    @step(registry=reg, name="answer")
    async def answer(i: int) -> str:
        return f"{i:06d} " + "lorem ipsum " * 80  # about 1 KB, a different one per run

    @workflow(registry=reg, name="ask")
    async def ask(ctx: Any, i: int) -> str:
        return (await answer(i))[:100] + await answer(i + 1)

    n = 3000
    await client.start_many(ask, [[i] for i in range(n)])
    async with engine_factory(reg, concurrency=50):

        async def all_succeeded() -> bool:
            return await client.count(RunFilter(statuses=("succeeded",))) == n

        await wait_until(all_succeeded, "every run to succeed", 60.0)
    old = time.time() - 40 * retention.DAY_S
    dbfile.execute("UPDATE runs SET finished_at = ? WHERE rid % 10 != 0", old)
    await checkpoint(client)
    before = file_size(db_path)
    cfg = RetentionConfig(finished_days=30, batch=500)
    assert await retention.purge_once(client, cfg, time.time()) == n - n // 10
    await checkpoint(client)
    after = file_size(db_path)
    assert after < before * 0.3, (before, after)
    assert await client.count() == n // 10
    assert await retention.purge_once(client, cfg, time.time()) == 0
    assert_clean(db_path)


async def checkpoint(client: Client) -> None:
    """SQLite: the write-ahead log into the file, so the file's size tells."""
    if client.db.dialect == "sqlite":
        await client.db.run(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())


async def test_retry_gives_back_the_messages_of_dropped_waits(
    client: Client, dbfile: DbFile
) -> None:
    """Store level (the engine's waits come with issue 13): a message taken by a wait at a
    dropped position is unread again, one taken before the restart point stays taken."""
    run = await client.start("w", 1)
    rid = dbfile.rid(run)
    for pos, status, seq in ((0, "succeeded", 1), (1, "succeeded", 2), (2, "failed", 3)):
        dbfile.execute(
            "INSERT INTO steps (run_rid, pos, kind, name, fingerprint, status, result, seq,"
            " created_at, finished_at) VALUES (?, ?, 'wait', 'topic', 'x', ?, ?, ?, 0, 0)",
            rid,
            pos,
            status,
            b"1",
            seq,
        )
    dbfile.execute("UPDATE runs SET status = 'failed', last_seq = 3 WHERE rid = ?", rid)
    dbfile.execute("DELETE FROM replays")
    for pos in (0, 1):
        dbfile.execute(
            "INSERT INTO mailbox (run_rid, topic, payload, created_at, consumed_pos)"
            " VALUES (?, 'topic', ?, 0, ?)",
            rid,
            b"1",
            pos,
        )
    assert await client.retry(run, from_step=1) == 1
    assert dbfile.query("SELECT consumed_pos FROM mailbox ORDER BY id") == [(0,), (None,)]
    assert dbfile.query("SELECT pos, seq FROM steps") == [(0, 1)]


async def test_retry_starts_a_new_child_past_the_point_and_detaches_the_old_one(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()
    outage = {"down": True}

    @step(registry=reg, name="flaky", retry=NO_RETRY)
    async def flaky() -> str:
        if outage["down"]:
            raise ConnectionError("down")
        return "up"

    @step(registry=reg, name="first")
    async def first() -> str:
        return "kept"

    @workflow(registry=reg, name="kid")
    async def kid(ctx: Any) -> str:
        return str(await flaky())

    @workflow(registry=reg, name="parent")
    async def parent(ctx: Any) -> list[Any]:
        return [await first(), await ctx.child(kid)]  # the child is position 1

    async with engine_factory(reg):
        run = await client.start(parent)
        with pytest.raises(errors.WorkflowFailed):
            await client.result(run, timeout=DEADLINE_S)
        old_kid = child_run_id(run, 1)
        assert (await client.status(old_kid)).status == "failed"
        outage["down"] = False
        assert await client.retry(run) == 1
        assert await client.result(run, timeout=DEADLINE_S) == ["kept", "up"]
        new_kid = child_run_id(run, 1, 1)
        assert (await client.status(new_kid)).status == "succeeded"
        assert (await client.status(old_kid)).status == "failed"  # untouched, detached
    assert dbfile.value("SELECT parent_rid FROM runs WHERE id = ?", old_kid) is None
    assert_clean(dbfile.path)
