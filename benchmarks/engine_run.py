"""The engine workloads (noop, sleep, fanout, long): the real engine, in-process, on a fresh
SQLite file, with runs started through the Client; the report of what it did."""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import itertools
import math
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from benchmarks import pgserver
from benchmarks.daemons import add_arguments as daemon_arguments
from benchmarks.measure import (
    busy_while_queued,
    cpu_s,
    current_rss_kib,
    peak_rss_kib,
    percentile,
    spearman,
)
from benchmarks.options import Options, Workload
from executor import config, errors, gcsettings, registry, vocabulary
from executor.client import Client
from executor.engine.engine import Engine
from executor.engine.instance import WorkflowContext

T = TypeVar("T")

LONG_WINDOW = 100  # steps averaged at each end of the long workflow
FIFO_FRACTION = 0.10

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

    words = prose_words() if opts.result_bytes or opts.arg_bytes else ""

    @registry.step(name="bench.noop", registry=reg)
    async def noop(index: int, i: int) -> int | str:
        clock.start(index)
        if opts.result_bytes:
            return prose(words, opts.result_bytes, index * 1_000_003 + i)
        return i

    @registry.step(name="bench.nap", registry=reg)
    async def nap(index: int, seconds: float) -> None:
        clock.start(index)
        await asyncio.sleep(seconds)
        clock.end(index)

    @registry.step(name="bench.call", registry=reg)
    async def call(index: int, i: int, prompt: str) -> int | str:
        # An LLM call: a prompt in, a wait, text out (floor.py runs the same body).
        clock.start(index)
        await asyncio.sleep(opts.sleep_of(index, i))
        clock.end(index)
        if opts.result_bytes:
            return prose(words, opts.result_bytes, index * 1_000_003 + i + len(prompt))
        return i

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

    @registry.workflow(name="bench.llm", registry=reg)
    async def llm(ctx: WorkflowContext, k: int, index: int) -> int:
        for i in range(k):
            await ctx.step(call, index, i, prose(words, opts.arg_bytes, index * 7 + i))
        return k

    @registry.workflow(name="bench.fanout", registry=reg)
    async def fanout(ctx: WorkflowContext, f: int, seconds: float, index: int) -> int:
        if seconds > 0:
            await asyncio.gather(*(ctx.step(nap, index, seconds) for _ in range(f)))
            parts = list(range(f))
        else:
            parts = await asyncio.gather(*(ctx.step(noop, index, i) for i in range(f)))
        return await ctx.step(join, parts)

    if opts.workload in ("noop", "long", "start"):
        return reg, sequential, lambda i: [opts.steps, i]
    if opts.workload == "sleep":
        return reg, sleeper, lambda i: [opts.steps, opts.sleep_s, i]
    if opts.workload == "llm":
        return reg, llm, lambda i: [opts.steps, i]
    if opts.workload == "fanout":
        return reg, fanout, lambda i: [opts.fanout, opts.sleep_s, i]
    raise ValueError(f"not an engine workload: {opts.workload}")


# --- running the engine --------------------------------------------------------------------------


class GcTime:
    """Collections and the seconds spent in them (gc.callbacks), per generation."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._began = 0.0
        self.previous: tuple[int, ...] | None = None  # thresholds before gcsettings.tune()

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.counts[info["generation"]] += 1
            self.seconds[info["generation"]] += time.perf_counter() - self._began

    def report(self) -> dict[str, Any]:
        return {"gc_collections": self.counts, "gc_s": [round(s, 3) for s in self.seconds]}


class Finishes:
    """The engine's on_finish callback: when each run finished, and how."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        # Two dicts of floats and strs rather than one of (time, status) tuples: a tuple per
        # run is an object the garbage collector tracks, and with 10^5 runs the harness's own
        # tuples set off most of the run's young collections (and each walks the live runs).
        self.when: dict[str, float] = {}
        self.status: dict[str, str] = {}
        self.all_done = asyncio.Event()

    def __call__(self, run_id: str, status: str) -> None:
        if run_id not in self.when:
            self.when[run_id] = time.perf_counter()
            self.status[run_id] = status
            if len(self.when) >= self.expected:
                self.all_done.set()

    @property
    def at(self) -> dict[str, tuple[float, str]]:
        """When and how each run finished (built on demand, for the report)."""
        status = self.status
        return {r: (t, status[r]) for r, t in self.when.items()}


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


def _after_start(opts: Options, gc_time: GcTime) -> None:
    if opts.tune_gc:
        gc_time.previous = gcsettings.tune()  # as the daemon does once its engine has started
    gc.callbacks.append(gc_time)


def _after_stop(gc_time: GcTime) -> None:
    # Put the process back as it was: the benchmark also runs inside the test suite.
    if gc_time in gc.callbacks:
        gc.callbacks.remove(gc_time)
    if gc_time.previous is not None:
        gcsettings.untune(gc_time.previous)


async def run_engine(opts: Options, db_path: Path) -> dict[str, Any]:
    # The long workload is one run: its step times are what it measures.
    clock = StepClock(opts.trace_steps or opts.workload == "long")
    reg, wf, args_of = build_workload(opts, clock)
    durability: config.Durability = opts.durability or "normal"
    db_cfg = opts.database_config(db_path)
    server = pgserver.postmaster_pid(opts.database) if opts.database else None
    eng_cfg = config.EngineConfig(
        shards=opts.shards,
        concurrency=opts.concurrency,
        poll_interval_s=opts.poll_interval,
        instance_cache_size=opts.instance_cache,
    )
    finishes = Finishes(opts.workflows)
    engine = Engine(eng_cfg, db_cfg, reg=reg, on_finish=finishes, samples=opts.metrics)
    client = Client(db_cfg, reg=reg, strict=True, shards=opts.shards)
    samples: list[Sample] = []
    gc_time = GcTime()
    sampler: asyncio.Task[None] | None = None
    crashed: str | None = None
    engine_started = False
    try:
        if opts.prefill:
            await client.open()
            rss_idle = current_rss_kib()
            cpu_start0 = cpu_s()
            t_start0 = time.perf_counter()
            server0 = pgserver.server_cpu_s(server) if server else math.nan
            ids, started = await _start_all(client, wf, args_of, opts.workflows, opts.batch)
            start_s = time.perf_counter() - t_start0
            start_cpu_s = cpu_s() - cpu_start0
            cpu0 = cpu_s()
            loop0 = time.thread_time()  # this thread runs the event loop
            server0 = pgserver.server_cpu_s(server) if server else math.nan
            t0 = time.perf_counter()
            await engine.start()
            engine_started = True
            _after_start(opts, gc_time)
        else:
            await engine.start()
            engine_started = True
            _after_start(opts, gc_time)
            await client.open()
            rss_idle = current_rss_kib()
            cpu0 = cpu_s()
            loop0 = time.thread_time()  # this thread runs the event loop
            server0 = pgserver.server_cpu_s(server) if server else math.nan
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
        loop_used = time.thread_time() - loop0
        server_used = pgserver.server_cpu_s(server) - server0 if server else math.nan
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
        _after_stop(gc_time)
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
        gc_tuned=opts.tune_gc,
        **gc_time.report(),
        engine_load=load,
        file_bytes=None if opts.database else file_bytes(db_path),
    )
    if result["steps"]:
        result["loop_cpu_s_per_1000_steps"] = round(loop_used / result["steps"] * 1000, 4)
    if opts.database:
        steps = opts.workflows * opts.steps_per_workflow
        result.update(
            database="postgresql",
            server_cpu_s=None if math.isnan(server_used) else round(server_used, 3),
            server_cpu_us_per_step=(
                None
                if math.isnan(server_used) or not steps
                else round(server_used / steps * 1e6, 1)
            ),
        )
    return result


def prose_words() -> str:
    """1 MB of words (zlib level 1 shrinks it about 1.8x, real prose 2-3x), made once."""
    import random

    rng = random.Random(7)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(3000)]
    return " ".join(rng.choices(words, k=200_000))


def prose(text: str, size: int, seed: int) -> str:
    """About `size` bytes of that text, different for every seed (cheap: a slice)."""
    head = f"{seed}: "
    start = (seed * 7919) % max(1, len(text) - size)
    return head + text[start : start + max(0, size - len(head))]


def file_bytes(db_path: Path) -> int:
    """The database's bytes on disk: the file, its WAL, and its payload files."""
    total = 0
    for path in (db_path, Path(f"{db_path}-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    folder = Path(f"{db_path}.payloads")
    if folder.is_dir():
        total += sum(p.stat().st_size for p in folder.iterdir())
    return total


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
    out["busy_while_queued"] = busy_while_queued(
        [(s.at, s.in_flight) for s in samples],
        started,
        finish_times,
        opts.slots // (opts.fanout if opts.workload == "fanout" else 1),
        opts.slots,
    )
    if opts.sleep_s > 0 and opts.workload in ("sleep", "fanout", "llm"):
        width = opts.workflows * (opts.fanout if opts.workload == "fanout" else 1)
        ideal = min(opts.slots, width) / opts.mean_sleep_s
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


# --- the entry points --------------------------------------------------------------------------


def run_async(loop: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on a new event loop of the kind --loop names."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _run(opts: Options, ns: object, folder: Path) -> dict[str, Any]:
    daemons = getattr(ns, "daemons", 0)
    if daemons:
        from benchmarks import daemons as processes

        return processes.run(opts, daemons, folder)
    db_path = opts.db if opts.db is not None else folder / "bench.sqlite"
    if opts.database:
        pgserver.check_fresh(opts.database)
    elif db_path.exists():
        raise errors.ExecutorError(f"{db_path} exists; the benchmark needs a fresh database file")
    report = run_async(opts.loop, run_engine(opts, db_path))
    if opts.vs_floor:
        from benchmarks import floor

        report.update(floor.compare(opts, report))
    return report


WORKLOADS = (
    Workload(
        "noop",
        """W workflows of K sequential steps that return a small value at once: our overhead.""",
        _run,
        {"workflows": 10_000, "steps": 5},
        daemon_arguments,
    ),
    # Its shape is the 5,000-slot target: 100 shards x 50 slots.
    Workload(
        "sleep",
        """W workflows of K sequential steps that `await asyncio.sleep(S)` (a remote API call).""",
        _run,
        {"workflows": 20_000, "steps": 5, "sleep_s": 1.0, "shards": 100, "concurrency": 50},
    ),
    Workload(
        "llm",
        """W workflows of K sequential LLM-like steps on 100 shards x 50 slots: each step is
        called with a prompt of --arg-bytes, sleeps between S and --sleep-max seconds and
        returns --result-bytes of text. --vs-floor adds the same program without a database.""",
        _run,
        {
            "workflows": 20_000,
            "steps": 5,
            "sleep_s": 0.1,
            "sleep_max_s": 0.8,
            "arg_bytes": 2_500,
            "result_bytes": 2_500,
            "shards": 100,
            "concurrency": 50,
        },
    ),
    Workload(
        "fanout",
        """W workflows of F parallel steps (asyncio.gather), then one join step (F+1 steps;
        K is not used). Branches sleep S seconds when S > 0, else return at once.""",
        _run,
        {"workflows": 2_000, "fanout": 10},
    ),
    Workload(
        "long",
        """one workflow (W=1) of K sequential no-op steps; each step records
        time.perf_counter() when it runs, to see whether a step costs more late in a run
        (--trace-steps is implied).""",
        _run,
        {"workflows": 1, "steps": 1_000},
    ),
)
