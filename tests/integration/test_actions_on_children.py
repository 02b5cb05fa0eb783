"""Cancel and fail by filter (`executor runs cancel|fail`, Client.cancel_runs/fail_runs) on runs in
a tree of child workflows, on real SQLite files with a real engine: each run ends exactly as the
one-run verb (`cancel`, `fail`) would end it. Its parent sees its end, its children (and theirs)
are cancelled, and nothing of it is left behind (`executor check` is clean)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from executor import Client, Registry, WorkflowContext, errors, step, workflow
from executor.check import check
from executor.runfilter import RunFilter
from executor.vocabulary import child_run_id

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.engine import DbFile, EngineFactory, WaitUntil

pytestmark = pytest.mark.anyio
DEADLINE_S = 15.0
BY = ("one run", "filter")


def assert_clean(db_path: Path) -> None:
    report = check(db_path)
    assert report.ok, report.summary()


def status_of(dbfile: DbFile, run_id: str) -> str | None:
    value = dbfile.value("SELECT status FROM runs WHERE id = ?", run_id)
    return None if value is None else str(value)


def leftovers(dbfile: DbFile, *run_ids: str) -> list[tuple[Any, ...]]:
    """Queued tasks, timers, waits and replay entries of the runs."""
    marks = ", ".join("?" * len(run_ids))
    return dbfile.query(
        f"""SELECT r.id, 'task' FROM tasks t JOIN runs r ON r.rid = t.run_rid
              WHERE r.id IN ({marks}) AND t.claim_token IS NULL
            UNION ALL SELECT r.id, 'timer' FROM timers t JOIN runs r ON r.rid = t.run_rid
              WHERE r.id IN ({marks})
            UNION ALL SELECT r.id, 'wait' FROM waits w JOIN runs r ON r.rid = w.run_rid
              WHERE r.id IN ({marks})
            UNION ALL SELECT r.id, 'replay' FROM replays p JOIN runs r ON r.rid = p.run_rid
              WHERE r.id IN ({marks})""",
        *(run_ids * 4),
    )


@pytest.mark.parametrize("by", BY)
async def test_a_child_cancelled_by_filter_ends_like_a_cancelled_child(
    by: str,
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    db_path: Path,
    wait_until: WaitUntil,
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="leaf")
    async def leaf(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for("never")

    @workflow(registry=reg, name="middle")
    async def middle(ctx: WorkflowContext) -> Any:
        grandchild = ctx.child(leaf)
        await ctx.wait_for("never either")  # the middle run has a wait of its own
        return await grandchild

    @workflow(registry=reg, name="root")
    async def root(ctx: WorkflowContext) -> Any:
        try:
            return await ctx.child(middle)
        except errors.ChildCancelled as exc:
            return {"caught": exc.child_id}

    async with engine_factory(reg):
        run_id = await client.start("root")
        mid = child_run_id(run_id, 0)
        grand = child_run_id(mid, 0)
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM waits") == 2,
            "the middle run and the grandchild to wait for their signals",
        )
        if by == "filter":
            report = await client.cancel_runs(RunFilter(workflow="middle"))
            assert (report.acted, report.skipped) == (1, 0)
        else:
            assert await client.cancel(mid)
        assert [status_of(dbfile, r) for r in (mid, grand)] == ["cancelled"] * 2
        assert await client.result(run_id, timeout=DEADLINE_S) == {"caught": mid}
        error = (await client.status(mid)).error
        assert error == {"type": "Cancelled", "message": "cancelled by request"}
        assert (await client.status(grand)).error == {
            "type": "Cancelled",
            "message": "cancelled with its parent",
        }
    assert leftovers(dbfile, run_id, mid, grand) == []
    assert_clean(db_path)


@pytest.mark.parametrize("by", BY)
async def test_a_parked_child_failed_by_filter_fails_its_parent_like_fail(
    by: str,
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    db_path: Path,
    wait_until: WaitUntil,
) -> None:
    reg = Registry()
    elsewhere = Registry()  # the step's module is missing from this deploy: the child parks

    @step(registry=elsewhere, name="missing")
    async def missing() -> int:
        return 1

    @workflow(registry=reg, name="leaf")
    async def leaf(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for("never")

    @workflow(registry=reg, name="kid")
    async def kid(ctx: WorkflowContext) -> Any:
        grandchild = ctx.child(leaf)
        await missing()
        return await grandchild

    @workflow(registry=reg, name="root")
    async def root(ctx: WorkflowContext) -> Any:
        return await ctx.child(kid)  # not caught: the root fails with ChildFailed

    async with engine_factory(reg):
        run_id = await client.start("root")
        child = child_run_id(run_id, 0)
        grand = child_run_id(child, 0)
        await wait_until(lambda: status_of(dbfile, child) == "parked", "the child to park")
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM waits") == 1, "the grandchild to wait"
        )
        if by == "filter":
            report = await client.fail_runs(RunFilter(workflow="kid"), reason="gave up")
            assert (report.acted, report.skipped) == (1, 0)
        else:
            assert await client.fail(child, reason="gave up")
        assert [status_of(dbfile, r) for r in (child, grand)] == ["failed", "cancelled"]
        with pytest.raises(errors.WorkflowFailed) as failed:
            await client.result(run_id, timeout=DEADLINE_S)
        assert failed.value.error["type"] == "ChildFailed"
        assert "FailedByOperator: gave up" in str(failed.value.error["message"])
    assert leftovers(dbfile, run_id, child, grand) == []
    assert_clean(db_path)


async def test_cancel_by_filter_of_a_parent_and_its_children_in_one_batch(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    db_path: Path,
    wait_until: WaitUntil,
) -> None:
    """The filter matches whole trees: a parent's cancel takes its child down with it, so in the
    same batch the child counts as skipped (already cancelled when its turn came, as the one-run
    verb would say); a later batch no longer matches it at all."""
    reg = Registry()

    @workflow(registry=reg, name="leaf")
    async def leaf(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for("never")

    @workflow(registry=reg, name="root")
    async def root(ctx: WorkflowContext) -> Any:
        return await ctx.child(leaf)

    async with engine_factory(reg):
        ids = [await client.start("root") for _ in range(3)]
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM waits") == 3, "every leaf to wait"
        )
        report = await client.cancel_runs(RunFilter(statuses=("running",)))
        assert (report.acted, report.skipped) == (3, 3)
        for run_id in ids:
            with pytest.raises(errors.RunCancelled):
                await client.result(run_id, timeout=DEADLINE_S)
        assert dbfile.value("SELECT count(*) FROM runs WHERE status != 'cancelled'") == 0
    assert_clean(db_path)
