"""The `ceiling` workload: what SQLite allows on this machine for the writes of W*K steps,
without the engine.

It opens the file the engine's way (`Database.open`: its pragmas, migrations and shards) and, on
that connection's own thread, calls the repository's transaction functions the engine calls for
every batch of steps: `claim`, `record` (set-based, with its fences), `commit_replays` (the next
step, or the run's end). So it measures exactly the statements the engine runs; an engine run
of the same shape minus the ceiling is the engine's own cost (asyncio, workflow replay, steps).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import cpu_s
from benchmarks.options import START_BATCH, Options, Workload
from executor import codec, config, errors, vocabulary
from executor.store import repository as repo
from executor.store.conn import Conn
from executor.store.database import Database


@dataclass(slots=True)
class Tally:
    transactions: int = 0
    # Seconds in each of the three transactions a step needs, to set beside an engine profile.
    claim_s: float = 0.0
    record_s: float = 0.0
    replay_s: float = 0.0


def _seed(conn: Conn, runs: int, shards: int) -> None:
    """Create the runs with their first step queued (not timed)."""
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


def drive(conn: Conn, k: int, shards: int, batch: int) -> tuple[int, Tally]:
    """Every step through the repository's transaction functions; return (steps, tally)."""
    tally = Tally()
    args = codec.encode([0])
    fp = codec.fingerprint(args)
    result = codec.encode(0)
    per = max(1, math.ceil(batch / shards))
    wants = [(s, per) for s in range(shards)]
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
            [],
            time.time(),
        ).deliveries
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
        t3 = time.perf_counter()
        tally.claim_s += t1 - t0
        tally.record_s += t2 - t1
        tally.replay_s += t3 - t2
        tally.transactions += 2
        steps += len(claimed)


def _runs_by_status(conn: Conn) -> dict[str, int]:
    return dict(conn.execute(conn.q["stats_runs"]).fetchall())


def _per_step_us(seconds: float, steps: int) -> float | None:
    return round(seconds / steps * 1e6, 2) if steps else None


async def _measure(path: Path, durability: config.Durability, opts: Options) -> dict[str, Any]:
    db = await Database.open(
        config.DatabaseConfig(path=path, durability=durability), shards=opts.shards
    )
    try:
        await db.run(_seed, opts.workflows, opts.shards)
        cpu0 = cpu_s()
        t0 = time.perf_counter()
        steps, tally = await db.run(drive, opts.steps, opts.shards, opts.ceiling_batch)
        seconds = time.perf_counter() - t0
        cpu_used = cpu_s() - cpu0
        by_status = await db.run(_runs_by_status)
    finally:
        await db.close()
    return {
        "steps": steps,
        "seconds": round(seconds, 4),
        "step_equivalents_per_s": round(steps / seconds, 1),
        "cpu_s_per_1000_steps": round(cpu_used / steps * 1000, 4) if steps else None,
        "runs_by_status": by_status,
        "transactions": tally.transactions,
        "us_per_step": {
            "claim": _per_step_us(tally.claim_s, steps),
            "record": _per_step_us(tally.record_s, steps),
            "replay": _per_step_us(tally.replay_s, steps),
        },
    }


def run_ceiling(opts: Options, ns: argparse.Namespace, folder: Path) -> dict[str, Any]:
    durabilities: tuple[config.Durability, ...] = (
        (opts.durability,) if opts.durability is not None else ("normal", "full")
    )
    out: dict[str, Any] = {}
    for durability in durabilities:
        if opts.db is not None:
            path = opts.db.with_name(f"{opts.db.name}.{durability}")
        else:
            path = folder / f"ceiling-{durability}.sqlite"
        if path.exists():
            raise errors.ExecutorError(f"{path} exists; the ceiling needs a fresh file")
        out[durability] = asyncio.run(_measure(path, durability, opts))
    return {
        "workflows": opts.workflows,
        "steps_per_workflow": opts.steps,
        "steps": opts.workflows * opts.steps,
        "ceiling_batch": opts.ceiling_batch,
        "completed": all(v["steps"] == opts.workflows * opts.steps for v in out.values()),
        "results": out,
    }


WORKLOAD = Workload(
    "ceiling",
    """no engine: what SQLite itself allows for the writes of W*K steps, from one thread on
    the engine's database connection (Database.open: its pragmas, migrations and shards). Per
    batch of --ceiling-batch steps, the repository's three transactions the engine runs: claim,
    record (set-based, fenced on the claim token), commit_replays (next step or the run's end).
    An engine run of the same shape minus this is the engine's own cost; us_per_step splits the
    time between the three transactions. Runs durability normal and full unless --durability
    is given.""",
    run_ceiling,
    {"workflows": 10_000, "steps": 5},
)
