"""Signals (ctx.wait_for, Client.signal) and published state (ctx.set_event, Client.get_event)
on real SQLite files with real engines."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from executor import Client, Registry, WorkflowContext, errors, step, workflow
from executor.check import check

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.engine import DbFile, EngineFactory, WaitUntil

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


DEADLINE_S = 15.0


def waiting(dbfile: DbFile, run_id: str, topic: str) -> bool:
    """The run has a pending wait on `topic` (its replay committed it)."""
    return bool(
        dbfile.value(
            "SELECT count(*) FROM waits AS w JOIN runs AS r ON r.rid = w.run_rid"
            " WHERE r.id = ? AND w.topic = ?",
            run_id,
            topic,
        )
    )


def assert_clean(database: Path | str) -> None:
    report = check(database)
    assert report.ok, report.summary()


async def test_a_signal_sent_before_the_wait_is_kept(
    engine_factory: EngineFactory, client: Client, database: Path | str
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="approve")
    async def approve(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for("approval")

    run_id = await client.start("approve")
    # No engine yet: the run has not even started waiting.
    assert await client.signal(run_id, "approval", {"ok": True}) is True
    async with engine_factory(reg):
        assert await client.result(run_id, timeout=DEADLINE_S) == {"ok": True}
    assert_clean(database)


async def test_two_signals_go_to_two_waits_in_order(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="two")
    async def two(ctx: WorkflowContext) -> Any:
        # Both waits exist at once; the earlier position takes the earlier message.
        first, second = ctx.wait_for("t"), ctx.wait_for("t")
        return [await second, await first]

    @workflow(registry=reg, name="seq")
    async def seq(ctx: WorkflowContext) -> Any:
        return [await ctx.wait_for("t"), await ctx.wait_for("t")]

    async with engine_factory(reg):
        a = await client.start("two")
        await wait_until(lambda: waiting(dbfile, a, "t"), "run a waits")
        assert await client.signal(a, "t", 1)
        assert await client.signal(a, "t", 2)
        assert await client.result(a, timeout=DEADLINE_S) == [2, 1]

    # Sent before the waits: FIFO all the same; the third stays unread. Sent while no engine
    # runs, so all three are in before the run waits: with one running, the run may take the
    # first two and finish before the third is sent, which is then refused (as below).
    b = await client.start("seq")
    for n in (1, 2, 3):
        assert await client.signal(b, "t", n)
    async with engine_factory(reg):
        assert await client.result(b, timeout=DEADLINE_S) == [1, 2]
    unread = "SELECT payload FROM mailbox AS m JOIN runs AS r ON r.rid = m.run_rid WHERE r.id = ?"
    assert dbfile.query(unread + " AND m.consumed_pos IS NULL", b) == [(b"3",)]
    # A signal to the finished run is refused, and leaves nothing in its mailbox.
    assert await client.signal(b, "t", 4) is False
    assert sorted(dbfile.query(unread, b)) == [(b"1",), (b"2",), (b"3",)]


async def test_timeout_raises_a_catchable_wait_timeout_or_gives_the_default(
    engine_factory: EngineFactory, client: Client, database: Path | str
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="strict")
    async def strict(ctx: WorkflowContext) -> Any:
        try:
            await ctx.wait_for("never", timeout=0.05)
        except errors.WaitTimeout as exc:
            return {"caught": str(exc), "timeout": isinstance(exc, TimeoutError)}
        return "no"

    @workflow(registry=reg, name="lenient")
    async def lenient(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for(["a", "b"], timeout=0.05, default="nobody")

    @workflow(registry=reg, name="uncaught")
    async def uncaught(ctx: WorkflowContext) -> Any:
        return await ctx.wait_for("never", timeout=0)

    async with engine_factory(reg):
        s, le, u = [await client.start(n) for n in ("strict", "lenient", "uncaught")]
        got = await client.result(s, timeout=DEADLINE_S)
        assert got["timeout"] is True
        assert "no signal on never within 0.05s" in got["caught"]
        assert await client.result(le, timeout=DEADLINE_S) == "nobody"
        with pytest.raises(errors.WorkflowFailed, match="WaitTimeout"):
            await client.result(u, timeout=DEADLINE_S)
        # A late signal to a finished run is refused.
        assert await client.signal(s, "never", 1) is False
    assert_clean(database)


async def test_first_of_several_topics_and_key_dedup(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="either")
    async def either(ctx: WorkflowContext) -> Any:
        first = await ctx.wait_for(["approved", "rejected"])
        second = await ctx.wait_for("note")
        third = await ctx.wait_for("note", timeout=0.05, default="none")
        return [list(first), second, third]

    run_id = await client.start("either")
    assert await client.signal(run_id, "rejected", "too long", key="k1")
    assert await client.signal(run_id, "rejected", "again", key="k1")  # a no-op, still True
    assert await client.signal(run_id, "note", "n1", key="k2")
    assert await client.signal(run_id, "note", "n1", key="k2")
    async with engine_factory(reg):
        assert await client.result(run_id, timeout=DEADLINE_S) == [
            ["rejected", "too long"],
            "n1",
            "none",
        ]
    assert dbfile.value("SELECT count(*) FROM mailbox") == 2
    with pytest.raises(errors.RunNotFound):
        await client.signal("no-such-run", "t", 1)
    with pytest.raises(errors.PayloadError):
        await client.signal(run_id, "t", object())


async def test_a_waiting_run_holds_no_slot_and_survives_a_restart(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()
    calls: list[str] = []

    @step(registry=reg, name="work")
    async def work(tag: str) -> str:
        calls.append(tag)
        return tag

    @workflow(registry=reg, name="hitl")
    async def hitl(ctx: WorkflowContext, tag: str) -> Any:
        draft = await work(tag)
        decision = await ctx.wait_for("review")
        return [draft, decision, await work(f"{tag}!")]

    # One slot per shard: if waiting runs held slots, the second run of a shard could not start.
    async with engine_factory(reg, concurrency=1):
        ids = [await client.start("hitl", f"r{i}") for i in range(4)]
        for run_id in ids:
            await wait_until(lambda r=run_id: waiting(dbfile, r, "review"), "all four wait")
    assert dbfile.stuck_runs() == []
    for i, run_id in enumerate(ids):  # while no daemon runs
        assert await client.signal(run_id, "review", i)
    async with engine_factory(reg, concurrency=1):  # a fresh engine: full replays
        results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
    assert results == [[f"r{i}", i, f"r{i}!"] for i in range(4)]
    assert sorted(calls) == sorted([f"r{i}" for i in range(4)] + [f"r{i}!" for i in range(4)])


async def test_set_event_and_get_event(
    engine_factory: EngineFactory, client: Client, database: Path | str, wait_until: WaitUntil
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="stages")
    async def stages(ctx: WorkflowContext) -> str:
        ctx.set_event("stage", "drafting")
        await ctx.wait_for("go")
        ctx.set_event("stage", {"done": 1})
        ctx.set_event("final", True)  # published in the activation that returns: kept
        return "ok"

    run_id = await client.start("stages")
    assert await client.get_event(run_id, "stage") is None
    async with engine_factory(reg):
        assert await client.get_event(run_id, "stage", wait=DEADLINE_S) == "drafting"
        assert await client.get_event(run_id, "nothing", default="d") == "d"
        waiter = asyncio.create_task(client.get_event(run_id, "final", wait=DEADLINE_S))
        await client.signal(run_id, "go")
        assert await client.result(run_id, timeout=DEADLINE_S) == "ok"
        assert await waiter is True
    assert await client.get_event(run_id, "stage") == {"done": 1}
    # A finished run that never published a key: no waiting for it.
    assert await client.get_event(run_id, "never", wait=60, default=0) == 0
    assert_clean(database)


async def test_wait_for_refuses_bad_topics(engine_factory: EngineFactory, client: Client) -> None:
    reg = Registry()

    @workflow(registry=reg, name="bad")
    async def bad(ctx: WorkflowContext, topic: Any) -> Any:
        return await ctx.wait_for(topic)

    async with engine_factory(reg):
        for topic in ("", [], ["a", "a"], 3):
            run_id = await client.start("bad", topic)
            with pytest.raises(errors.WorkflowFailed, match="WorkflowUsageError"):
                await client.result(run_id, timeout=DEADLINE_S)


async def test_foreign_results_reach_a_live_run_without_a_full_replay(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    """A signal (recorded by the client's own connection, as another process would) and a
    child's end are delivered to the live instance: one delivery each, no rebuild."""
    reg = Registry()

    @workflow(registry=reg, name="kid")
    async def kid(ctx: WorkflowContext, n: int) -> int:
        return n * 2

    @workflow(registry=reg, name="loop")
    async def loop(ctx: WorkflowContext, rounds: int) -> int:
        total = 0
        for i in range(rounds):
            total += await ctx.wait_for("next")
            total += await ctx.child(kid, i)
        return total

    # A lost shard drops its live workflows (a rebuild the count below would see). One engine
    # alone keeps even an expired lease (nobody else takes it: lease_renew), so this cannot
    # happen today; a lease far above a stalled loop's pauses keeps it so if that rule changes.
    async with engine_factory(reg, lease_s=10.0) as engine:
        run_id = await client.start("loop", 5)
        for i in range(5):
            await wait_until(lambda: waiting(dbfile, run_id, "next"), f"wait #{i}")
            assert await client.signal(run_id, "next", 10)
        assert await client.result(run_id, timeout=DEADLINE_S) == 50 + 2 * (0 + 1 + 2 + 3 + 4)
        # One build of the parent and of each child; every signal was one delivery.
        assert engine.counters["full_replays"] == 1 + 5, (engine.counters, engine.load())
        assert engine.counters["caught_up"] >= 5
