"""The prompt workload: W runs started with one shared system prompt and a small argument of
their own (the shape of an LLM pipeline's runs); what the database file costs per run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_run import file_bytes, prose, prose_words, run_async
from benchmarks.options import Options, Workload
from executor import errors
from executor.client import Client


async def _start(opts: Options, db_path: Path, prompt_bytes: int) -> dict[str, Any]:
    prompt = prose(prose_words(), prompt_bytes, 0)
    db_cfg = opts.database_config(db_path)
    t0 = time.perf_counter()
    async with Client(db_cfg, shards=opts.shards) as client:
        for first in range(0, opts.workflows, opts.batch):
            n = min(opts.batch, opts.workflows - first)
            await client.start_many("bench.summarize", [[prompt, first + i] for i in range(n)])
    wall = time.perf_counter() - t0
    size = file_bytes(db_path)
    return {
        "workload": "prompt",
        "completed": True,
        "runs": opts.workflows,
        "prompt_bytes": len(prompt.encode()),
        "start_s": round(wall, 3),
        "start_runs_per_s": round(opts.workflows / wall, 1),
        "file_bytes": size,
        "file_bytes_per_run": round(size / opts.workflows, 1),
    }


def _run(opts: Options, ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    db_path = opts.db if opts.db is not None else folder / "bench.sqlite"
    if db_path.exists():
        raise errors.ExecutorError(f"{db_path} exists; the benchmark needs a fresh database file")
    return run_async(opts.loop, _start(opts, db_path, ns.prompt_bytes))


def _arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--prompt-bytes",
        dest="prompt_bytes",
        type=int,
        default=10_000,
        help="size of the system prompt every run is started with (default: 10,000)",
    )


WORKLOAD = Workload(
    "prompt",
    """W runs started (no engine) with one shared system prompt of --prompt-bytes and an
    int of their own: the file's size per run, the start rate.""",
    _run,
    {"workflows": 100_000},
    _arguments,
)
