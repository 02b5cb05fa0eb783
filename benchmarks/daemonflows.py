"""The noop workload's workflow for `--daemons N`: a module the daemon processes import
([daemon] workflows), with the names and bodies of the in-process noop (engine_run.py)."""

from __future__ import annotations

from executor import WorkflowContext, step, workflow


@step(name="bench.noop")
async def noop(index: int, i: int) -> int:
    return i


@workflow(name="bench.sequential")
async def sequential(ctx: WorkflowContext, k: int, index: int) -> int:
    for i in range(k):
        await ctx.step(noop, index, i)
    return k
