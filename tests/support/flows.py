"""Workflows for the daemon and CLI tests: their steps leave side effects in files, so a test can
count how often each step really ran, and see how many ran at once."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from executor import RetryPolicy, WorkflowContext, step, workflow

_active = 0  # steps of `tracked` running now in this process


def _append(path: str, line: str) -> None:
    # O_APPEND: one write per line, so lines from concurrent steps never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@step
async def add(a: int, b: int) -> int:
    return a + b


@workflow(name="echo")
async def echo(ctx: WorkflowContext, value: object) -> object:
    return {"value": value, "sum": await add(1, 2)}


@workflow(name="fail")
async def fail(ctx: WorkflowContext, message: str) -> None:
    raise ValueError(message)


@step
async def nap(log_path: str, tag: str, seconds: float) -> str:
    """Sleep, then record that this step finished: one line per execution."""
    await asyncio.sleep(seconds)
    _append(log_path, tag)
    return tag


@workflow(name="chain")
async def chain(ctx: WorkflowContext, log_path: str, n: int, seconds: float) -> list[str]:
    """n sleeping steps one after another."""
    return [await nap(log_path, f"{ctx.run_id}:{i}", seconds) for i in range(n)]


@workflow(name="fanout")
async def fanout(ctx: WorkflowContext, log_path: str, n: int, seconds: float) -> list[str]:
    """n sleeping steps at once."""
    return list(
        await asyncio.gather(*(nap(log_path, f"{ctx.run_id}:{i}", seconds) for i in range(n)))
    )


@step
async def tracked(log_path: str, seconds: float) -> int:
    """Record how many tracked steps run at this moment (including this one), then sleep."""
    global _active
    _active += 1
    try:
        _append(log_path, str(_active))
        await asyncio.sleep(seconds)
        return _active
    finally:
        _active -= 1


@workflow(name="parallel")
async def parallel(ctx: WorkflowContext, log_path: str, n: int, seconds: float) -> int:
    """n tracked steps at once; the log shows the highest concurrency the engine allowed."""
    await asyncio.gather(*(tracked(log_path, seconds) for _ in range(n)))
    return n


@workflow(name="long_sleep")
async def long_sleep(ctx: WorkflowContext, seconds: float) -> str:
    await ctx.sleep(seconds)
    return "woke"


@step
def flip(path: str) -> str:
    """Change the file the `switch` workflow reads, so its next replay takes the other branch."""
    Path(path).write_text("b")
    return "a"


def _read(path: str) -> str:
    return Path(path).read_text()


@step
async def other(path: str) -> str:
    return "b"


@workflow(name="switch")
async def switch(ctx: WorkflowContext, path: str) -> str:
    """Nondeterministic on purpose: reads a file outside any step. With instance_cache_size = 0,
    every result replays from scratch, the file says "b" by then, and the run parks. Write "a"
    back and `executor resume` it, and it finishes."""
    chosen = flip(path) if _read(path) == "a" else other(path)
    return await chosen


@step(retry=RetryPolicy(max_attempts=2, initial_backoff_s=0))
async def broken(message: str) -> None:
    raise ValueError(message)


@workflow(name="step_fails")
async def step_fails(ctx: WorkflowContext, message: str) -> None:
    """Its one step fails on both attempts, so the run fails at that step."""
    await broken(message)


@step
async def chatter(tag: str) -> str:
    """Log at info and at warning on a logger of its own (like an HTTP client would)."""
    chatty = logging.getLogger("tests.support.chatty")
    chatty.info("chatty info %s", tag)
    chatty.warning("chatty warning %s", tag)
    return tag


@workflow(name="chatty")
async def chatty(ctx: WorkflowContext, tag: str) -> str:
    return await chatter(tag)
