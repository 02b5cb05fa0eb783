"""The floor: the sleep and llm workloads' steps and slots as a plain asyncio program with no
database (a semaphore per shard, runs assigned to shards in turn), and ours over it.

What the engine adds to a program that makes the same calls is what these ratios measure:
the wall time (durability, replay and claiming in the way of the slots) and the CPU per step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_run import prose, prose_words, run_async
from benchmarks.measure import busy_while_queued, cpu_s, current_rss_kib, peak_rss_kib
from benchmarks.options import Options, Workload

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


async def run_floor(opts: Options) -> dict[str, Any]:
    words = prose_words() if opts.result_bytes or opts.arg_bytes else ""
    shards = [asyncio.Semaphore(opts.concurrency) for _ in range(opts.shards)]
    in_flight = 0
    results: list[Any] = [None] * opts.workflows
    finished: list[float] = []

    async def call(index: int, i: int, prompt: str) -> int | str:
        await asyncio.sleep(opts.sleep_of(index, i))
        if opts.result_bytes:
            return prose(words, opts.result_bytes, index * 1_000_003 + i + len(prompt))
        return i

    async def one_run(index: int) -> None:
        nonlocal in_flight
        slots = shards[index % opts.shards]
        out: list[Any] = []
        for i in range(opts.steps):
            prompt = prose(words, opts.arg_bytes, index * 7 + i)
            async with slots:
                in_flight += 1
                try:
                    out.append(await call(index, i, prompt))
                finally:
                    in_flight -= 1
        results[index] = out
        finished.append(time.perf_counter())

    samples: list[tuple[float, int]] = []

    async def sample() -> None:
        while True:
            samples.append((time.perf_counter(), in_flight))
            await asyncio.sleep(opts.sample_interval)

    rss_idle = current_rss_kib()
    cpu0 = cpu_s()
    t0 = time.perf_counter()
    sampler = asyncio.create_task(sample(), name="floor.sampler")
    started: list[float] = []
    tasks = []
    for first in range(0, opts.workflows, opts.batch):
        n = min(opts.batch, opts.workflows - first)
        tasks += [asyncio.create_task(one_run(first + i)) for i in range(n)]
        started += [time.perf_counter()] * n
        await asyncio.sleep(0)  # start in batches, as the engine workloads do
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    cpu = cpu_s() - cpu0
    sampler.cancel()
    steps = opts.workflows * opts.steps
    ideal = min(opts.slots, opts.workflows) / opts.mean_sleep_s if opts.sleep_s > 0 else None
    busy = [n for _, n in samples]
    return {
        "completed": all(r is not None for r in results),
        "workflows": opts.workflows,
        "steps_per_workflow": opts.steps,
        "steps": steps,
        "slots": opts.slots,
        "wall_s": round(wall, 4),
        "steps_per_s": round(steps / wall, 1),
        "cpu_s": round(cpu, 3),
        "cpu_s_per_1000_steps": round(cpu / steps * 1000, 4),
        "cpu_cores": round(cpu / wall, 3),
        "busy_ratio": round(sum(busy) / len(busy) / opts.slots, 4) if busy else None,
        "busy_while_queued": busy_while_queued(
            samples, started, sorted(finished), opts.slots, opts.slots
        ),
        "ideal_steps_per_s": None if ideal is None else round(ideal, 1),
        "efficiency": None if ideal is None else round(steps / wall / ideal, 4),
        "rss_idle_kib": rss_idle,
        "rss_peak_kib": peak_rss_kib(),
        "rss_per_slot_kib": round((peak_rss_kib() - rss_idle) / opts.slots, 3),
    }


def _run(opts: Options, ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    return run_async(opts.loop, run_floor(opts))


def compare(opts: Options, ours: dict[str, Any]) -> dict[str, Any]:
    """Run the floor of the same shape in a fresh process (its memory apart from ours) and
    return it with ours over it."""
    argv = [
        sys.executable,
        str(SCRIPT),
        "--workload=floor",
        f"-W={opts.workflows}",
        f"-K={opts.steps}",
        f"-S={opts.sleep_s}",
        f"--sleep-max={opts.sleep_max_s}",
        f"--arg-bytes={opts.arg_bytes}",
        f"--result-bytes={opts.result_bytes}",
        f"--shards={opts.shards}",
        f"--concurrency={opts.concurrency}",
        f"--batch={opts.batch}",
        f"--loop={opts.loop}",
        f"--sample-interval={opts.sample_interval}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the floor run failed ({done.returncode}): {done.stderr.strip()}")
    floor = json.loads(done.stdout)

    def ratio(key: str) -> float | None:
        a, b = ours.get(key), floor.get(key)
        return round(a / b, 4) if a and b else None

    return {
        "floor": floor,
        "over_floor": {
            "wall": ratio("wall_s"),
            "cpu_per_step": ratio("cpu_s_per_1000_steps"),
            "rss_per_slot": ratio("rss_per_slot_kib"),
            "busy_while_queued": ours.get("busy_while_queued"),
            "floor_busy_while_queued": floor.get("busy_while_queued"),
        },
    }


WORKLOAD = Workload(
    "floor",
    """the sleep or llm workload's steps and slots as a plain asyncio program with no
    database: a semaphore per shard, runs assigned to shards in turn. Same options (-W -K -S
    --sleep-max --arg-bytes --result-bytes --shards --concurrency).""",
    _run,
    {"workflows": 20_000, "steps": 5, "sleep_s": 1.0, "shards": 100, "concurrency": 50},
)
