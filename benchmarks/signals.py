"""The signals workload: what a signal from another process costs a live run with a long journal.

W runs of K no-op steps each, then R waits in a row (`ctx.wait_for`); once every run waits, the
benchmark (a Client on its own connection, as another process would be) sends each run R signals,
one wait at a time. Reported: the time from the first signal to the last result, signals/s, and
how the engine delivered them: `caught_up` (the live instance fed just the rows it missed) or
`full_replays` (the instance rebuilt from its K+R-entry journal). `--instance-cache 0` shows the
cost without live instances (every delivery a rebuild).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_run import run_async
from benchmarks.options import Options, Workload
from executor import config, errors, registry
from executor.client import Client
from executor.engine.engine import Engine
from executor.engine.instance import WorkflowContext

TOPIC = "go"


def _registry() -> registry.Registry:
    reg = registry.Registry()

    @registry.step(name="bench.noop", registry=reg)
    async def noop(i: int) -> int:
        return i

    @registry.workflow(name="bench.waits", registry=reg)
    async def waits(ctx: WorkflowContext, k: int, r: int) -> int:
        total = 0
        for i in range(k):
            total += await noop(i)
        for _ in range(r):
            total += await ctx.wait_for(TOPIC)
        return total

    return reg


async def _waiting(client: Client, runs: int, deadline: float) -> None:
    def count(conn: Any) -> int:
        return int(conn.execute("SELECT count(DISTINCT run_rid) FROM waits").fetchone()[0])

    while await client.db.run(count) < runs:
        if time.monotonic() > deadline:
            raise errors.ExecutorError("the runs did not all reach their first wait in time")
        await asyncio.sleep(0.05)


async def _bench(opts: Options, db_path: Path, rounds: int) -> dict[str, Any]:
    cfg = config.EngineConfig(
        shards=opts.shards,
        concurrency=opts.concurrency,
        poll_interval_s=opts.poll_interval,
        instance_cache_size=opts.instance_cache,
    )
    db_cfg = config.DatabaseConfig(path=db_path, durability=opts.durability or "normal")
    deadline = time.monotonic() + opts.timeout
    async with (
        Engine(cfg, db_cfg, reg=_registry(), samples=opts.metrics) as engine,
        Client(db_cfg) as client,
    ):
        ids = await client.start_many("bench.waits", [[opts.steps, rounds]] * opts.workflows)
        await _waiting(client, opts.workflows, deadline)
        before = engine.counters
        t0 = time.perf_counter()
        for n in range(rounds):
            for run_id in ids:
                await client.signal(run_id, TOPIC, 1, key=f"round-{n}")
        for run_id in ids:
            await client.result(run_id, timeout=max(1.0, deadline - time.monotonic()))
        wall = time.perf_counter() - t0
        after = engine.counters
    signals = opts.workflows * rounds
    return {
        "workload": "signals",
        "completed": True,
        "runs": opts.workflows,
        "steps_per_run": opts.steps,
        "signals": signals,
        "deliver_s": round(wall, 3),
        "signals_per_s": round(signals / wall, 1),
        "caught_up": after["caught_up"] - before["caught_up"],
        "full_replays": after["full_replays"] - before["full_replays"],
        "params": opts.params(),
    }


def _run(opts: Options, ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    db_path = opts.db if opts.db is not None else folder / "bench.sqlite"
    if db_path.exists():
        raise errors.ExecutorError(f"{db_path} exists; the benchmark needs a fresh database file")
    return run_async(opts.loop, _bench(opts, db_path, ns.rounds))


def _arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="signals: waits per run, each answered by one signal (default: 3)",
    )


WORKLOAD = Workload(
    "signals",
    """W runs of K no-op steps then --rounds waits; once all wait, a Client sends each run its
    signals: delivery time, signals/s, and caught_up (live instances fed the missed rows) vs
    full_replays (rebuilt from the journal); --instance-cache 0 for the rebuild cost.""",
    _run,
    {"workflows": 1000, "steps": 100, "shards": 4, "concurrency": 50},
    _arguments,
)
