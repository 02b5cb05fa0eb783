"""Shard leases with real daemons on one SQLite file: a daemon paused past its lease (SIGSTOP) loses
its shards to a newcomer, and what it sends after SIGCONT is refused by the fences; every step is
recorded once and every run finishes. (PostgreSQL, several daemons at once: test_failover_pg.py.)
"""

from __future__ import annotations

import contextlib
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor import Client
from tests.support.daemon import (
    DaemonProcess,
    Daemons,
    daemons_in,
    poll,
    with_client,
    write_config,
)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def claims_of(db: Path, pid: int) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM tasks AS t JOIN engines AS e ON e.id = t.claim_engine"
            " WHERE e.pid = ? AND t.claim_token IS NOT NULL",
            (pid,),
        ).fetchone()
    return int(row[0])


def owners(db: Path) -> dict[int, int | None]:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        return {
            shard: pid
            for shard, pid in conn.execute(
                "SELECT l.shard, e.pid FROM shard_leases AS l"
                " LEFT JOIN engines AS e ON e.id = l.owner"
            )
        }


def pause_outside_a_transaction(daemon: DaemonProcess, db: Path) -> None:
    """SIGSTOP the daemon at a moment it does not hold SQLite's write lock: a process paused
    inside a write transaction blocks every other writer of the file until it resumes (SQLite's
    single writer; PostgreSQL ends such a session instead, see docs/SCALE-OUT.md)."""
    for _ in range(50):
        daemon.send(signal.SIGSTOP)
        try:
            with contextlib.closing(sqlite3.connect(db, timeout=0.2, isolation_level=None)) as c:
                c.execute("BEGIN IMMEDIATE")
                c.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            daemon.send(signal.SIGCONT)
    raise AssertionError("the daemon always held the write lock")


def check_journals(db: Path) -> None:
    """Every recorded step once, numbered 1..K per run, and last_seq = K."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute(
            "SELECT r.rid, r.last_seq, count(s.seq), count(DISTINCT s.seq), min(s.seq),"
            " max(s.seq) FROM runs AS r JOIN steps AS s ON s.run_rid = r.rid"
            " WHERE s.seq IS NOT NULL GROUP BY r.rid"
        ).fetchall()
        leftovers = conn.execute(
            "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM replays)"
        ).fetchone()
    assert rows
    for rid, last_seq, n, distinct, low, high in rows:
        assert n == distinct == last_seq == high and low == 1, (rid, last_seq, n, distinct)
    assert leftovers == (0, 0)


@pytest.mark.slow
def test_a_paused_daemon_loses_its_shards_and_its_late_results_are_refused(
    tmp_path: Path, daemons: Daemons
) -> None:
    # Results wait 0.3s in the paused daemon's outbox: it is paused with some unwritten.
    config = write_config(tmp_path, engine={"flush_interval_s": 0.3})
    db = tmp_path / "executor.sqlite"
    steps_log = tmp_path / "steps.log"
    first = daemons.start(config).ready()

    async def start(client: Client) -> list[str]:
        return await client.start_many("chain", [[str(steps_log), 6, 0.05] for _ in range(40)])

    ids = with_client(db, start)
    poll(lambda: claims_of(db, first.pid) > 0, "the first daemon to claim steps")
    pause_outside_a_transaction(first, db)
    paused_at = time.monotonic()
    second = daemons.start(config, args=["--takeover"])
    poll(
        lambda: set(owners(db).values()) == {second.pid},
        "the newcomer to own every shard",
    )
    moved_s = time.monotonic() - paused_at
    first.send(signal.SIGCONT)
    assert first.wait_exit() == 0, first.log()
    refused = sum(int(n) for n in re.findall(r"refused (\d+) results", first.log()))

    async def finish(client: Client) -> list[Any]:
        return [await client.result(i, timeout=30) for i in ids]

    results = with_client(db, finish)
    assert all(len(r) == 6 for r in results)
    assert second.stop() == 0
    check_journals(db)
    ran = steps_log.read_text().splitlines()
    assert len(set(ran)) == 6 * len(ids)
    # The newcomer took the shards after the paused daemon's lease ran out (engine.lease_s 1.0,
    # plus the newcomer's own start), and put the paused daemon's claims back in the queue.
    took = re.findall(r"took shards ([\d, ]+) \(epochs", second.log())
    assert took, second.log()
    print(
        f"shards moved {moved_s:.2f}s after SIGSTOP; refused {refused} late results;"
        f" {len(ran) - len(set(ran))} steps ran twice"
    )
    assert refused > 0 or "lost shards" in first.log(), first.log()
