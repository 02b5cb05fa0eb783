"""Child workflows (ctx.child, ctx.start) on real SQLite files with real engines: results,
failures, cancellation of whole trees (and the race with a new grandchild), unawaited children,
detached starts, FIFO by the root run and the inherited concurrency key."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from executor import Client, Registry, WorkflowContext, codec, errors, step, workflow
from executor.check import check
from executor.store import repository as repo
from executor.store import sharding
from executor.vocabulary import NewStep, ReplayOutput, StepKind, child_run_id

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.engine import EngineFactory, WaitUntil

from tests.support.engine import DbFile

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


DEADLINE_S = 15.0


def assert_clean(database: Path | str) -> None:
    report = check(database)
    assert report.ok, report.summary()


def status_of(dbfile: DbFile, run_id: str) -> str | None:
    value = dbfile.value("SELECT status FROM runs WHERE id = ?", run_id)
    return None if value is None else str(value)


async def test_children_results_failures_and_a_full_replay(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, database: Path | str
) -> None:
    reg = Registry()

    @step(registry=reg, name="words")
    async def words(text: str) -> int:
        return len(text.split())

    @workflow(registry=reg, name="count")
    async def count(ctx: WorkflowContext, text: str) -> int:
        if not text:
            raise ValueError("empty document")
        return await words(text)

    @workflow(registry=reg, name="total")
    async def total(ctx: WorkflowContext, docs: list[str]) -> Any:
        handles = [ctx.child(count, d) for d in docs]
        assert handles[0].run_id == f"{ctx.run_id}.0"
        counts = []
        for h in handles:
            try:
                counts.append(await h)
            except errors.ChildFailed as exc:
                counts.append(exc.error["type"])
        one = await ctx.child("count", "one more")  # by name; start-and-wait
        return {"counts": counts, "one": one}

    run_id = await client.start("total", ["a b", "", "c d e"])
    async with engine_factory(reg):
        got = await client.result(run_id, timeout=DEADLINE_S)
    assert got == {"counts": [2, "ValueError", 3], "one": 2}
    # Results are referenced, not copied: the parent's entries hold none.
    rid = dbfile.rid(run_id)
    assert dbfile.query(
        "SELECT pos, status, result FROM steps WHERE run_rid = ? AND kind = 'child' ORDER BY pos",
        rid,
    ) == [
        (0, "succeeded", None),
        (1, "failed", None),
        (2, "succeeded", None),
        (3, "succeeded", None),
    ]
    # A fresh engine rebuilding the parent from its journal sees the same results.
    async with engine_factory(reg, instance_cache_size=0):
        snapshot = (await asyncio.to_thread(_load, database, rid))[rid]
    results = {e.pos: e.result for e in snapshot.journal}
    assert codec.decode(results[0]) == 2 and results[1] is None
    assert_clean(database)


def _load(database: Path | str, rid: int) -> Any:
    with DbFile(database).connect() as conn:
        return repo.load_runs(conn, [rid])


async def test_cancel_cascades_to_every_descendant_and_the_parent_sees_child_cancelled(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    database: Path | str,
    wait_until: WaitUntil,
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="leaf")
    async def leaf(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for("never")

    @workflow(registry=reg, name="middle")
    async def middle(ctx: WorkflowContext) -> Any:
        return await ctx.child(leaf)

    @workflow(registry=reg, name="root")
    async def root(ctx: WorkflowContext) -> Any:
        first = ctx.child(middle)
        try:
            await ctx.child(leaf)
        except errors.ChildCancelled as exc:
            caught = exc.child_id
        return {"caught": caught, "first": await first}

    async with engine_factory(reg):
        run_id = await client.start("root")
        mid, leaf2 = child_run_id(run_id, 0), child_run_id(run_id, 1)
        grand = child_run_id(mid, 0)
        await wait_until(lambda: status_of(dbfile, grand) == "running", "the grandchild runs")
        await wait_until(lambda: status_of(dbfile, leaf2) == "running", "the second child runs")
        # Cancelling a child: its parent carries on, catching ChildCancelled.
        assert await client.cancel(leaf2)
        await wait_until(
            lambda: (
                dbfile.value(
                    "SELECT status FROM steps WHERE run_rid = ? AND pos = 1", dbfile.rid(run_id)
                )
                == "failed"
            ),
            "the parent records ChildCancelled",
        )
        # Cancelling the root takes the whole tree down in one transaction.
        assert await client.cancel(run_id)
        assert [status_of(dbfile, r) for r in (run_id, mid, grand)] == ["cancelled"] * 3
        with pytest.raises(errors.RunCancelled):
            await client.result(run_id, timeout=DEADLINE_S)
    assert_clean(database)


async def test_unawaited_children_are_cancelled_when_the_parent_finishes_detached_runs_are_not(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, database: Path | str
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="slow")
    async def slow(ctx: WorkflowContext, tag: str) -> str:
        await ctx.wait_for("go")
        return tag

    @workflow(registry=reg, name="quick")
    async def quick(ctx: WorkflowContext) -> Any:
        ctx.child(slow, "forgotten")  # never awaited
        detached = ctx.start(slow, "detached")
        await ctx.sleep(0.01)
        return detached

    async with engine_factory(reg):
        run_id = await client.start("quick")
        detached = await client.result(run_id, timeout=DEADLINE_S)
        assert detached == child_run_id(run_id, 1)
        assert status_of(dbfile, child_run_id(run_id, 0)) == "cancelled"
        assert status_of(dbfile, detached) == "running"
        assert await client.signal(detached, "go")
        assert await client.result(detached, timeout=DEADLINE_S) == "detached"
    assert_clean(database)


async def test_a_grandchild_cannot_escape_a_cancel(
    client: Client, dbfile: DbFile, database: Path | str
) -> None:
    """The child's replay commit that would start a grandchild loses the race with the cancel
    of the tree whichever order the two transactions take."""
    reg = Registry()

    @workflow(registry=reg, name="tree")
    async def tree(ctx: WorkflowContext) -> None:
        return None

    for cancel_first in (True, False):
        root = await client.start("tree")
        root_rid = dbfile.rid(root)
        args = codec.encode([])
        child = child_run_id(root, 0)
        grand = child_run_id(child, 0)
        # The root's commit starts the child (as an engine's replay would).
        step_of = NewStep(
            0, StepKind.CHILD, "tree", codec.fingerprint(args), args, None, None, child
        )
        await client.db.run(repo.commit_replays, [ReplayOutput(root_rid, 0, 0, [step_of])], 1.0)
        child_rid = dbfile.rid(child)
        grand_step = step_of._replace(target=grand)
        commit = [ReplayOutput(child_rid, 0, 0, [grand_step])]
        if cancel_first:
            assert await client.cancel(root)
            await client.db.run(repo.commit_replays, commit, 2.0)
            assert status_of(dbfile, grand) is None  # never created
        else:
            await client.db.run(repo.commit_replays, commit, 2.0)
            assert await client.cancel(root)
            assert status_of(dbfile, grand) == "cancelled"
        assert status_of(dbfile, child) == "cancelled"
    assert_clean(database)


async def test_children_queue_by_their_root_and_inherit_the_concurrency_key(
    client: Client, dbfile: DbFile
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="w")
    async def w(ctx: WorkflowContext) -> None:
        return None

    old = await client.start("w", concurrency_key="tenant-a")
    child = child_run_id(old, 0)
    # Runs started after the root but before the child, all in the child's shard.
    shard = sharding.shard_of(child, client.db.shards)
    key = next(f"k{i}" for i in range(100) if sharding.shard_of(f"k{i}", client.db.shards) == shard)
    newer = [await client.start("w", shard_key=key) for _ in range(3)]
    args = codec.encode([])
    step_of = NewStep(0, StepKind.CHILD, "w", codec.fingerprint(args), args, None, None, child)
    await client.db.run(repo.commit_replays, [ReplayOutput(dbfile.rid(old), 0, 0, [step_of])], 1.0)
    assert dbfile.value("SELECT concurrency_key FROM runs WHERE id = ?", child) == "tenant-a"
    # A step of each newer run, then one of the child (created last, largest rid).
    task = NewStep(0, StepKind.STEP, "s", "fp", args, None)
    for run_id in [*newer, child]:
        shard = dbfile.value("SELECT shard FROM runs WHERE id = ?", run_id)
        out = ReplayOutput(dbfile.rid(run_id), shard, 0, [task])
        await client.db.run(repo.commit_replays, [out], 2.0)
    child_rid = dbfile.rid(child)
    assert child_rid > max(dbfile.rid(r) for r in newer)
    claimed = await client.db.run(repo.claim, 0, 0, 99, [(shard, 1)], 3.0, False)
    assert claimed is not None and [c.run_rid for c in claimed] == [child_rid]


async def test_show_says_what_a_run_waits_on(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="inner")
    async def inner(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for(["yes", "no"], timeout=3600)

    @workflow(registry=reg, name="outer")
    async def outer(ctx: WorkflowContext) -> Any:
        return await ctx.child(inner)

    async with engine_factory(reg):
        run_id = await client.start("outer")
        child = child_run_id(run_id, 0)
        await wait_until(lambda: status_of(dbfile, child) == "running", "the child runs")
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM waits WHERE run_rid = ?", dbfile.rid(child)),
            "the child waits",
        )
        parent = await client.history(run_id)
        (waiting,) = parent.waiting
        assert (waiting.kind, waiting.child) == ("child", child)
        assert f"waits for child run {child}" in waiting.detail
        kid = await client.history(child)
        (waiting,) = kid.waiting
        assert waiting.kind == "signal" and waiting.until is not None
        assert "waits for a signal on yes or no (it times out)" in waiting.detail
        assert dbfile.stuck_runs() == []
