"""Steps run by worker tasks, not a task each (engine/runner.py): what a task per step gave
still holds. A step that waits does not hold back the steps claimed with it, a ContextVar set
by one step is not seen by the next, and a cancel the engine did not ask for fails only its
own attempt.

Every test runs on plain asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING, Any

import pytest
import uvloop

from executor import Client, Registry, RetryPolicy, step, workflow

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.engine import EngineFactory

pytestmark = pytest.mark.anyio

DEADLINE_S = 15.0


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


async def test_a_waiting_step_does_not_hold_back_the_steps_claimed_with_it(
    engine_factory: EngineFactory, database: Path | str
) -> None:
    reg = Registry()
    waiting: list[int] = []
    all_in = asyncio.Event()
    runs = 8

    @step(registry=reg, name="meet")
    async def meet(i: int) -> int:
        if i % 2:
            return i  # returns at once, between the waiting ones
        waiting.append(i)
        if len(waiting) == runs // 2:
            all_in.set()
        # Every waiting step must be running at once for this to end: run one after another,
        # the first would wait for ever.
        await all_in.wait()
        return i

    @workflow(registry=reg, name="meets")
    async def meets(ctx: Any, i: int) -> int:
        return await meet(i)

    async with Client(database, shards=1) as client:
        ids = await client.start_many(meets, [[i] for i in range(runs)])
        async with engine_factory(reg, shards=1, concurrency=runs):
            results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
    assert results == list(range(runs))


async def test_a_context_variable_set_by_one_step_is_not_seen_by_the_next(
    engine_factory: EngineFactory, database: Path | str
) -> None:
    reg = Registry()
    var: contextvars.ContextVar[int | None] = contextvars.ContextVar("var", default=None)
    seen: list[int | None] = []

    @step(registry=reg, name="leaky")
    async def leaky(i: int) -> int:
        seen.append(var.get())
        var.set(i)
        if i % 3 == 0:
            await asyncio.sleep(0)  # a step that waits once, then sets it again
            var.set(-i)
        return i

    @workflow(registry=reg, name="leaks")
    async def leaks(ctx: Any, i: int) -> int:
        await leaky(i)
        return await leaky(i + 100)

    async with Client(database, shards=1) as client:
        ids = await client.start_many(leaks, [[i] for i in range(12)])
        async with engine_factory(reg, shards=1, concurrency=2):
            results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
    assert results == [i + 100 for i in range(12)]
    assert seen == [None] * 24


async def test_a_cancel_the_engine_did_not_ask_for_fails_only_its_own_attempt(
    engine_factory: EngineFactory, database: Path | str
) -> None:
    reg = Registry()
    attempts: list[int] = []
    quick_ran: list[int] = []

    @step(registry=reg, name="cancels_itself", retry=RetryPolicy(3, 0.01, 0.01, jitter=0.0))
    async def cancels_itself(i: int) -> int:
        attempts.append(i)
        if len(attempts) == 1:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # as stray code holding the task might
            await asyncio.sleep(0)
        return i

    @step(registry=reg, name="quick")
    async def quick(i: int) -> int:
        await asyncio.sleep(0)
        quick_ran.append(i)
        return i

    @workflow(registry=reg, name="stray")
    async def stray(ctx: Any) -> int:
        return await cancels_itself(7)

    @workflow(registry=reg, name="quick_flow")
    async def quick_flow(ctx: Any, i: int) -> int:
        return await quick(i)

    async with Client(database, shards=1) as client:
        first = await client.start(stray)  # oldest: claimed first, with the quick ones behind
        ids = await client.start_many(quick_flow, [[i] for i in range(6)])
        async with engine_factory(reg, shards=1, concurrency=4) as engine:
            assert await client.result(first, timeout=DEADLINE_S) == 7
            assert [await client.result(r, timeout=DEADLINE_S) for r in ids] == list(range(6))
            assert engine.counters["retries"] == 1  # a failed attempt, retried by its policy
    assert attempts == [7, 7]
    assert sorted(quick_ran) == list(range(6))  # none was cancelled in its place
