"""The repair workloads: `retry` (an action by filter beside a busy engine) and `purge` (retention
on a big file, and the file's size before and after).

retry: W failed runs (a succeeded step, then a failed one: what an outage leaves) are written
straight into a fresh file. The engine (in this process) first runs N new workflows of K no-op
steps alone; then N more while `executor runs retry --status failed --yes` (a real subprocess,
as an operator runs it) retries the W runs. Reported: the action's rate, and the engine's steps/s
alone and during the action (the retried runs' own steps count as engine work too).

purge: W finished runs of K steps with ~1 KB results, written straight into a fresh file; 90%
of them finished 40 days ago. Retention (`[retention] finished_days = 30`, the daemon's code)
purges them; reported: its rate, and the file's size (after a checkpoint) before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_run import Finishes, run_async
from benchmarks.options import Options, Workload
from executor import codec, config, errors, registry
from executor.client import Client
from executor.daemon import retention
from executor.engine.engine import Engine
from executor.engine.instance import WorkflowContext
from executor.store.database import Database

REPAIR_WORKFLOW = "bench.repair"
DAY_S = 86400.0


def _build() -> tuple[registry.Registry, registry.WorkflowDef[Any]]:
    reg = registry.Registry()

    @registry.step(name="bench.noop", registry=reg)
    async def noop(index: int, i: int) -> int:
        return i

    @registry.step(name="bench.fetch", registry=reg)
    async def fetch(index: int) -> int:
        return index

    @registry.step(name="bench.call", registry=reg)
    async def call(index: int) -> int:
        return index

    @registry.workflow(name="bench.sequential", registry=reg)
    async def sequential(ctx: WorkflowContext, k: int, index: int) -> int:
        for i in range(k):
            await ctx.step(noop, index, i)
        return k

    @registry.workflow(name=REPAIR_WORKFLOW, registry=reg)
    async def repair(ctx: WorkflowContext, index: int) -> int:
        await fetch(index)
        return int(await call(index))

    return reg, sequential


def _seed(
    conn: sqlite3.Connection, n: int, shards: int, *, failed: bool, result_bytes: int = 0
) -> None:
    """n runs of bench.repair written straight into the file (ids and rids 1..n): failed at
    their second step, or succeeded with results of about `result_bytes` bytes. The steps'
    fingerprints are what the workflow's code computes, so a replay of them matches."""
    now = time.time()
    run_error = errors.error_blob(
        "StepFailed", "step bench.call failed: ConnectionError: overloaded", step="bench.call"
    )
    step_error = errors.error_blob("ConnectionError", "overloaded")
    filler = "x" * result_bytes
    conn.execute("BEGIN IMMEDIATE")
    for first in range(1, n + 1, 10_000):
        runs: list[tuple[Any, ...]] = []
        steps: list[tuple[Any, ...]] = []
        for rid in range(first, min(n + 1, first + 10_000)):
            args = codec.encode([rid])
            fp = codec.fingerprint(args)
            if failed:
                runs.append((rid, f"seed-{rid}", rid % shards, "failed", args, None, run_error))
                steps.append(
                    (rid, 0, "bench.fetch", fp, args, "succeeded", codec.encode(rid), None, 1)
                )
                steps.append((rid, 1, "bench.call", fp, args, "failed", None, step_error, 2))
            else:
                value = codec.encode(f"{rid} {filler}")
                runs.append((rid, f"seed-{rid}", rid % shards, "succeeded", args, value, None))
                steps.append((rid, 0, "bench.fetch", fp, args, "succeeded", value, None, 1))
                steps.append((rid, 1, "bench.call", fp, args, "succeeded", value, None, 2))
        conn.executemany(
            "INSERT INTO runs (rid, id, workflow, shard, status, args, result, error, created_at,"
            f" updated_at, finished_at, last_seq) VALUES (?, ?, '{REPAIR_WORKFLOW}', ?, ?, ?, ?,"
            f" ?, {now}, {now}, {now}, 2)",
            runs,
        )
        conn.executemany(
            "INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, attempts,"
            f" result, error, seq, created_at, finished_at) VALUES (?, ?, 'step', ?, ?, ?, ?, 1,"
            f" ?, ?, ?, {now}, {now})",
            steps,
        )
    conn.execute("COMMIT")


def _config_file(folder: Path, db_cfg: config.DatabaseConfig, shards: int) -> Path:
    path = folder / "executor.toml"
    path.write_text(
        f"[database]\npath = {json.dumps(str(db_cfg.path))}\n"
        f'durability = "{db_cfg.durability}"\n[engine]\nshards = {shards}\n'
    )
    return path


async def _run_new_work(
    client: Client, wf: registry.WorkflowDef[Any], finishes: Finishes, n: int, k: int
) -> None:
    for first in range(0, n, 1000):
        await client.start_many(wf, [[k, i] for i in range(first, min(n, first + 1000))])
    await finishes.all_done.wait()


async def _retry_beside(opts: Options, ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    db_path = opts.db if opts.db is not None else folder / "repair.sqlite"
    if db_path.exists():
        raise errors.ExecutorError(f"{db_path} exists; the benchmark needs a fresh database file")
    durability: config.Durability = opts.durability or "normal"
    db_cfg = config.DatabaseConfig(path=db_path, durability=durability)
    reg, wf = _build()
    db = await Database.open(db_cfg, shards=opts.shards)
    t = time.perf_counter()
    await db.run(_seed, opts.workflows, opts.shards, failed=True)
    seed_s = time.perf_counter() - t
    await db.close()
    cfg_path = _config_file(folder, db_cfg, opts.shards)
    eng_cfg = config.EngineConfig(
        shards=opts.shards, concurrency=opts.concurrency, poll_interval_s=opts.poll_interval
    )
    n, k = ns.new_runs, opts.steps
    finishes = Finishes(n)
    retried = Finishes(opts.workflows)

    def on_finish(run_id: str, status: str) -> None:
        (retried if run_id.startswith("seed-") else finishes)(run_id, status)

    engine = Engine(eng_cfg, db_cfg, reg=reg, on_finish=on_finish)
    await engine.start()
    out: dict[str, Any] = {"failed_runs": opts.workflows, "seed_s": round(seed_s, 2)}
    try:
        async with Client(db_cfg, reg=reg, strict=True) as client:
            steps0, replays0, t0 = _work(engine), engine.counters["replays"], time.perf_counter()
            await _run_new_work(client, wf, finishes, n, k)
            alone_s = time.perf_counter() - t0
            alone = (_work(engine) - steps0) / alone_s
            alone_replays = (engine.counters["replays"] - replays0) / alone_s

            finishes.expected = 2 * n
            finishes.all_done.clear()
            argv = [sys.executable, "-m", "executor", "runs", "retry", "--status", "failed"]
            argv += ["--workflow", REPAIR_WORKFLOW, "--yes", "--json", "--config", str(cfg_path)]
            argv += ["--batch-size", str(ns.action_batch)]
            if ns.max_rate:
                argv += ["--max-rate", str(ns.max_rate)]
            steps1, replays1, t1 = _work(engine), engine.counters["replays"], time.perf_counter()
            action = await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=folder
            )
            work = asyncio.create_task(_run_new_work(client, wf, finishes, n, k))
            stdout, stderr = await action.communicate()
            action_s = time.perf_counter() - t1
            during = (_work(engine) - steps1) / action_s
            during_replays = (engine.counters["replays"] - replays1) / action_s
            if action.returncode != 0:
                raise errors.ExecutorError(f"runs retry failed: {stderr.decode().strip()}")
            report = json.loads(stdout)
            await work
            new_work_s = time.perf_counter() - t1
            await retried.all_done.wait()
            all_done_s = time.perf_counter() - t1
    finally:
        await engine.stop("benchmark finished")
    out.update(
        new_runs=n,
        steps_per_new_run=k,
        engine_steps_per_s_alone=round(alone, 1),
        action_runs=report["acted"],
        action_s=round(action_s, 3),
        action_runs_per_s=round(report["acted"] / action_s, 1),
        action_batch_size=ns.action_batch,
        action_max_rate=ns.max_rate,
        engine_replays_per_s_alone=round(alone_replays, 1),
        engine_replays_per_s_during_action=round(during_replays, 1),
        engine_steps_per_s_during_action=round(during, 1),
        engine_ratio_during_action=round(during / alone, 3),
        new_work_s_beside_action=round(new_work_s, 3),
        new_work_s_alone=round(alone_s, 3),
        retried_runs_all_succeeded_s=round(all_done_s, 3),
        completed=True,
    )
    return out


def _run_retry(opts: Options, ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    return run_async(opts.loop, _retry_beside(opts, ns, folder))


async def _purge(opts: Options, folder: Path) -> dict[str, Any]:
    db_path = opts.db if opts.db is not None else folder / "purge.sqlite"
    if db_path.exists():
        raise errors.ExecutorError(f"{db_path} exists; the benchmark needs a fresh database file")
    db_cfg = config.DatabaseConfig(path=db_path, durability=opts.durability or "normal")
    async with Client(db_cfg, shards=opts.shards) as client:
        seeded = client.db
        assert isinstance(seeded, Database), "the purge benchmark seeds an SQLite file"
        await seeded.run(_seed, opts.workflows, opts.shards, failed=False, result_bytes=1000)
        old = time.time() - 40 * DAY_S
        await client.db.run(
            lambda conn: conn.execute("UPDATE runs SET finished_at = ? WHERE rid % 10 != 0", (old,))
        )
        before = await _size(client, db_path)
        t = time.perf_counter()
        purged = await retention.purge_once(
            client, config.RetentionConfig(finished_days=30, batch=500), time.time()
        )
        seconds = time.perf_counter() - t
        after = await _size(client, db_path)
        left = await client.count()
    return {
        "runs": opts.workflows,
        "purged": purged,
        "left": left,
        "purge_s": round(seconds, 3),
        "purged_runs_per_s": round(purged / seconds, 1),
        "file_bytes_before": before,
        "file_bytes_after": after,
        "file_ratio": round(after / before, 3),
        "completed": True,
    }


async def _size(client: Client, path: Path) -> int:
    await client.db.run(lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
    return _file_size(path)


def _file_size(path: Path) -> int:
    return path.stat().st_size


def _run_purge(opts: Options, ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    return run_async(opts.loop, _purge(opts, folder))


def _work(engine: Engine) -> int:
    return int(engine.counters["steps"])


def _retry_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--max-rate",
        type=int,
        default=0,
        metavar="N",
        help="retry: pace the action at N runs/s (--max-rate; default 0: as fast as it goes)",
    )
    group.add_argument(
        "--action-batch",
        type=int,
        default=500,
        metavar="N",
        help="retry: runs per transaction of the action (--batch-size; default 500)",
    )
    group.add_argument(
        "--new-runs",
        type=int,
        default=20_000,
        metavar="N",
        help="retry: new workflows the engine runs alone, then beside the action (default 20000)",
    )


WORKLOADS = (
    Workload(
        "retry",
        """W failed runs (written into the file), retried by `executor runs retry --status
        failed --yes` in a subprocess while the engine runs N new workflows of K no-op steps
        (--new-runs); the same N alone first. Reports the action's runs/s and the engine's
        steps/s alone and during the action.""",
        _run_retry,
        {"workflows": 100_000, "steps": 5},
        _retry_arguments,
    ),
    Workload(
        "purge",
        """W finished runs of 2 steps with ~1 KB results (written into the file); 90% finished
        40 days ago. Retention (finished_days = 30) purges them: its rate, and the file's size
        before and after (auto_vacuum incremental).""",
        _run_purge,
        {"workflows": 100_000},
    ),
)
