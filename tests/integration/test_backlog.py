"""A backlog of runs bigger than the instance cache (a bulk start of 10^5 runs): the runs that
wait for room cost no memory and no rebuild, and runs that wait on runs not yet live (a parent on
its child) still progress when the cache is full of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from executor import Client, Registry, WorkflowContext, step, workflow

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.engine import EngineFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


DEADLINE_S = 30.0

reg = Registry()


@step(registry=reg, name="backlog.add")
async def add(i: int) -> int:
    return i + 1


@workflow(registry=reg, name="backlog.three")
async def three(ctx: WorkflowContext, i: int) -> int:
    for _ in range(3):
        i = await add(i)
    return i


@workflow(registry=reg, name="backlog.parent")
async def parent(ctx: WorkflowContext, i: int) -> int:
    return await ctx.child(three, i) + 1


async def test_a_backlog_bigger_than_the_cache_causes_no_rebuild(
    engine_factory: EngineFactory, tmp_path: Path
) -> None:
    path = tmp_path / "backlog.sqlite"
    async with (
        Client(path, shards=2, reg=reg) as client,
        engine_factory(reg, path=path, instance_cache_size=20) as engine,
    ):
        ids = await client.start_many(three, [[i] for i in range(300)])
        results = [await client.result(run, timeout=DEADLINE_S) for run in ids]
        assert results == [i + 3 for i in range(300)]
        # One build per run, at its first replay; every later result is fed to a live instance.
        assert engine.counters["full_replays"] == 300
        assert engine.load()["live_workflows"] <= 20


async def test_parents_filling_the_cache_still_get_their_children_run(
    engine_factory: EngineFactory, tmp_path: Path
) -> None:
    path = tmp_path / "parents.sqlite"
    async with (
        Client(path, shards=2, reg=reg) as client,
        engine_factory(reg, path=path, instance_cache_size=4) as _engine,
    ):
        ids = await client.start_many(parent, [[i] for i in range(12)])
        results = [await client.result(run, timeout=DEADLINE_S) for run in ids]
        assert results == [i + 4 for i in range(12)]


async def test_reading_the_replay_backlog_stops_at_its_limit(client: Client) -> None:
    """With a backlog of runs waiting, each poll of the replay queue must read as many entries
    as it returns, in run order, not sort the whole backlog (what made noop slower per step at
    100,000 runs than at 10,000)."""

    def plan(conn: Any) -> str:
        rows = conn.execute("EXPLAIN QUERY PLAN " + conn.q["pending_replays_owned"], (1, 10))
        return " / ".join(str(row[-1]) for row in rows)

    def read(conn: Any) -> list[Any]:
        return list(conn.execute(conn.q["pending_replays_owned"], (1, 10)))

    if client.db.dialect == "sqlite":
        text = await client.db.run(plan)
        assert "TEMP B-TREE" not in text and "replays_shard" not in text, text
    else:  # PostgreSQL plans by its statistics (no fixed plan to check): the statement runs
        assert await client.db.run(read) == []
