"""The step runner's queue of claimed attempts (engine/runner.py), on its own: an attempt
cancelled before a worker took it never runs its step, and ends as its reason says (the run
cancelled: failed for good; a drain: no outcome), its slot given back either way."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from executor import Registry, step
from executor.engine.limits import Limiter, WakeTimer
from executor.engine.runner import CancelReason, StepRunner
from executor.engine.slots import SlotPool
from executor.vocabulary import Claimed, Outcome, OutcomeKind, StepState

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def runner_for(reg: Registry, pool: SlotPool, outcomes: list[Outcome]) -> StepRunner:
    return StepRunner(
        reg,
        pool,
        Limiter(),
        WakeTimer(lambda shards: None),
        record=outcomes.append,
        unparks_ready=lambda: None,
        payload_limit=1 << 20,
        payload_folder=None,
        telemetry=None,
    )


def claimed(rid: int, name: str) -> Claimed:
    return Claimed(rid, 0, 0, 1, name, orjson.dumps([rid]), token=7)


@pytest.mark.parametrize("reason", list(CancelReason))
async def test_an_attempt_cancelled_while_queued_never_runs(reason: CancelReason) -> None:
    reg = Registry()
    ran: list[int] = []

    @step(registry=reg, name="work")
    async def work(i: int) -> int:
        ran.append(i)
        return i

    pool = SlotPool(1, 4)
    outcomes: list[Outcome] = []
    runner = runner_for(reg, pool, outcomes)
    runner.start(claimed(1, "work"))
    runner.start(claimed(2, "work"))
    assert runner.cancel((1, 0), reason)  # before any worker ran: still queued
    await asyncio.wait_for(runner.drain(5.0), 10.0)
    assert ran == [2]
    assert runner.in_flight == 0
    by_run: dict[int, Any] = {o.run_rid: o for o in outcomes}
    assert by_run[2].status == StepState.SUCCEEDED
    if reason is CancelReason.RUN_CANCELLED:
        assert by_run[1].kind is OutcomeKind.DONE and by_run[1].status == StepState.FAILED
        assert b"Cancelled" in (by_run[1].error or b"")
        assert pool.busy(0) == 2  # each DONE outcome holds its slot for the run's next step
    else:
        assert 1 not in by_run  # a drain records nothing: the claim goes back at stop
        assert pool.busy(0) == 1
