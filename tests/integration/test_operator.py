"""Operator functions on a live file: bump_epoch, fail_pending_tasks, clear_task_queue,
clear_replay_queue, and resume/fail of parked runs. Each must leave no run stuck."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from executor import Client, Registry, errors, step, vocabulary, workflow
from executor.store import sharding

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory, WaitUntil

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


DEADLINE_S = 15.0


def shard_key_for(shard: int, shards: int = 2) -> str:
    return next(
        k for k in (f"key-{i}" for i in range(1000)) if sharding.shard_of(k, shards) == shard
    )


class Blocking:
    """A step that holds its slot until released, and two workflows around it: one that catches
    a step failure and one that does not."""

    def __init__(self) -> None:
        self.reg = Registry()
        self.gate = asyncio.Event()
        self.started: list[int] = []
        reg = self.reg

        @step(registry=reg, name="blocker")
        async def blocker(i: int) -> int:
            self.started.append(i)
            await self.gate.wait()
            return i

        @workflow(registry=reg, name="careful")
        async def careful(ctx: Any, i: int) -> Any:
            try:
                return await blocker(i)
            except errors.StepFailed as exc:
                return {"caught": exc.error_type, "message": exc.error["message"]}

        @workflow(registry=reg, name="careless")
        async def careless(ctx: Any, i: int) -> int:
            return await blocker(i)


async def fill_one_slot(
    client: Client, blocking: Blocking, wait_until: WaitUntil, shard: int
) -> tuple[str, list[str], list[str]]:
    """One run in flight in shard `shard`'s only slot, and careful + careless runs queued."""
    key = shard_key_for(shard)
    in_flight = await client.start("careful", 0, shard_key=key)
    await wait_until(lambda: blocking.started == [0], "the first step to take the slot")
    careful = await client.start_many("careful", [[1], [2]], shard_keys=[key, key])
    careless = await client.start_many("careless", [[3], [4]], shard_keys=[key, key])
    return in_flight, careful, careless


async def queued_count(dbfile: DbFile, want: int, wait_until: WaitUntil) -> None:
    await wait_until(
        lambda: dbfile.value("SELECT count(*) FROM tasks WHERE claim_token IS NULL") == want,
        f"{want} queued tasks",
    )


async def test_bump_epoch_makes_the_engine_stop(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile
) -> None:
    async with engine_factory(Registry()) as engine:
        epoch = await client.bump_epoch()
        assert epoch == engine.epoch + 1
        async with asyncio.timeout(DEADLINE_S):
            await engine.wait()
        assert engine.state is vocabulary.EngineState.STOPPED
        assert engine.stop_reason == "a newer epoch took over"
    assert dbfile.value("SELECT value FROM meta WHERE key = 'epoch'") == epoch
    assert (await client.stats())["engines"] == []


async def test_fail_pending_tasks(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    blocking = Blocking()
    async with engine_factory(blocking.reg, concurrency=1) as engine:
        in_flight, careful, careless = await fill_one_slot(client, blocking, wait_until, 1)
        await queued_count(dbfile, 4, wait_until)
        assert await client.fail_pending_tasks(0) == 0  # the other shard has none
        assert await client.fail_pending_tasks(1) == 4

        reason = "failed by an operator: fail_pending_tasks(shard=1)"
        for run in careful:
            assert await client.result(run, timeout=DEADLINE_S) == {
                "caught": "ForceFailed",
                "message": reason,
            }
        for run in careless:
            with pytest.raises(errors.WorkflowFailed) as info:
                await client.result(run, timeout=DEADLINE_S)
            assert info.value.error["type"] == "StepFailed"
            assert reason in str(info.value.error["message"])
        # The claimed task was not touched: it finishes normally.
        blocking.gate.set()
        assert await client.result(in_flight, timeout=DEADLINE_S) == 0
        assert engine.counters["steps"] == 1
    assert blocking.started == [0]
    rows = dbfile.query("SELECT attempts, error FROM steps WHERE status = 'failed'")
    assert len(rows) == 4
    for attempts, error in rows:
        assert attempts == 0  # never started
        assert orjson.loads(error) == {"type": "ForceFailed", "message": reason}
    assert dbfile.value("SELECT count(*) FROM tasks") == 0
    assert dbfile.stuck_runs() == []
    assert [s.status for s in await client.list("running")] == []


async def test_clear_task_queue_fails_the_runs_it_strands(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    blocking = Blocking()
    async with engine_factory(blocking.reg, concurrency=1):
        in_flight, careful, careless = await fill_one_slot(client, blocking, wait_until, 0)
        await queued_count(dbfile, 4, wait_until)
        assert await client.clear_task_queue(1) == 0
        assert await client.clear_task_queue(0) == 4  # runs affected
        assert dbfile.value("SELECT count(*) FROM tasks") == 1  # only the claimed one

        for run in careful + careless:
            with pytest.raises(errors.WorkflowFailed) as info:
                await client.result(run, timeout=DEADLINE_S)
            assert info.value.error == {
                "type": "QueueCleared",
                "message": "task queue of shard 0 cleared by an operator",
            }
        blocking.gate.set()
        assert await client.result(in_flight, timeout=DEADLINE_S) == 0
    assert blocking.started == [0]
    assert dbfile.value("SELECT count(*) FROM tasks") == 0
    assert dbfile.stuck_runs() == []


async def test_clear_replay_queue_fails_the_runs_it_strands(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile
) -> None:
    reg = Registry()

    @step(registry=reg, name="one")
    async def one() -> int:
        return 1

    @workflow(registry=reg, name="simple")
    async def simple(ctx: Any) -> int:
        return await one()

    # No engine yet: every new run waits in the replay queue of its shard.
    on_0 = await client.start_many(simple, [[], []], shard_keys=[shard_key_for(0)] * 2)
    on_1 = await client.start_many(simple, [[], [], []], shard_keys=[shard_key_for(1)] * 3)
    assert dbfile.query("SELECT shard, count(*) FROM replays GROUP BY shard") == [(0, 2), (1, 3)]
    assert await client.clear_replay_queue(0) == 2
    assert dbfile.query("SELECT shard, count(*) FROM replays GROUP BY shard") == [(1, 3)]
    for run in on_0:
        status = await client.status(run)
        assert status.status == "failed"
        assert status.error == {
            "type": "ReplayCleared",
            "message": "replay queue of shard 0 cleared by an operator",
        }
    assert dbfile.stuck_runs() == []
    async with engine_factory(reg):
        assert [await client.result(r, timeout=DEADLINE_S) for r in on_1] == [1, 1, 1]
    assert (
        dbfile.value(
            "SELECT count(*) FROM steps WHERE run_rid IN (?, ?)",
            dbfile.rid(on_0[0]),
            dbfile.rid(on_0[1]),
        )
        == 0
    )
    assert await client.clear_replay_queue(1) == 0


async def test_resume_and_fail_only_touch_parked_runs(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="quick")
    async def quick(ctx: Any) -> str:
        return "done"

    running = await client.start(quick)
    assert await client.resume(running) is False
    assert await client.fail(running) is False
    assert (await client.status(running)).status == "running"
    assert await client.resume("no-such-run") is False
    async with engine_factory(reg):
        assert await client.result(running, timeout=DEADLINE_S) == "done"
    assert await client.resume(running) is False
    assert await client.fail(running) is False

    # A run parked by hand (what a replay does on a mismatch), then resumed and failed.
    parked = await client.start(quick)
    error = errors.error_blob("NonDeterminismError", "for the test")
    rid = dbfile.rid(parked)
    assert (
        dbfile.execute("UPDATE runs SET status = 'parked', error = ? WHERE rid = ?", error, rid)
        == 1
    )
    assert dbfile.execute("DELETE FROM replays WHERE run_rid = ?", rid) == 1
    assert await client.resume(parked) is True
    assert (await client.status(parked)).status == "running"
    assert dbfile.query("SELECT seq FROM replays WHERE run_rid = ?", rid) == [(0,)]
    assert dbfile.stuck_runs() == []
    async with engine_factory(reg):
        assert await client.result(parked, timeout=DEADLINE_S) == "done"

    to_fail = await client.start(quick)
    rid = dbfile.rid(to_fail)
    dbfile.execute("UPDATE runs SET status = 'parked' WHERE rid = ?", rid)
    dbfile.execute("DELETE FROM replays WHERE run_rid = ?", rid)
    assert await client.fail(to_fail) is True
    status = await client.status(to_fail)
    assert status.status == "failed" and status.finished_at is not None
    assert status.error == {"type": "FailedByOperator", "message": "failed by an operator"}
    assert await client.cancel(to_fail) is False


async def test_operator_functions_check_the_shard(client: Client) -> None:
    for fn in (client.fail_pending_tasks, client.clear_task_queue, client.clear_replay_queue):
        for shard in (-1, 2):
            with pytest.raises(errors.ExecutorError, match="shard must be from 0 to 1"):
                await fn(shard)


async def test_stats_show_queues_per_shard(
    engine_factory: EngineFactory, client: Client, wait_until: WaitUntil
) -> None:
    blocking = Blocking()
    async with engine_factory(blocking.reg, concurrency=1) as engine:
        await fill_one_slot(client, blocking, wait_until, 1)
        stats = await wait_until(
            lambda: _stats_when(client, lambda s: s["shards"].get(1, {}).get("queued") == 4),
            "4 queued tasks in the stats",
        )
        shard = stats["shards"][1]
        assert (shard["queued"], shard["in_flight"], shard["waiting"]) == (4, 1, 0)
        assert shard["oldest_queued_age_s"] is not None and shard["oldest_queued_age_s"] >= 0
        assert stats["runs"] == {"running": 5}
        assert [e["id"] for e in stats["engines"]] == [engine.engine_id]
        blocking.gate.set()


async def _stats_when(client: Client, ok: Any) -> dict[str, Any] | None:
    stats = await client.stats()
    return stats if ok(stats) else None
