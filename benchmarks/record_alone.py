"""The record transaction alone (journal.record_many on SQLite), without an engine around it.

`python -m benchmarks.record_alone` fills a fresh file with R runs (default 20,000) of one pending,
claimed step each, records them in batches of B finished steps (default 400, about what the noop
benchmark's recorder commits at once), three positions in a row, and prints one JSON object with
the database thread's CPU per outcome (`time.thread_time` around each call): the figure
docs/PERFORMANCE.md quotes for the record path, steadier on a shared machine than a rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from executor import DatabaseConfig
from executor.store import journal
from executor.store.conn import Conn
from executor.store.database import Database, transaction
from executor.vocabulary import Delivery, Outcome, OutcomeKind, StepState

TOKEN = 7


def _fill(conn: Conn, runs: int, pos: int) -> None:
    """Runs 1..runs (at pos 1), each with a pending step at `pos`, its task claimed."""
    conn.execute("BEGIN IMMEDIATE")
    if pos == 1:
        conn.executemany(
            "INSERT INTO runs (rid, id, workflow, shard, status, args, created_at, updated_at)"
            " VALUES (?, ?, 'w', ?, 'running', x'5b5d', 0, 0)",
            [(r, f"r{r}", r % 8) for r in range(1, runs + 1)],
        )
    conn.executemany(
        "INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at)"
        " VALUES (?, ?, 'step', 's', 'f', x'5b5d', 'pending', 0)",
        [(r, pos) for r in range(1, runs + 1)],
    )
    conn.executemany(
        "INSERT INTO tasks (run_rid, pos, shard, order_rid, claim_token, claim_engine,"
        " claim_epoch, claimed_at) VALUES (?, ?, ?, ?, ?, 1, 1, 0)",
        [(r, pos, r % 8, r, TOKEN) for r in range(1, runs + 1)],
    )
    conn.execute("COMMIT")


@transaction
def _record(conn: Conn, outcomes: list[Outcome], now: float) -> tuple[list[Delivery], float]:
    began = time.thread_time()
    recorded = journal.record_many(outcomes, conn, now)
    return recorded, time.thread_time() - began


async def measure(runs: int, batch: int, path: Path) -> dict[str, float | int]:
    db = await Database.open(DatabaseConfig(path=path), shards=8)
    cpu, sent, recorded = 0.0, 0, 0
    shuffle = random.Random(1)
    try:
        for pos in (1, 2, 3):
            await db.run(_fill, runs, pos)
            for start in range(1, runs + 1, batch):
                rids = list(range(start, min(start + batch, runs + 1)))
                shuffle.shuffle(rids)  # a batch finishes in any order
                outcomes = [
                    Outcome(OutcomeKind.DONE, r, pos, TOKEN, StepState.SUCCEEDED, b"1", shard=r % 8)
                    for r in rids
                ]
                deliveries, spent = await db.run(_record, outcomes, time.time())
                cpu += spent
                sent += len(outcomes)
                recorded += len(deliveries)
    finally:
        await db.close()
    return {
        "outcomes": sent,
        "recorded": recorded,
        "batch": batch,
        "cpu_us_per_outcome": round(1e6 * cpu / sent, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-R", "--runs", type=int, default=20_000)
    parser.add_argument("-B", "--batch", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report = asyncio.run(measure(args.runs, args.batch, Path(folder) / "record.sqlite"))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
