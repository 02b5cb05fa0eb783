"""The workflows behind the golden databases in this folder (written by make_golden.py).

The files hold journals written by this code at the commits named in their manifests, so:
never change a name, an argument or the order of steps here. Only the public API is used,
so the module keeps working as the engine changes. Every step and workflow has an explicit
name: the journal stores names, and they must not depend on how this module is imported.

At test time nothing is held and nothing fails on purpose: each run finishes with EXPECTED.
make_golden.py sets HOLD, FAILING and VARIANT to stop runs at known points.
"""

from __future__ import annotations

import asyncio
from typing import Any

from executor import Registry, RetryPolicy, StepFailed, WorkflowContext, step, workflow

registry = Registry()

# Set by make_golden.py only.
HOLD: dict[str, asyncio.Event] = {}  # a step with this tag waits for the event (or a drain)
REACHED: set[str] = set()  # held tags whose step has started
FAILING: set[str] = set()  # tags whose step raises
ATTEMPTS: dict[str, int] = {}  # tag -> attempts made in this process
VARIANT = "A"  # "B" is the changed code that parks the `drift` run

QUICK_RETRY = RetryPolicy(max_attempts=10, initial_backoff_s=0.2, max_backoff_s=0.2, jitter=0.0)


async def _gate(tag: str) -> None:
    ATTEMPTS[tag] = ATTEMPTS.get(tag, 0) + 1
    event = HOLD.get(tag)
    if event is not None:
        REACHED.add(tag)
        await event.wait()
    if tag in FAILING:
        raise RuntimeError(f"{tag} fails (golden generator)")


@step(name="golden.work", registry=registry)
async def work(tag: str, value: int) -> int:
    await _gate(tag)
    return value * 10 + 1


@step(name="golden.flaky", registry=registry, retry=QUICK_RETRY)
async def flaky(tag: str, value: int) -> int:
    await _gate(tag)
    return value * 100


@step(name="golden.boom", registry=registry, retry=RetryPolicy(max_attempts=1))
async def boom(tag: str) -> int:
    raise ValueError(f"{tag} always fails")


@workflow(name="golden.sequential", registry=registry)
async def sequential(ctx: WorkflowContext, n: int) -> int:
    total = 0
    for i in range(n):
        total += await work(f"seq-{i}", i)
    return total


@workflow(name="golden.gather", registry=registry)
async def gather(ctx: WorkflowContext) -> list[int]:
    parts = await asyncio.gather(work("fan-0", 1), work("fan-1", 2), work("fan-2", 3))
    return [*parts, await work("fan-sum", sum(parts))]


@workflow(name="golden.first_completed", registry=registry)
async def first_completed(ctx: WorkflowContext) -> list[int]:
    fast = asyncio.ensure_future(work("first-fast", 1))
    slow = asyncio.ensure_future(work("first-slow", 2))
    done, _ = await asyncio.wait([fast, slow], return_when=asyncio.FIRST_COMPLETED)
    winner = min(f.result() for f in done)
    following = await work("first-next", winner)
    return [winner, following, await slow]


@workflow(name="golden.sleeper", registry=registry)
async def sleeper(ctx: WorkflowContext, seconds: float) -> list[int]:
    before = await work("sleep-before", 1)
    await ctx.sleep(seconds)
    return [before, await work("sleep-after", 2)]


@workflow(name="golden.retried", registry=registry)
async def retried(ctx: WorkflowContext) -> int:
    return await flaky("retry", 7)


@workflow(name="golden.caught", registry=registry)
async def caught(ctx: WorkflowContext) -> dict[str, Any]:
    try:
        await boom("caught-boom")
        failed = False
    except StepFailed:
        failed = True
    return {"failed": failed, "after": await work("caught-after", 5)}


@workflow(name="golden.drift", registry=registry)
async def drift(ctx: WorkflowContext) -> list[int]:
    first = await work("drift-0", 1)
    if VARIANT == "A":
        second = await work("drift-1", 2)
    else:  # the "deployed" change that no longer matches the journal
        second = await work("drift-other", 2)
    return [first, second]


@workflow(name="golden.fails", registry=registry)
async def fails(ctx: WorkflowContext, message: str) -> None:
    await work("fails-0", 1)
    raise ValueError(message)


# label -> (workflow, arguments, what the run ends as with this code, its result or error type).
# The generator starts one run per label; the golden test checks each against this table.
RUNS: dict[str, tuple[str, list[Any], str, Any]] = {
    "sequential": ("golden.sequential", [4], "succeeded", 1 + 11 + 21 + 31),
    "gather": ("golden.gather", [], "succeeded", [11, 21, 31, 631]),
    "first_completed": ("golden.first_completed", [], "succeeded", [11, 111, 21]),
    "sleeper": ("golden.sleeper", [3.0], "succeeded", [11, 21]),
    "retried": ("golden.retried", [], "succeeded", 700),
    "caught": ("golden.caught", [], "succeeded", {"failed": True, "after": 51}),
    "drift": ("golden.drift", [], "succeeded", [11, 21]),  # parked in the file; resumes
    "finished": ("golden.sequential", [2], "succeeded", 1 + 11),
    "failed": ("golden.fails", ["on purpose"], "failed", "ValueError"),
    "fresh": ("golden.sequential", [3], "succeeded", 1 + 11 + 21),  # started, never claimed
}
