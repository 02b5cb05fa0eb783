"""The `quota` and `quota-cpu` workloads: limits against a provider that enforces quotas.

quota: for each row, a provider (benchmarks/quota_server.py, its own process on 127.0.0.1) that
enforces its quota with its own sliding windows and refuses with 429 whatever is over them, and
the engine with `[limits.bench]` set to that quota, working through a backlog of --seconds worth
of calls, one step per call, through a shared keep-alive client. Per row, from the provider's
log: the sustained rate (after the first window, whose burst used a quota left idle) as a share
of the quota, and the requests it refused (the target is 0). The `rpm6000` row is the LLM case:
only `requests_per_minute` configured, against a provider that also enforces it per second.

quota-cpu: the engine's CPU per step, steps that await a remote call of S seconds, with no limit
and with a limit that never binds (the LLM example's keys, far above the rate), alternated
--repeat times on fresh files (the runs are started before the engine, so only execution
counts). The target: at most 5% more CPU per step with the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.engine_run import run_async
from benchmarks.measure import cpu_s
from benchmarks.options import START_BATCH, Options, Workload
from benchmarks.quota_server import (
    ApiClient,
    Arrival,
    QuotaServer,
    Window,
    most_in_any_window,
    sustained_rate,
)
from executor import config, errors, registry, resources
from executor.client import Client
from executor.engine.engine import Engine
from executor.engine.limits import Limiter
from executor.ratelimit import rate_limited_from

TARGET_PCT = 95.0
TARGET_CPU_RATIO = 1.05


@dataclass(frozen=True)
class Row:
    what: str
    limit: config.LimitSpec
    windows: list[Window]  # what the provider enforces
    per_s: float  # the quota in calls per second (tokens: at the mean cost)
    latency_ms: float = 2.0
    latency_sigma: float = 0.0  # lognormal spread around latency_ms
    mean_tokens: int = 0  # calls cost mean_tokens / 2 .. 3 * mean_tokens / 2
    tokens: bool = False  # the quota that binds is the tokens'
    seconds: float = 10.0
    skip_s: float = 1.0  # the first window's burst is left out of the sustained rate
    extra: dict[str, Any] = field(default_factory=dict)


def _spec(**quota: int) -> config.LimitSpec:
    return config.LimitSpec("bench", **quota)  # type: ignore[arg-type]


ROWS: dict[str, Row] = {
    "rps200": Row("200 requests/s", _spec(requests_per_second=200), [Window(1, 200)], 200),
    "rps500": Row(
        "500 requests/s", _spec(requests_per_second=500), [Window(1, 500)], 500, seconds=8
    ),
    "tps20000": Row(
        "20000 tokens/s",
        _spec(tokens_per_second=20_000),
        [Window(1, None, 20_000)],
        200,
        mean_tokens=100,
        tokens=True,
    ),
    "rps100_tps8000": Row(
        "100 requests/s + 8000 tokens/s",
        _spec(requests_per_second=100, tokens_per_second=8000),
        [Window(1, 100, 8000)],
        80,
        mean_tokens=100,
        tokens=True,
    ),
    "rps50_50ms": Row(
        "50 requests/s, 50 ms latency",
        _spec(requests_per_second=50),
        [Window(1, 50)],
        50,
        latency_ms=50,
    ),
    "rpm6000": Row(
        "6000 requests/min configured; the provider also enforces 100/s; 20 ms latency",
        _spec(requests_per_minute=6000),
        [Window(60, 6000), Window(1, 100)],
        100,
        latency_ms=20,
    ),
    # The LLM case of issue 14: calls of about a second (lognormal, some of several seconds).
    "rpm6000_llm": Row(
        "6000 requests/min configured; the provider also enforces 100/s; LLM-like latency"
        " (lognormal, median 1 s)",
        _spec(requests_per_minute=6000),
        [Window(60, 6000), Window(1, 100)],
        100,
        latency_ms=1000,
        latency_sigma=0.6,
    ),
}


# --- the steps --------------------------------------------------------------------------------

REG = registry.Registry()


def _cost(port: int, tokens: int) -> int:
    return tokens


@registry.step(limits=["bench"], cost=_cost, name="bench_quota.call", registry=REG)
async def call(port: int, tokens: int) -> int:
    async with resources.use(ApiClient, port=port) as api:
        reply = await api.post("/v1/call", {"tokens": tokens})
    if (limited := rate_limited_from(reply)) is not None:
        raise limited
    return reply.status


@registry.workflow(name="bench_quota.one_call", registry=REG)
async def one_call(ctx: Any, port: int, tokens: int) -> int:
    return int(await call(port, tokens))


class _Done:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self, run_id: str, status: str) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.event.set()


def _engine_cfg(opts: Options) -> config.EngineConfig:
    return config.EngineConfig(
        shards=opts.shards, concurrency=opts.concurrency, poll_interval_s=opts.poll_interval
    )


async def _run_row(name: str, row: Row, opts: Options, seconds: float, db: Path) -> dict[str, Any]:
    calls = int(row.per_s * (seconds + row.skip_s))
    m = row.mean_tokens
    costs = [(m // 2 + (i * 37) % (m + 1)) if m else 0 for i in range(calls)]
    async with QuotaServer.running(
        row.windows, latency_ms=row.latency_ms, latency_sigma=row.latency_sigma
    ) as server:
        db_cfg = config.DatabaseConfig(path=db)
        done = _Done(calls)
        engine = Engine(_engine_cfg(opts), db_cfg, reg=REG, on_finish=done, limits=[row.limit])
        cpu0 = cpu_s()
        started = time.time()
        async with engine, Client(db_cfg, reg=REG, shards=opts.shards) as client:
            for i in range(0, calls, START_BATCH):
                await client.start_many(
                    one_call, [[server.port, c] for c in costs[i : i + START_BATCH]]
                )
            await asyncio.wait_for(done.event.wait(), timeout=opts.timeout)
            elapsed = time.time() - started
            succeeded = (await client.stats())["runs"].get("succeeded", 0)
            load = engine.load()
            (state,) = engine.limits_snapshot()["limits"]
        cpu = cpu_s() - cpu0
        await resources.default_registry.aclose()
        log = await server.log()
    ok = [a for a in log if a.status == 200]
    over = [a for a in log if a.status == 429]
    rate = sustained_rate(ok, row.skip_s, tokens=row.tokens)
    quota_per_s = row.per_s * (row.mean_tokens if row.tokens else 1)
    windows = {str(w): _most(log, w) for w in row.windows}
    return {
        "row": name,
        "what": row.what,
        "calls": calls,
        "succeeded": succeeded,
        "achieved_pct": round(100 * rate / quota_per_s, 2),
        "over_quota": len(over),
        "most_in_any_window": windows,
        "factor_at_end": state.get("factor"),
        "limit_waits": load.get("limit_waits"),
        "limit_parks": load.get("limit_parks"),
        "elapsed_s": round(elapsed, 2),
        "cpu_s": round(cpu, 2),
    }


def _most(log: list[Arrival], w: Window) -> dict[str, int]:
    out = {}
    if w.requests is not None:
        out["requests"] = most_in_any_window(log, w.seconds)
    if w.tokens is not None:
        out["tokens"] = most_in_any_window(log, w.seconds, tokens=True)
    return out


def _run_quota(opts: Options, ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    names = [n.strip() for n in ns.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise errors.ExecutorError(f"unknown --rows {unknown}; known: {', '.join(ROWS)}")
    rows = []
    for name in names:
        row = ROWS[name]
        seconds = ns.seconds if ns.seconds is not None else row.seconds
        db = folder / f"quota-{name}.sqlite"
        rows.append(run_async(opts.loop, _run_row(name, row, opts, seconds, db)))
    met = all(r["achieved_pct"] >= TARGET_PCT and r["over_quota"] == 0 for r in rows)
    return {
        "rows": rows,
        "target_met": met,
        "completed": all(r["succeeded"] == r["calls"] for r in rows),
        "failed": sum(r["calls"] - r["succeeded"] for r in rows),
        "engine_crashed": None,
    }


# --- quota-cpu ----------------------------------------------------------------------------------

CPU_REG = registry.Registry()


@registry.step(name="bench_quota.free", registry=CPU_REG)
async def free(seconds: float) -> None:
    await asyncio.sleep(seconds)


def _tokens(seconds: float) -> int:
    return 100


@registry.step(limits=["llm"], cost=_tokens, name="bench_quota.limited", registry=CPU_REG)
async def limited(seconds: float) -> None:
    await asyncio.sleep(seconds)


@registry.workflow(name="bench_quota.sleeper", registry=CPU_REG)
async def sleeper(ctx: Any, with_limit: bool, seconds: float) -> None:
    await ctx.step(limited if with_limit else free, seconds)


def _never_binding(rate_per_s: float) -> config.LimitSpec:
    """The LLM example's keys, each far above what the run can reach."""
    per_min = int(rate_per_s * 60 * 100)
    return config.LimitSpec(
        "llm",
        requests_per_minute=per_min,
        tokens_per_minute=per_min * 1000,
        concurrent=1_000_000,
    )


async def _cpu_once(opts: Options, with_limit: bool, db: Path) -> dict[str, Any]:
    db_cfg = config.DatabaseConfig(path=db)
    spec = _never_binding(opts.slots / max(opts.sleep_s, 0.001))
    done = _Done(opts.workflows)
    async with Client(db_cfg, reg=CPU_REG, shards=opts.shards) as client:
        for i in range(0, opts.workflows, START_BATCH):
            n = min(START_BATCH, opts.workflows - i)
            await client.start_many(sleeper, [[with_limit, opts.sleep_s]] * n)
    engine = Engine(_engine_cfg(opts), db_cfg, reg=CPU_REG, on_finish=done, limits=[spec])
    # Every run starts from the same collector state: a full collection costs hundreds of ms
    # with this many runs in memory, so one more or less in a run moves its CPU per step by
    # more than the limit does.
    gc.collect()
    gen2 = gc.get_stats()[2]["collections"]
    cpu0 = cpu_s()
    t0 = time.perf_counter()
    async with engine:
        await asyncio.wait_for(done.event.wait(), timeout=opts.timeout)
        wall = time.perf_counter() - t0
        cpu = cpu_s() - cpu0
        load = engine.load()
    steps = opts.workflows * opts.steps
    return {
        "limit": with_limit,
        "cpu_us_per_step": round(cpu / steps * 1e6, 1),
        "steps_per_s": round(steps / wall, 1),
        "limit_waits": load.get("limit_waits", 0),
        "limit_parks": load.get("limit_parks", 0),
        "full_gc": gc.get_stats()[2]["collections"] - gen2,
    }


def _limiter_us_per_step(spec: config.LimitSpec, rate_per_s: float, steps: int) -> float:
    """The limiter alone, on a virtual clock: acquire and release per step, in CPU us."""
    lim = Limiter([spec])
    names, now, latency = ["llm"], 1_000_000.0, 0.1
    running: list[tuple[float, Any]] = []
    t0 = time.process_time()
    for i in range(steps):
        now += 1 / rate_per_s
        while running and running[0][0] <= now:
            lim.release(running.pop(0)[1], now)
        d = lim.acquire((i, 0), names, None, None, 100, False, now)
        assert d.ticket is not None, "the limit bound: it should not"
        running.append((now + latency, d.ticket))
        if i % 1000 == 0:
            lim.tick(now)
    return (time.process_time() - t0) / steps * 1e6


def _run_cpu(opts: Options, ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    if opts.steps != 1:
        raise errors.ExecutorError("quota-cpu runs one step per workflow: leave -K at 1")
    runs: list[dict[str, Any]] = []
    for i in range(ns.repeat):
        # Alternate which goes first, so a drift of the shared machine's speed cancels out.
        for with_limit in (False, True) if i % 2 == 0 else (True, False):
            db = folder / f"cpu-{i}-{int(with_limit)}.sqlite"
            runs.append(run_async(opts.loop, _cpu_once(opts, with_limit, db)))

    def median(with_limit: bool, key: str) -> float:
        return float(statistics.median(r[key] for r in runs if r["limit"] is with_limit))

    none, limit = median(False, "cpu_us_per_step"), median(True, "cpu_us_per_step")
    rate = statistics.median(r["steps_per_s"] for r in runs)
    spec = _never_binding(opts.slots / max(opts.sleep_s, 0.001))
    alone = min(_limiter_us_per_step(spec, rate, 100_000) for _ in range(3))
    pairs = [
        b["cpu_us_per_step"] / a["cpu_us_per_step"]
        for a, b in zip(
            [r for r in runs if not r["limit"]], [r for r in runs if r["limit"]], strict=True
        )
    ]
    return {
        "runs": runs,
        "cpu_us_per_step_no_limit": none,
        "cpu_us_per_step_limit": limit,
        "cpu_ratio": round(limit / none, 4),
        "cpu_ratio_per_pair": [round(p, 4) for p in pairs],
        # The limiter alone (acquire + release on a virtual clock, best of 3), over the
        # engine's CPU per step without a limit: the cost of the limit, free of the noise of
        # whole-engine runs on a shared machine.
        "limiter_us_per_step": round(alone, 2),
        "limiter_share": round(alone / none, 4),
        "never_bound": all(r["limit_waits"] == 0 and r["limit_parks"] == 0 for r in runs),
        "target_met": 1 + alone / none <= TARGET_CPU_RATIO,
        "completed": True,
        "failed": 0,
        "engine_crashed": None,
    }


def _quota_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--rows",
        default=",".join(ROWS),
        help="quota: which rows, comma-separated (default: all: " + ", ".join(ROWS) + ")",
    )
    group.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="quota: backlog per row, in seconds of quota (default: per row, 8 to 10)",
    )


def _cpu_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="quota-cpu: pairs of runs, without and with the limit (default: 5)",
    )


WORKLOADS = (
    Workload(
        "quota",
        """rows of a quota enforced by a provider in its own process (per row: the limit, the
        provider's windows, its latency), the engine with the same limit, a backlog of calls:
        achieved_pct (sustained rate / quota; target 95) and over_quota (429s; target 0).""",
        _run_quota,
        {"shards": 8, "concurrency": 100, "poll_interval": 0.05},
        _quota_arguments,
    ),
    Workload(
        "quota-cpu",
        """CPU per step of W one-step workflows awaiting S seconds, with no limit and with a
        limit that never binds, alternated --repeat times: cpu_ratio (target <= 1.05).""",
        _run_cpu,
        {"workflows": 10_000, "steps": 1, "sleep_s": 0.1, "shards": 8, "concurrency": 100},
        _cpu_arguments,
    ),
)

__all__ = ["ROWS", "WORKLOADS", "Row"]
