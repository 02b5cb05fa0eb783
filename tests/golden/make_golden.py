"""Write a golden database: runs of tests/golden/flows.py stopped at known points.

    python tests/golden/make_golden.py OUT.sqlite --commit SHA

Runs with whatever `executor` is importable, so an old release writes its own schema:

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old python tests/golden/make_golden.py OUT.sqlite --commit <commit>

The files in this folder were written this way (their manifests name the commit). The engine is
stopped like a daemon on SIGTERM while steps are held: held steps are cancelled at the drain and
their tasks go back to the queue, exactly what an upgrade finds. Only the public API is used,
plus two read-only SQL counts that every schema version answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flows

import executor
from executor import Client, DatabaseConfig, Engine, EngineConfig

SHARDS = 2
HELD = ("seq-2", "fan-1", "first-slow", "caught-after", "drift-1")
DEADLINE_S = 30.0


async def _until(what: str, condition: Callable[[], Any]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _count(path: Path, sql: str) -> int:
    conn = sqlite3.connect(path, timeout=10.0)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


async def generate(path: Path) -> dict[str, str]:
    flows.HOLD.update({tag: asyncio.Event() for tag in HELD})
    flows.FAILING.add("retry")
    cfg = EngineConfig(
        shards=SHARDS,
        concurrency=8,
        poll_interval_s=0.01,
        heartbeat_interval_s=0.05,
        lease_s=30.0,
        flush_interval_s=0.001,
        drain_timeout_s=0.2,
        instance_cache_size=0,  # every replay is a full one, so VARIANT takes effect at once
    )
    db = DatabaseConfig(path=path)
    ids: dict[str, str] = {}
    engine = Engine(cfg, db, reg=flows.registry)
    await engine.start()
    async with Client(db, reg=flows.registry, shards=SHARDS) as client:

        async def status(label: str) -> str:
            return (await client.status(ids[label])).status

        for label, (name, args, _, _) in flows.RUNS.items():
            if label != "fresh":
                ids[label] = await client.start(name, *args)
        await _until("held steps", lambda: set(HELD) <= flows.REACHED)
        await _until("two failed attempts", lambda: flows.ATTEMPTS.get("retry", 0) >= 2)
        await _until("the durable sleep", lambda: _count(path, "SELECT count(*) FROM timers"))

        async def finished() -> bool:
            return await status("finished") == "succeeded" and await status("failed") == "failed"

        await _until("the finished runs", finished)
        # Deploy changed code under the drift run, then let its held step finish: the replay
        # that follows no longer matches the journal, and the run is parked.
        flows.VARIANT = "B"
        flows.HOLD["drift-1"].set()

        async def parked() -> bool:
            return await status("drift") == "parked"

        await _until("the drift run to park", parked)
        await engine.stop("golden file written")
        ids["fresh"] = await client.start(*_name_args("fresh"))
        statuses = {label: await status(label) for label in ids}
    print(json.dumps(statuses, indent=1), file=sys.stderr)
    return ids


def _name_args(label: str) -> tuple[Any, ...]:
    name, args, _, _ = flows.RUNS[label]
    return (name, *args)


def _compact(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
    finally:
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--commit", required=True, help="the commit whose code writes the file")
    ns = parser.parse_args()
    out: Path = ns.out
    for p in (out, Path(f"{out}-wal"), Path(f"{out}-shm")):
        p.unlink(missing_ok=True)
    ids = asyncio.run(generate(out))
    _compact(out)
    manifest = {
        "commit": ns.commit,
        "schema_version": _count(out, "PRAGMA user_version"),
        "shards": SHARDS,
        "runs": ids,
    }
    print(f"written with {Path(executor.__file__).parent}", file=sys.stderr)
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
