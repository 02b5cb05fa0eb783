"""The workflow instance's own loop (engine/loop.py): callbacks queued by call_soon run in FIFO
order, in their context, and a cancelled one does not run; a callback that raises is logged,
and the rest still run."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

import pytest

from executor import Registry, vocabulary, workflow
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
