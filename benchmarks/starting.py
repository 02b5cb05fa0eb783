"""The `start` workload: W runs started through Client.start_many in --batch transactions, with
no engine, keeping nothing per run: what starting a big batch costs in time and memory."""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_run import StepClock, build_workload, file_bytes, run_async
from benchmarks.measure import cpu_s, current_rss_kib, peak_rss_kib
from benchmarks.options import Options, Workload
from executor import config, errors
from executor.client import Client


async def _start(opts: Options, db_path: Path) -> dict[str, Any]:
    reg, wf, args_of = build_workload(opts, StepClock(False))
    db_cfg = config.DatabaseConfig(path=db_path, durability=opts.durability or "normal")
    client = Client(db_cfg, reg=reg, strict=True, shards=opts.shards)
    await client.open()
    try:
        gc.collect()
        rss_idle = current_rss_kib()
        cpu0, t0 = cpu_s(), time.perf_counter()
        rss_mid = rss_idle
        for first in range(0, opts.workflows, opts.batch):
            n = min(opts.batch, opts.workflows - first)
            await client.start_many(wf, [args_of(first + i) for i in range(n)])
            if first <= opts.workflows // 10 < first + n:
                rss_mid = current_rss_kib()  # after a tenth: growth after it is per run
        wall = time.perf_counter() - t0
        cpu = cpu_s() - cpu0
        rss_end = current_rss_kib()
    finally:
        await client.close()
    return {
        "completed": True,
        "workflows": opts.workflows,
        "batch": opts.batch,
        "start_s": round(wall, 3),
        "start_runs_per_s": round(opts.workflows / wall, 1) if wall > 0 else None,
        "cpu_s_per_1000_runs": round(cpu / opts.workflows * 1000, 4),
        "rss_idle_kib": rss_idle,
        "rss_after_tenth_kib": rss_mid,
        "rss_end_kib": rss_end,
        "rss_peak_kib": peak_rss_kib(),
        # Growth over the last nine tenths, per run: 0 when memory is bounded by the batch.
        "rss_bytes_per_run_after_tenth": round(
            (rss_end - rss_mid) * 1024 / max(1, opts.workflows - opts.workflows // 10), 2
        ),
        "file_bytes": file_bytes(db_path),
    }


def _run(opts: Options, ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    db_path = opts.db if opts.db is not None else folder / "bench.sqlite"
    if db_path.exists():
        raise errors.ExecutorError(f"{db_path} exists; the benchmark needs a fresh database file")
    return run_async(opts.loop, _start(opts, db_path))


WORKLOAD = Workload(
    "start",
    """W runs of the noop workflow started with Client.start_many, --batch per transaction, and no
    engine: the start rate and the process's memory (rss_bytes_per_run_after_tenth: its growth
    per run after the first tenth, which is 0 when starting is bounded by the batch).""",
    _run,
    {"workflows": 100_000, "steps": 5},
)
