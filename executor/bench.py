"""The benchmark harness: the real engine, in-process, on a fresh SQLite file; one JSON object out.

Run it as `python scripts/bench.py ...` or `executor bench ...`; `--help` documents every
parameter, every output field and the targets. Nothing here is a test: the numbers are reported,
never asserted (docs/PERFORMANCE.md holds the measured ones).

The `ceiling` workload leaves the engine out: it drives the engine's own named statements (and,
separately, the repository's transaction functions) from one thread with plain sqlite3, to show
what SQLite itself allows on this machine for the writes one step needs.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from executor import codec, config, errors, registry, vocabulary
from executor.client import Client
from executor.engine.engine import Engine
from executor.engine.instance import WorkflowContext
from executor.store import database
from executor.store import repository as repo
from executor.store.sql import Q

T = TypeVar("T")

ENGINE_WORKLOADS = ("noop", "sleep", "fanout", "long")
WORKLOADS = (*ENGINE_WORKLOADS, "ceiling")

# Per-workload defaults for the options left unset on the command line. sleep's shape is the
# 5,000-slot target (100 shards x 50 slots); the rest use the engine's own defaults.
_ENGINE = config.EngineConfig()
DEFAULTS: dict[str, dict[str, Any]] = {
    "noop": {"workflows": 10_000, "steps": 5, "sleep_s": 0.0, "fanout": 1},
    "sleep": {
        "workflows": 20_000,
        "steps": 5,
        "sleep_s": 1.0,
        "fanout": 1,
        "shards": 100,
        "concurrency": 50,
    },
    "fanout": {"workflows": 2_000, "steps": 1, "sleep_s": 0.0, "fanout": 10},
    "long": {"workflows": 1, "steps": 1_000, "sleep_s": 0.0, "fanout": 1},
    "ceiling": {"workflows": 10_000, "steps": 5, "sleep_s": 0.0, "fanout": 1},
}
_COMMON_DEFAULTS: dict[str, Any] = {
    "shards": _ENGINE.shards,
    "concurrency": _ENGINE.concurrency,
    "poll_interval": _ENGINE.poll_interval_s,
    "instance_cache": _ENGINE.instance_cache_size,
}

START_BATCH = 1000  # runs per Client.start_many transaction
CEILING_BATCH = 500  # steps per transaction in the ceiling workload
SAMPLE_INTERVAL_S = 0.05  # how often the busy-slot sampler reads Engine.load()
TIMEOUT_S = 600.0
LONG_WINDOW = 100  # steps averaged at each end of the long workflow
FIFO_FRACTION = 0.10

EPILOG = """\
workloads:
  noop     W workflows of K sequential steps that return a small value at once: our overhead.
  sleep    W workflows of K sequential steps that `await asyncio.sleep(S)` (a remote API call).
  fanout   W workflows of F parallel steps (asyncio.gather), then one join step (F+1 steps;
           K is not used). Branches sleep S seconds when S > 0, else return at once.
  long     one workflow (W=1) of K sequential no-op steps; each step records
           time.perf_counter() when it runs, to see whether a step costs more late in a run
           (--trace-steps is implied).
  ceiling  no engine: what SQLite itself allows for the writes of W*K steps, done from one
           thread with plain sqlite3 on the engine's schema (the migrations, the engine's
           pragmas and its named statements). Per step: claim UPDATE on tasks (+ the attempt
           UPDATE on steps), DELETE task + UPDATE steps + UPDATE runs + upsert replays, INSERT
           next step + task, DELETE replay; in three transactions per batch of --ceiling-batch
           steps, as the engine groups them. "raw" runs the named statements directly; "repo"
           calls the repository's transaction functions (claim, record, commit_replays), so
           raw vs repo is the store layer's Python cost and repo vs an engine run is the
           engine's; us_per_step splits the time between the three transactions. Runs
           durability normal and full unless --durability is given.

timing (all from time.perf_counter()):
  Starting is timed on its own (start_s): W runs through Client.start_many, --batch runs per
  transaction. By default starting OVERLAPS execution: the engine is already running while the
  runs are being started, and the measured window (wall_s) runs from the first start_many call
  to the last finish. With --prefill every run is started before the engine starts, and wall_s
  (also given as drain_s) runs from the engine's start to the last finish.
  A run finishes when the engine's on_finish(run_id, status) callback fires, which is after the
  commit that finishes it. A run's latency runs from the moment its start_many transaction
  returned (or from the engine's start, with --prefill, if later) to its finish.

output fields (one JSON object on stdout):
  wall_s, steps_per_s, workflows_per_s   the measured window and the rates over it
  start_s, start_runs_per_s              time to start all W runs (and the start rate)
  cpu_s_per_1000_steps                   user+sys CPU of this process (all its threads,
                                         getrusage RUSAGE_SELF) over the window, per 1,000 steps
  cpu_cores                              that CPU time over wall_s (2.0 = both cores busy)
  latency_p50_s/_p99_s/_max_s            per-run latency, nearest-rank percentiles
  first_10pct_done_s (and _frac)         when 10% of the runs (any of them) had finished,
                                         measured from the start of the window (_frac: over
                                         wall_s). The FIFO target reads this one.
  first_started_10pct_done_s (and _frac) when the 10% of runs that were STARTED first had all
                                         finished (a stricter FIFO reading)
  last_10pct_s (and _frac)               the tail: from the moment 90% had finished until the
                                         last one finished
  spearman_start_vs_finish               Spearman rank correlation of start order and finish
                                         order (1.0 = strict FIFO; null for fewer than 2 runs)
  rss_idle_kib, rss_peak_kib             resident memory before any run was started (engine and
                                         client open), and the process peak (ru_maxrss)
  rss_per_slot_kib                       (peak - idle) / total slots
  busy_ratio                             mean of Engine.load()["in_flight"], sampled every
                                         --sample-interval over the window, over total slots
  ideal_steps_per_s, efficiency          sleep and fanout with S > 0: the rate if every slot
                                         were always sleeping (slots / S), and our share of it
  step_ms_first/_last, step_time_ratio   long: mean time per step over the first and the last
                                         100 steps (fewer for short runs: step_window) and
                                         last / first
  turnaround_p50/_p99/_max/_mean_ms      with --trace-steps (and for long): from the end of one
                                         step's body to the start of the next step of the same
                                         run: the engine's record-replay-claim cycle plus any
                                         wait for a free slot
  timeline                               with --timeline: per second of the window, the mean
                                         slots in flight, steps executed and runs finished
  succeeded, failed, completed           run outcomes; completed is false on --timeout
  cpu_calibration_ms                     a fixed pure-Python loop timed before and after the run
                                         (about 16 ms here on a fast CPU): on a shared VM the CPU
                                         speed varies, and a slow calibration marks a slow run

targets (this 2-core machine; reported in docs/PERFORMANCE.md, never asserted):
  noop  W=10,000 K=5: >= 10,000 steps/s with --durability normal, >= 5,000 with full
  sleep S=1, 100 shards x 50 slots, W=20,000 K=5: >= 95% of the ideal 5,000 steps/s, and
        <= 10 KiB of RSS per slot above the idle baseline
  FIFO  sleep at W=20,000: spearman >= 0.95 and first_10pct_done_frac <= 0.15 (no run can
        finish before K*S, so that fraction cannot go below K*S / wall_s: 0.25 of the ideal)
  long  K=1,000: step_time_ratio <= 1.2

exit status: 0 when every run succeeded, 1 when one failed, the engine crashed or --timeout
passed (the JSON is printed all the same), 2 on bad arguments.
"""


# --- command line --------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _defaults_text(key: str, skip: tuple[str, ...] = ()) -> str:
    return "; ".join(f"{w} {DEFAULTS[w][key]:,}" for w in WORKLOADS if w not in skip)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark the executor engine in-process on a fresh SQLite file and print"
        " one JSON object.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="noop",
        help="what to run (default: noop; see below)",
    )
    parser.add_argument(
        "-W",
        dest="workflows",
        type=_positive_int,
        default=None,
        help=f"workflows to start (default: {_defaults_text('workflows')})",
    )
    parser.add_argument(
        "-K",
        dest="steps",
        type=_positive_int,
        default=None,
        help="sequential steps per workflow (default: "
        f"{_defaults_text('steps', skip=('fanout',))}; fanout does not use it)",
    )
    parser.add_argument(
        "-S",
        dest="sleep_s",
        type=_non_negative_float,
        default=None,
        help="seconds each sleep step awaits (default: sleep 1.0; fanout 0, "
        "i.e. its branches return at once)",
    )
    parser.add_argument(
        "-F",
        dest="fanout",
        type=_positive_int,
        default=None,
        help="parallel branches per fanout workflow (default: 10)",
    )
    parser.add_argument(
        "--shards",
        type=_positive_int,
        default=None,
        help=f"engine shards (default: sleep 100, others {_ENGINE.shards})",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=None,
        help=f"slots per shard (default: sleep 50, others {_ENGINE.concurrency})",
    )
    parser.add_argument(
        "--durability",
        choices=("normal", "full"),
        default=None,
        help="SQLite synchronous=NORMAL or FULL (default: normal; ceiling runs"
        " both unless this is given)",
    )
    parser.add_argument(
        "--instance-cache",
        dest="instance_cache",
        type=_non_negative_int,
        default=None,
        help="live workflow instances kept in memory; 0 replays every run from"
        f" its journal at every step (default: {_ENGINE.instance_cache_size:,})",
    )
    parser.add_argument(
        "--poll-interval",
        dest="poll_interval",
        type=_positive_float,
        default=None,
        help=f"engine poll interval, seconds (default: {_ENGINE.poll_interval_s})",
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=START_BATCH,
        help=f"runs per Client.start_many transaction (default: {START_BATCH:,})",
    )
    parser.add_argument(
        "--prefill",
        action="store_true",
        help="start every run before the engine starts, and time the drain on"
        " its own (default: start while the engine runs)",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop (default: uvloop)",
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=None,
        help="database file to create; it must not exist (default: a file in a"
        " new temporary folder, removed afterwards). ceiling adds"
        " .normal/.full to it",
    )
    parser.add_argument(
        "--ceiling-batch",
        dest="ceiling_batch",
        type=_positive_int,
        default=CEILING_BATCH,
        help=f"ceiling: steps per transaction (default: {CEILING_BATCH})",
    )
    parser.add_argument(
        "--sample-interval",
        dest="sample_interval",
        type=_positive_float,
        default=SAMPLE_INTERVAL_S,
        help=f"seconds between busy-slot samples (default: {SAMPLE_INTERVAL_S})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=TIMEOUT_S,
        help=f"give up waiting for the runs after this many seconds (default: {TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="add a per-second timeline (slots in flight, steps, finishes) to the output",
    )
    parser.add_argument(
        "--trace-steps",
        dest="trace_steps",
        action="store_true",
        help="record when every step starts and ends (16 bytes per step, which shows in the"
        " memory figures) and report the turnaround: from one step's end to the start of the"
        " next step of the same run (always on for long; not for fanout)",
    )
    parser.add_argument(
        "--json-indent",
        dest="json_indent",
        type=_non_negative_int,
        default=None,
        help="indent the JSON output (default: one line)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="profile the run's main thread with pyinstrument (if installed) and"
        " write the report there: HTML if the name ends in .html, else text"
        " (default: no profiling)",
    )
    return parser


@dataclass(frozen=True, slots=True)
class Options:
    workload: str
    workflows: int
    steps: int
    sleep_s: float
    fanout: int
    shards: int
    concurrency: int
    durability: config.Durability | None
    instance_cache: int
    poll_interval: float
    batch: int
    prefill: bool
    loop: str
    db: Path | None
    ceiling_batch: int
    sample_interval: float
    timeout: float
    timeline: bool
    trace_steps: bool

    @property
    def steps_per_workflow(self) -> int:
        return self.fanout + 1 if self.workload == "fanout" else self.steps

    @property
    def slots(self) -> int:
        return self.shards * self.concurrency

    def params(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__slots__}
        out["db"] = None if self.db is None else str(self.db)
        return out


def resolve(ns: argparse.Namespace) -> Options:
    """Fill the options left unset with the workload's defaults."""
    per = {**_COMMON_DEFAULTS, **DEFAULTS[ns.workload]}

    def pick(name: str) -> Any:
        value = getattr(ns, name)
        return per[name] if value is None else value

    return Options(
        workload=ns.workload,
        workflows=pick("workflows"),
        steps=pick("steps"),
        sleep_s=pick("sleep_s"),
        fanout=pick("fanout"),
        shards=pick("shards"),
        concurrency=pick("concurrency"),
        durability=ns.durability,
        instance_cache=pick("instance_cache"),
        poll_interval=pick("poll_interval"),
        batch=ns.batch,
        prefill=ns.prefill,
        loop=ns.loop,
        db=ns.db,
        ceiling_batch=ns.ceiling_batch,
        sample_interval=ns.sample_interval,
        timeout=ns.timeout,
        timeline=ns.timeline,
        trace_steps=ns.trace_steps,
    )


# --- statistics ----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        shared = (i + j) / 2 + 1
        for k in range(i, j + 1):
            out[order[k]] = shared
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson's r of the ranks (so ties are handled).

    None when it is undefined: fewer than two values, or all values of one side equal.
    """
    if len(xs) != len(ys):
        raise ValueError("spearman needs two sequences of the same length")
    n = len(xs)
    if n < 2:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mean = (n + 1) / 2  # the mean of ranks 1..n, ties or not
    cov = sum((a - mean) * (b - mean) for a, b in zip(rx, ry, strict=True))
    var_x = sum((a - mean) ** 2 for a in rx)
    var_y = sum((b - mean) ** 2 for b in ry)
    if var_x == 0 or var_y == 0:
        return None
    return max(-1.0, min(1.0, cov / math.sqrt(var_x * var_y)))


# --- the machine and its memory ------------------------------------------------------------------


def current_rss_kib() -> int:
    """Resident memory now (Linux /proc; elsewhere the peak, the best getrusage offers)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return peak_rss_kib()


def peak_rss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


CALIBRATION_LOOPS = 300_000  # about 16 ms of pure Python on this machine when its CPU is fast


def calibrate_ms() -> float:
    """Time a fixed pure-Python loop: how fast this CPU runs Python right now.

    On a shared VM the same loop can take twice as long from one minute to the next; a run whose
    calibration before and after is slow was measured on a slow CPU and says little about us.
    """
    started = time.perf_counter()
    total = 0
    for i in range(CALIBRATION_LOOPS):
        total += i * i
    return round((time.perf_counter() - started) * 1000, 2)


def machine() -> dict[str, Any]:
    ram_kib = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
                break
    return {
        "cpus": os.cpu_count(),
        "ram_gib": None if ram_kib is None else round(ram_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


# --- the workloads' code -------------------------------------------------------------------------


class StepClock:
    """When each step's body started and ended, per workflow index; a no-op unless enabled,
    since the arrays grow with the steps run and would show in the memory figures."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.starts: dict[int, array.array[float]] = {}
        self.ends: dict[int, array.array[float]] = {}

    def start(self, index: int) -> None:
        if self.enabled:
            self.starts.setdefault(index, array.array("d")).append(time.perf_counter())

    def end(self, index: int) -> None:
        if self.enabled:
            self.ends.setdefault(index, array.array("d")).append(time.perf_counter())

    def turnarounds(self) -> list[float]:
        """From each step's end to the start of the next step of the same run."""
        out: list[float] = []
        for index, starts in self.starts.items():
            ends = self.ends.get(index, starts)
            out += [nxt - end for end, nxt in zip(ends, starts[1:], strict=False)]
        return out


def build_workload(
    opts: Options, clock: StepClock
) -> tuple[registry.Registry, registry.WorkflowDef[Any], Callable[[int], list[Any]]]:
    """A private registry holding the workload's workflow and steps, and each run's arguments."""
    reg = registry.Registry()

    @registry.step(name="bench.noop", registry=reg)
    async def noop(index: int, i: int) -> int:
        clock.start(index)
        return i

    @registry.step(name="bench.nap", registry=reg)
    async def nap(index: int, seconds: float) -> None:
        clock.start(index)
        await asyncio.sleep(seconds)
        clock.end(index)

    @registry.step(name="bench.join", registry=reg)
    async def join(parts: list[int]) -> int:
        return sum(parts)

    @registry.workflow(name="bench.sequential", registry=reg)
    async def sequential(ctx: WorkflowContext, k: int, index: int) -> int:
        for i in range(k):
            await ctx.step(noop, index, i)
        return k

    @registry.workflow(name="bench.sleeper", registry=reg)
    async def sleeper(ctx: WorkflowContext, k: int, seconds: float, index: int) -> int:
        for _ in range(k):
            await ctx.step(nap, index, seconds)
        return k

    @registry.workflow(name="bench.fanout", registry=reg)
    async def fanout(ctx: WorkflowContext, f: int, seconds: float, index: int) -> int:
        if seconds > 0:
            await asyncio.gather(*(ctx.step(nap, index, seconds) for _ in range(f)))
            parts = list(range(f))
        else:
            parts = await asyncio.gather(*(ctx.step(noop, index, i) for i in range(f)))
        return await ctx.step(join, parts)

    if opts.workload in ("noop", "long"):
        return reg, sequential, lambda i: [opts.steps, i]
    if opts.workload == "sleep":
        return reg, sleeper, lambda i: [opts.steps, opts.sleep_s, i]
    if opts.workload == "fanout":
        return reg, fanout, lambda i: [opts.fanout, opts.sleep_s, i]
    raise ValueError(f"not an engine workload: {opts.workload}")


# --- running the engine --------------------------------------------------------------------------


class Finishes:
    """The engine's on_finish callback: when each run finished, and how."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.at: dict[str, tuple[float, str]] = {}
        self.all_done = asyncio.Event()

    def __call__(self, run_id: str, status: str) -> None:
        if run_id not in self.at:
            self.at[run_id] = (time.perf_counter(), status)
            if len(self.at) >= self.expected:
                self.all_done.set()


class Sample(NamedTuple):
    at: float  # perf_counter
    in_flight: int
    steps: int  # steps executed so far (Engine.load()["steps"])


async def _sample_busy(engine: Engine, samples: list[Sample], interval_s: float) -> None:
    while True:
        load = engine.load()
        samples.append(Sample(time.perf_counter(), load["in_flight"], load["steps"]))
        await asyncio.sleep(interval_s)


async def _start_all(
    client: Client,
    wf: registry.WorkflowDef[Any],
    args_of: Callable[[int], list[Any]],
    total: int,
    batch: int,
) -> tuple[list[str], list[float]]:
    """Start the runs in batches; return their ids and when each one's transaction returned."""
    ids: list[str] = []
    started: list[float] = []
    for first in range(0, total, batch):
        n = min(batch, total - first)
        ids += await client.start_many(wf, [args_of(first + i) for i in range(n)])
        started += [time.perf_counter()] * n
    return ids, started


async def run_engine(opts: Options, db_path: Path) -> dict[str, Any]:
    # The long workload is one run: its step times are what it measures.
    clock = StepClock(opts.trace_steps or opts.workload == "long")
    reg, wf, args_of = build_workload(opts, clock)
    durability: config.Durability = opts.durability or "normal"
    db_cfg = config.DatabaseConfig(path=db_path, durability=durability)
    eng_cfg = config.EngineConfig(
        shards=opts.shards,
        concurrency=opts.concurrency,
        poll_interval_s=opts.poll_interval,
        instance_cache_size=opts.instance_cache,
    )
    finishes = Finishes(opts.workflows)
    engine = Engine(eng_cfg, db_cfg, reg=reg, on_finish=finishes)
    client = Client(db_cfg, reg=reg, strict=True, shards=opts.shards)
    samples: list[Sample] = []
    sampler: asyncio.Task[None] | None = None
    crashed: str | None = None
    engine_started = False
    try:
        if opts.prefill:
            await client.open()
            rss_idle = current_rss_kib()
            cpu_start0 = cpu_s()
            t_start0 = time.perf_counter()
            ids, started = await _start_all(client, wf, args_of, opts.workflows, opts.batch)
            start_s = time.perf_counter() - t_start0
            start_cpu_s = cpu_s() - cpu_start0
            cpu0 = cpu_s()
            t0 = time.perf_counter()
            await engine.start()
            engine_started = True
        else:
            await engine.start()
            engine_started = True
            await client.open()
            rss_idle = current_rss_kib()
            cpu0 = cpu_s()
            t0 = time.perf_counter()
        sampler = asyncio.create_task(
            _sample_busy(engine, samples, opts.sample_interval), name="bench.sampler"
        )
        if not opts.prefill:
            ids, started = await _start_all(client, wf, args_of, opts.workflows, opts.batch)
            start_s = time.perf_counter() - t0
            start_cpu_s = math.nan  # shared with execution: not separable
        done = asyncio.create_task(finishes.all_done.wait(), name="bench.done")
        stopped = asyncio.create_task(engine.wait(), name="bench.engine-wait")
        await asyncio.wait(
            {done, stopped}, timeout=opts.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        cpu_used = cpu_s() - cpu0
        t_wait_end = time.perf_counter()
        done.cancel()
        if stopped.done():
            exc = stopped.exception()
            crashed = repr(exc) if exc is not None else "the engine stopped by itself"
        else:
            stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(done, stopped, return_exceptions=True)
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        load = engine.load()
        if engine_started:
            try:
                await engine.stop("benchmark finished")
            except errors.ExecutorError as exc:
                crashed = crashed or repr(exc)
        await client.close()

    result = _engine_report(opts, finishes, ids, started, t0, t_wait_end, cpu_used, samples, clock)
    result.update(
        durability=durability,
        start_s=round(start_s, 4),
        start_runs_per_s=round(opts.workflows / start_s, 1) if start_s > 0 else None,
        start_cpu_s=None if math.isnan(start_cpu_s) else round(start_cpu_s, 3),
        start_overlaps_execution=not opts.prefill,
        rss_idle_kib=rss_idle,
        rss_peak_kib=peak_rss_kib(),
        rss_per_slot_kib=round((peak_rss_kib() - rss_idle) / opts.slots, 3),
        engine_crashed=crashed,
        engine_load=load,
    )
    return result


def _engine_report(
    opts: Options,
    finishes: Finishes,
    ids: list[str],
    started: list[float],
    t0: float,
    t_wait_end: float,
    cpu_used: float,
    samples: list[Sample],
    clock: StepClock,
) -> dict[str, Any]:
    order = {run_id: i for i, run_id in enumerate(ids)}
    done = [(order[r], t, status) for r, (t, status) in finishes.at.items() if r in order]
    completed = len(done) == opts.workflows
    finish_times = sorted(t for _, t, _ in done)
    t_end = finish_times[-1] if completed else t_wait_end
    wall = t_end - t0
    steps = len(done) * opts.steps_per_workflow
    out: dict[str, Any] = {
        "completed": completed,
        "workflows": opts.workflows,
        "steps_per_workflow": opts.steps_per_workflow,
        "steps": steps,
        "succeeded": sum(1 for *_, s in done if s == vocabulary.RunState.SUCCEEDED),
        "failed": sum(1 for *_, s in done if s != vocabulary.RunState.SUCCEEDED),
        "slots": opts.slots,
        "wall_s": round(wall, 4),
        "drain_s": round(wall, 4) if opts.prefill else None,
        "steps_per_s": round(steps / wall, 1) if wall > 0 else None,
        "workflows_per_s": round(len(done) / wall, 1) if wall > 0 else None,
        "cpu_s": round(cpu_used, 3),
        "cpu_s_per_1000_steps": round(cpu_used / steps * 1000, 4) if steps else None,
        "cpu_cores": round(cpu_used / wall, 3) if wall > 0 else None,
    }
    if done:
        latencies = sorted(t - max(started[i], t0) for i, t, _ in done)
        n_first = max(1, math.ceil(FIFO_FRACTION * opts.workflows))
        n_tail = max(1, math.ceil((1 - FIFO_FRACTION) * opts.workflows))
        first = finish_times[n_first - 1] - t0 if len(finish_times) >= n_first else None
        ninety = finish_times[n_tail - 1] - t0 if len(finish_times) >= n_tail else None
        earliest = [t for i, t, _ in done if i < n_first]
        first_started = max(earliest) - t0 if len(earliest) == n_first else None
        by_start = sorted(done)
        out.update(
            latency_p50_s=round(percentile(latencies, 50), 4),
            latency_p99_s=round(percentile(latencies, 99), 4),
            latency_max_s=round(latencies[-1], 4),
            first_10pct_done_s=_round(first),
            first_10pct_done_frac=_frac(first, wall),
            first_started_10pct_done_s=_round(first_started),
            first_started_10pct_done_frac=_frac(first_started, wall),
            last_10pct_s=_round(None if ninety is None or not completed else wall - ninety),
            last_10pct_frac=_frac(None if ninety is None or not completed else wall - ninety, wall),
            spearman_start_vs_finish=_round(
                spearman([float(i) for i, _, _ in by_start], [t for _, t, _ in by_start]), 5
            ),
        )
    busy = [s.in_flight for s in samples]
    out["busy_ratio"] = round(sum(busy) / len(busy) / opts.slots, 4) if busy else None
    out["in_flight_max"] = max(busy) if busy else None
    out["busy_samples"] = len(busy)
    if opts.timeline:
        out["timeline"] = _timeline(samples, [t for _, t, _ in done], t0)
    if opts.sleep_s > 0 and opts.workload in ("sleep", "fanout"):
        width = opts.workflows * (opts.fanout if opts.workload == "fanout" else 1)
        ideal = min(opts.slots, width) / opts.sleep_s
        out["ideal_steps_per_s"] = round(ideal, 1)
        out["efficiency"] = round(steps / wall / ideal, 4) if wall > 0 else None
    if opts.workload == "long":
        out.update(_step_times(list(clock.starts.get(0, []))))
    if clock.enabled and opts.workload != "fanout":
        gaps = sorted(clock.turnarounds())
        if gaps:
            out.update(
                turnaround_p50_ms=round(percentile(gaps, 50) * 1000, 3),
                turnaround_p99_ms=round(percentile(gaps, 99) * 1000, 3),
                turnaround_max_ms=round(gaps[-1] * 1000, 3),
                turnaround_mean_ms=round(sum(gaps) / len(gaps) * 1000, 3),
            )
    return out


def _timeline(samples: list[Sample], finished: list[float], t0: float) -> list[dict[str, Any]]:
    """Per second of the window: mean slots in flight, steps executed, runs finished."""
    seconds: dict[int, list[Sample]] = {}
    for s in samples:
        seconds.setdefault(int(s.at - t0), []).append(s)
    done: dict[int, int] = {}
    for t in finished:
        done[int(t - t0)] = done.get(int(t - t0), 0) + 1
    out = []
    last_steps = 0
    for second in range(max([*seconds, *done, 0]) + 1):
        group = seconds.get(second, [])
        steps = group[-1].steps if group else last_steps
        out.append(
            {
                "second": second,
                "in_flight_mean": round(sum(s.in_flight for s in group) / len(group), 1)
                if group
                else None,
                "steps": steps - last_steps,
                "finished": done.get(second, 0),
            }
        )
        last_steps = steps
    return out


def _step_times(times: list[float]) -> dict[str, Any]:
    # Per-step time is the gap between one step running and the next: the whole cycle (record,
    # replay, claim) that the engine spends per step of one workflow.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    window = min(LONG_WINDOW, len(gaps) // 2)
    if window < 1:
        return {
            "step_window": 0,
            "step_ms_first": None,
            "step_ms_last": None,
            "step_time_ratio": None,
        }
    first = sum(gaps[:window]) / window
    last = sum(gaps[-window:]) / window
    return {
        "step_window": window,
        "step_ms_first": round(first * 1000, 4),
        "step_ms_last": round(last * 1000, 4),
        "step_ms_mean": round(sum(gaps) / len(gaps) * 1000, 4),
        "step_time_ratio": round(last / first, 4) if first > 0 else None,
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _frac(value: float | None, wall: float) -> float | None:
    return None if value is None or wall <= 0 else round(value / wall, 4)


# --- the SQLite ceiling --------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    statements: int = 0
    rows: int = 0
    transactions: int = 0
    # Seconds in each of the three transactions a step needs, to set beside an engine profile.
    claim_s: float = 0.0
    record_s: float = 0.0
    replay_s: float = 0.0

    def add(self, statements: int, rows: int) -> None:
        self.statements += statements
        self.rows += rows

    def add_times(self, claim_s: float, record_s: float, replay_s: float) -> None:
        self.claim_s += claim_s
        self.record_s += record_s
        self.replay_s += replay_s


def _open_plain(path: Path, durability: config.Durability, shards: int) -> sqlite3.Connection:
    cfg = config.DatabaseConfig(path=path, durability=durability)
    conn = sqlite3.connect(str(path), isolation_level=None)
    # The engine's own connection setup (pragmas, migrations) and shard record, not a copy, so
    # the ceiling measures the same file layout and durability the engine writes.
    database._setup(conn, cfg, path)
    database._check_shards(conn, shards, path)
    return conn


def _seed(conn: sqlite3.Connection, runs: int, shards: int) -> list[tuple[int, int]]:
    """Create the runs with their first step queued (not timed); return (rid, shard) of each."""
    now = time.time()
    args = codec.encode([0])
    fp = codec.fingerprint(args)
    rids: list[tuple[int, int]] = []
    for first in range(0, runs, START_BATCH):
        new = [
            vocabulary.NewRun(
                f"ceiling-{i}", "bench.sequential", None, i % shards, codec.encode([1]), None
            )
            for i in range(first, min(runs, first + START_BATCH))
        ]
        repo.create_runs(conn, new, now)
        rows = [repo.get_run(conn, r.id) for r in new]
        rids += [(row.rid, row.shard) for row in rows if row is not None]
    outputs = [
        vocabulary.ReplayOutput(
            rid,
            shard,
            0,
            [vocabulary.NewStep(0, vocabulary.StepKind.STEP, "bench.noop", fp, args, None)],
        )
        for rid, shard in rids
    ]
    for first in range(0, len(outputs), START_BATCH):
        repo.commit_replays(conn, outputs[first : first + START_BATCH], now)
    return rids


class _Claim:
    __slots__ = ("pos", "rid", "seq", "shard")

    def __init__(self, rid: int, pos: int, shard: int) -> None:
        self.rid = rid
        self.pos = pos
        self.shard = shard
        self.seq = 0


@database.transaction
def _raw_claim(
    conn: sqlite3.Connection, token: int, wants: list[tuple[int, int]], tally: Tally
) -> list[_Claim]:
    now = time.time()
    conn.execute(Q["select_epoch"]).fetchone()
    # The engine's claim statements (repository._claim): mark per shard, count the attempts,
    # read the batch back by its token.
    conn.executemany(
        Q["mark_claimed"],
        [
            {"token": token, "engine": 1, "epoch": 0, "now": now, "shard": shard, "limit": limit}
            for shard, limit in wants
        ],
    )
    conn.execute(Q["count_claimed_attempts"], {"token": token, "now": now})
    out = [
        _Claim(rid, pos, shard)
        for rid, pos, shard, _attempt, _name, _args, _key, _id, _wf in conn.execute(
            Q["select_claimed"], (token,)
        )
    ]
    tally.add(len(wants) + 3, 3 * len(out))
    return out


@database.transaction
def _raw_record(
    conn: sqlite3.Connection, claims: list[_Claim], token: int, result: bytes, tally: Tally
) -> None:
    now = time.time()
    for c in claims:
        conn.execute(Q["delete_claimed_task"], (c.rid, c.pos, token))
        c.seq = conn.execute(
            Q["record_step"],
            {
                "status": vocabulary.StepState.SUCCEEDED,
                "result": result,
                "error": None,
                "now": now,
                "rid": c.rid,
                "pos": c.pos,
            },
        ).fetchone()[0]
        conn.execute(Q["advance_run"], {"seq": c.seq, "now": now, "rid": c.rid}).fetchone()
        conn.execute(Q["queue_replay"], {"rid": c.rid, "shard": c.shard, "seq": c.seq, "now": now})
    tally.add(4 * len(claims), 4 * len(claims))


@database.transaction
def _raw_advance(
    conn: sqlite3.Connection,
    claims: list[_Claim],
    k: int,
    args: bytes,
    fp: str,
    result: bytes,
    tally: Tally,
) -> None:
    now = time.time()
    for c in claims:
        nxt = c.pos + 1
        if nxt < k:
            conn.execute(Q["insert_step"], (c.rid, nxt, "step", "bench.noop", fp, args, now))
            conn.execute(Q["insert_task"], (c.rid, nxt, c.shard))
            conn.execute(Q["delete_replay_through"], (c.rid, c.seq))
            tally.add(3, 3)
        else:
            conn.execute(
                Q["finish_run"],
                {
                    "status": vocabulary.StepState.SUCCEEDED,
                    "result": result,
                    "error": None,
                    "now": now,
                    "rid": c.rid,
                },
            )
            conn.execute(Q["delete_queued_tasks_of_run"], (c.rid,))
            conn.execute(Q["delete_timers_of_run"], (c.rid,))
            conn.execute(Q["delete_replay"], (c.rid,))
            tally.add(4, 2)


def result_blob() -> bytes:
    return codec.encode(0)


def _wants(shards: int, batch: int) -> list[tuple[int, int]]:
    per = max(1, math.ceil(batch / shards))
    return [(s, per) for s in range(shards)]


def ceiling_raw(conn: sqlite3.Connection, k: int, shards: int, batch: int) -> tuple[int, Tally]:
    """Every step's writes through the engine's named statements; return (steps, tally)."""
    tally = Tally()
    args = codec.encode([0])
    fp = codec.fingerprint(args)
    result = result_blob()
    wants = _wants(shards, batch)
    steps = 0
    token = 0
    while True:
        token += 1
        t0 = time.perf_counter()
        claims = _raw_claim(conn, token, wants, tally)
        t1 = time.perf_counter()
        tally.transactions += 1
        if not claims:
            return steps, tally
        _raw_record(conn, claims, token, result, tally)
        t2 = time.perf_counter()
        _raw_advance(conn, claims, k, args, fp, result, tally)
        tally.add_times(t1 - t0, t2 - t1, time.perf_counter() - t2)
        tally.transactions += 2
        steps += len(claims)


def ceiling_repo(conn: sqlite3.Connection, k: int, shards: int, batch: int) -> tuple[int, Tally]:
    """Every step through the repository's transaction functions (no engine); return (steps,
    tally), the tally holding only the transactions and their times."""
    tally = Tally()
    args = codec.encode([0])
    fp = codec.fingerprint(args)
    result = result_blob()
    wants = _wants(shards, batch)
    steps = 0
    token = 0
    while True:
        token += 1
        t0 = time.perf_counter()
        claimed = repo.claim(conn, 1, 0, token, wants, time.time())
        t1 = time.perf_counter()
        tally.transactions += 1
        if not claimed:
            return steps, tally
        events = repo.record(
            conn,
            [
                vocabulary.Outcome(
                    vocabulary.OutcomeKind.DONE,
                    c.run_rid,
                    c.pos,
                    c.token,
                    vocabulary.StepState.SUCCEEDED,
                    result,
                )
                for c in claimed
            ],
            time.time(),
        )
        t2 = time.perf_counter()
        shard_of = {c.run_rid: c.shard for c in claimed}
        outputs = []
        for e in events:
            out = vocabulary.ReplayOutput(e.run_rid, shard_of[e.run_rid], e.seq, [])
            if e.pos + 1 < k:
                out.new_steps = [
                    vocabulary.NewStep(
                        e.pos + 1, vocabulary.StepKind.STEP, "bench.noop", fp, args, None
                    )
                ]
            else:
                out.finished, out.result = vocabulary.RunState.SUCCEEDED, result
            outputs.append(out)
        repo.commit_replays(conn, outputs, time.time())
        tally.add_times(t1 - t0, t2 - t1, time.perf_counter() - t2)
        tally.transactions += 2
        steps += len(claimed)


def _per_step_us(seconds: float, steps: int) -> float | None:
    return round(seconds / steps * 1e6, 2) if steps else None


def run_ceiling(opts: Options, folder: Path) -> dict[str, Any]:
    durabilities: tuple[config.Durability, ...] = (
        (opts.durability,) if opts.durability is not None else ("normal", "full")
    )
    out: dict[str, Any] = {}
    for durability in durabilities:
        entry: dict[str, Any] = {}
        for variant in ("raw", "repo"):
            if opts.db is not None:
                path = opts.db.with_name(f"{opts.db.name}.{durability}.{variant}")
            else:
                path = folder / f"ceiling-{durability}-{variant}.sqlite"
            if path.exists():
                raise errors.ExecutorError(f"{path} exists; the ceiling needs a fresh file")
            conn = _open_plain(path, durability, opts.shards)
            try:
                _seed(conn, opts.workflows, opts.shards)
                cpu0 = cpu_s()
                t0 = time.perf_counter()
                drive = ceiling_raw if variant == "raw" else ceiling_repo
                steps, tally = drive(conn, opts.steps, opts.shards, opts.ceiling_batch)
                seconds = time.perf_counter() - t0
                cpu_used = cpu_s() - cpu0
                unfinished = conn.execute(Q["stats_runs"]).fetchall()
            finally:
                conn.close()
            row: dict[str, Any] = {
                "steps": steps,
                "seconds": round(seconds, 4),
                "step_equivalents_per_s": round(steps / seconds, 1),
                "cpu_s_per_1000_steps": round(cpu_used / steps * 1000, 4) if steps else None,
                "runs_by_status": dict(unfinished),
                "transactions": tally.transactions,
                "us_per_step": {
                    "claim": _per_step_us(tally.claim_s, steps),
                    "record": _per_step_us(tally.record_s, steps),
                    "replay": _per_step_us(tally.replay_s, steps),
                },
            }
            if variant == "raw":  # the repository's functions do not count rows
                row.update(
                    rows=tally.rows,
                    statements=tally.statements,
                    rows_per_s=round(tally.rows / seconds, 1),
                    statements_per_s=round(tally.statements / seconds, 1),
                )
            entry[variant] = row
        out[durability] = entry
    return {
        "workflows": opts.workflows,
        "steps_per_workflow": opts.steps,
        "steps": opts.workflows * opts.steps,
        "ceiling_batch": opts.ceiling_batch,
        "completed": all(
            v["steps"] == opts.workflows * opts.steps for e in out.values() for v in e.values()
        ),
        "results": out,
    }


# --- entry point ---------------------------------------------------------------------------------


def _run_async(loop: str, coro: Coroutine[Any, Any, T]) -> T:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


@contextlib.contextmanager
def _profiled(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    try:
        import pyinstrument
    except ImportError:
        print("bench: pyinstrument is not installed; running without --profile", file=sys.stderr)
        yield
        return
    # Plain stack sampling of the main thread: every task's time shows up, not just the
    # awaiting coroutine's. The database threads do not appear; use py-spy for those.
    profiler = pyinstrument.Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        text = (
            profiler.output_html()
            if path.suffix == ".html"
            else profiler.output_text(unicode=False, color=False, show_all=False)
        )
        path.write_text(text)


def run(opts: Options) -> dict[str, Any]:
    """Run one benchmark and return its report."""
    calibration = [calibrate_ms()]
    with contextlib.ExitStack() as stack:
        if opts.db is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            db_path = folder / "bench.sqlite"
        else:
            folder = opts.db.parent
            db_path = opts.db
            if opts.workload != "ceiling" and db_path.exists():
                raise errors.ExecutorError(
                    f"{db_path} exists; the benchmark needs a fresh database file"
                )
        if opts.workload == "ceiling":
            result = run_ceiling(opts, folder)
        else:
            result = _run_async(opts.loop, run_engine(opts, db_path))
    calibration.append(calibrate_ms())
    return {
        "workload": opts.workload,
        **result,
        "cpu_calibration_ms": calibration,
        "params": opts.params(),
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    """`executor bench` / `python scripts/bench.py`: run one benchmark, print one JSON object."""
    # Given argv, we were called from `executor bench` (the CLI hands over the rest of its line).
    ns = build_parser(None if argv is None else "executor bench").parse_args(argv)
    opts = resolve(ns)
    try:
        with _profiled(ns.profile):
            report = run(opts)
    except errors.ExecutorError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=ns.json_indent))
    ok = (
        report.get("completed", False)
        and not report.get("failed")
        and not report.get("engine_crashed")
    )
    return 0 if ok else 1
