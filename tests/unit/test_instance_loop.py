"""The workflow instance's own loop (engine/loop.py): callbacks queued by call_soon run in FIFO
order, in their context, and a cancelled one does not run; a callback that raises is logged,
and the rest still run."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import orjson
import pytest

from executor import Registry, step, vocabulary, workflow
from executor.engine.loop import activations
from executor.engine.replayer import replay_run

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def snapshot(name: str) -> vocabulary.RunSnapshot:
    return vocabulary.RunSnapshot(
        1, "run-1", name, None, 0, vocabulary.RunState.RUNNING, b"[]", 10.0, 0, []
    )


def test_call_soon_runs_in_order_and_a_cancelled_callback_does_not_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = Registry()
    ran: list[Any] = []

    def boom() -> None:
        raise ValueError("from a callback")

    @workflow(registry=reg, name="soon")
    async def soon(ctx: Any) -> list[Any]:
        loop = asyncio.get_running_loop()
        loop.call_soon(ran.append, 1)
        loop.call_soon(ran.append, 2).cancel()
        loop.call_soon(boom)
        VAR.set("workflow")
        context = contextvars.copy_context()
        loop.call_soon(lambda: ran.append(VAR.get()), context=context)
        loop.call_soon(ran.append, 3)
        await asyncio.sleep(0)  # one pass of the loop: every callback above runs first
        return ran

    with caplog.at_level(logging.ERROR, logger="executor.workflow"):
        inst = replay_run(snapshot("soon"), reg)
    try:
        assert inst.outcome()[:2] == (vocabulary.RunState.SUCCEEDED, b'[1,"workflow",3]')
    finally:
        inst.close()
    assert "from a callback" in caplog.text


def _probing(reg: Registry, seen: list[tuple[str, Any, Any]]) -> None:
    @step(registry=reg, name="probe.one")
    async def one(i: int) -> int:
        return i

    @workflow(registry=reg, name="probe")
    async def probe(ctx: Any, name: str) -> int:
        total = 0
        for i in range(2):
            seen.append((name, asyncio.get_running_loop(), asyncio.current_task()))
            async with asyncio.TaskGroup() as group:  # needs the current task: its own
                doubled = group.create_task(_twice(ctx, one, i))
            total += doubled.result()
        return total


async def _twice(ctx: Any, fn: Any, i: int) -> int:
    return int(await ctx.step(fn, i)) * 2


def _result(inst: Any, seq: int, value: int) -> vocabulary.Delivery:
    [pos] = inst.pending
    return vocabulary.Delivery(
        inst.run.rid, pos, seq, vocabulary.StepState.SUCCEEDED, orjson.dumps(value), None, 1.0
    )


@pytest.mark.parametrize("outer", ["none", "asyncio"])
def test_a_batch_of_activations_runs_each_on_its_own_loop_and_gives_the_outer_one_back(
    outer: str,
) -> None:
    """Inside `activations()` the running loop is left set from one activation to the next;
    each instance's code still finds its own loop and task (TaskGroup needs it), and the loop
    found at the start is the running loop again after the batch, even when it raises."""
    reg = Registry()
    seen: list[tuple[str, Any, Any]] = []
    _probing(reg, seen)

    def snap(rid: int, name: str) -> vocabulary.RunSnapshot:
        return vocabulary.RunSnapshot(
            rid,
            f"run-{rid}",
            "probe",
            None,
            0,
            vocabulary.RunState.RUNNING,
            orjson.dumps([name]),
            10.0,
            0,
            [],
        )

    def batch() -> Any:
        found = asyncio.events._get_running_loop()
        with activations():
            a = replay_run(snap(1, "a"), reg)
            b = replay_run(snap(2, "b"), reg)
            a.deliver(_result(a, 1, 1))
            b.deliver(_result(b, 1, 2))
            with activations():  # nested: the outermost batch gives the loop back
                a.deliver(_result(a, 2, 3))
            assert asyncio.events._get_running_loop() is a.loop
        assert asyncio.events._get_running_loop() is found
        with activations():  # no activation: nothing to give back
            assert asyncio.events._get_running_loop() is found
        assert asyncio.events._get_running_loop() is found
        with pytest.raises(RuntimeError, match="after an activation"), activations():
            b.deliver(_result(b, 2, 4))
            raise RuntimeError("after an activation")
        assert asyncio.events._get_running_loop() is found
        for name, inst, total in (("a", a, 8), ("b", b, 12)):
            assert inst.outcome()[:2] == (vocabulary.RunState.SUCCEEDED, str(total).encode())
            assert [(s[1], s[2]) for s in seen if s[0] == name] == [(inst.loop, inst.main)] * 2
            inst.close()
        return found

    if outer == "none":
        assert batch() is None
    else:

        async def main() -> Any:
            return batch() is asyncio.get_running_loop()

        assert asyncio.run(main())
