"""`executor check`: clean on a database the engine left, one report per broken invariant (each
made by hand in SQL on a real file), read-only and safe beside a running engine, and the CLI verb.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from executor import Client, Registry, check, errors, step, workflow
from executor.store import reader
from executor.store.database import APPLICATION_ID

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory, WaitUntil

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


REG = Registry()


@step(registry=REG, name="inc")
async def inc(x: int) -> int:
    return x + 1


@workflow(registry=REG, name="three_steps")
async def three_steps(ctx: Any, x: int) -> int:
    a = await inc(x)
    await ctx.sleep(0.01)
    return await inc(a)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _finished_and_running(engine_factory: EngineFactory, client: Client) -> tuple[str, str]:
    """A database with one finished run (three journal entries) and one started, unclaimed."""
    async with engine_factory(REG):
        done = await client.start(three_steps, 1)
        assert await client.result(done, timeout=10) == 3
    waiting = await client.start(three_steps, 5)  # no engine: it keeps its first replay entry
    return done, waiting


async def test_a_database_the_engine_left_is_clean(
    engine_factory: EngineFactory, client: Client, database: str
) -> None:
    await _finished_and_running(engine_factory, client)
    report = check.check(database)
    assert report.ok, report.summary()
    assert report.runs == 2 and report.problems == []
    assert report.summary().endswith("ok: 2 runs, no broken invariant")
    assert report.to_dict()["ok"] is True


# (SQL that breaks one invariant, the kinds it must be reported as, which run is concerned)
BREAKS: dict[str, tuple[list[str], set[str], str]] = {
    "stuck": (
        ["DELETE FROM replays WHERE run_rid = :waiting"],
        {check.STUCK_RUN},
        "waiting",
    ),
    "lost_step": (
        [
            "INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at)"
            " VALUES (:waiting, 0, 'step', 'inc', 'x', '[5]', 'pending', 0)"
        ],
        {check.LOST_STEP},
        "waiting",
    ),
    "task_of_recorded_step": (
        ["INSERT INTO tasks (run_rid, pos, shard) VALUES (:done, 0, 0)"],
        {check.TASK_OF_RECORDED_STEP, check.LEFTOVER_OF_FINISHED_RUN},
        "done",
    ),
    "timer_of_recorded_step": (
        ["INSERT INTO timers (run_rid, pos, shard, fire_at) VALUES (:done, 1, 0, 0)"],
        {check.TIMER_OF_RECORDED_STEP, check.LEFTOVER_OF_FINISHED_RUN},
        "done",
    ),
    "result_without_seq": (
        ["UPDATE steps SET seq = NULL WHERE run_rid = :done AND pos = 2"],
        {check.SEQ_MISMATCH, check.SEQ_GAP},
        "done",
    ),
    "duplicate_seq": (
        ["UPDATE steps SET seq = 1 WHERE run_rid = :done AND pos = 1"],
        {check.DUPLICATE_SEQ, check.SEQ_GAP},
        "done",
    ),
    "seq_gap": (
        ["UPDATE runs SET last_seq = 4 WHERE rid = :done"],
        {check.SEQ_GAP},
        "done",
    ),
    "position_gap": (
        ["UPDATE steps SET pos = 7 WHERE run_rid = :done AND pos = 2"],
        {check.POSITION_GAP},
        "done",
    ),
    "replay_of_finished_run": (
        ["INSERT INTO replays (run_rid, shard, seq, created_at) VALUES (:done, 0, 3, 0)"],
        {check.BAD_REPLAY},
        "done",
    ),
    "claim_of_unknown_engine": (
        [
            "INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at)"
            " VALUES (:waiting, 0, 'step', 'inc', 'x', '[5]', 'pending', 0)",
            "INSERT INTO tasks (run_rid, pos, shard, claim_token, claim_engine, claim_epoch)"
            " VALUES (:waiting, 0, 0, 1, 99, 1)",
        ],
        {check.STALE_CLAIM},
        "waiting",
    ),
    "claim_of_stopped_engine": (
        [
            "INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at)"
            " VALUES (:waiting, 0, 'step', 'inc', 'x', '[5]', 'pending', 0)",
            "INSERT INTO tasks (run_rid, pos, shard, claim_token, claim_engine, claim_epoch)"
            " SELECT :waiting, 0, 0, 1, max(id), 1 FROM engines",
        ],
        {check.STALE_CLAIM},
        "waiting",
    ),
    "held_task_of_running_run": (
        [
            "INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at)"
            " VALUES (:waiting, 0, 'step', 'inc', 'x', '[5]', 'pending', 0)",
            "INSERT INTO tasks (run_rid, pos, shard, parked)"
            " VALUES (:waiting, 0, 0, 'unregistered')",
        ],
        {check.HELD_TASK_OF_RUNNING_RUN},
        "waiting",
    ),
    "action_past_its_cutoff": (
        [
            "INSERT INTO run_actions (action, spec, filter, phase, cutoff_rid, cursor_rid,"
            " created_at, updated_at) VALUES ('retry', '{}', '{}', 'open', 1, 5, 0, 0)"
        ],
        {check.BAD_ACTION},
        "",
    ),
    "dangling_task": (
        ["INSERT INTO tasks (run_rid, pos, shard) VALUES (999, 0, 0)"],
        {check.DANGLING_ROW},
        "",
    ),
}


@pytest.mark.parametrize("name", list(BREAKS))
async def test_each_broken_invariant_is_reported_with_its_run(
    engine_factory: EngineFactory, client: Client, database: str, dbfile: DbFile, name: str
) -> None:
    statements, kinds, which = BREAKS[name]
    done, waiting = await _finished_and_running(engine_factory, client)
    rids = {"done": dbfile.rid(done), "waiting": dbfile.rid(waiting)}
    for sql in statements:
        dbfile.execute(sql, rids)
    report = check.check(database)
    assert not report.ok
    assert set(report.counts()) == kinds, report.summary()
    expected_run = {"done": done, "waiting": waiting, "": None}[which]
    assert {p.run_id for p in report.problems} == {expected_run}
    summary = report.summary()
    assert summary.startswith(f"{database}: {len(report.problems)} problems")
    for kind in kinds:
        assert f"  {kind}: run {expected_run or '-'}: " in summary


async def test_a_claim_is_stale_only_past_the_lease(
    engine_factory: EngineFactory, client: Client, database: str, dbfile: DbFile
) -> None:
    _, waiting = await _finished_and_running(engine_factory, client)
    rid = dbfile.rid(waiting)
    now = time.time()
    dbfile.execute(
        "INSERT INTO engines (id, epoch, pid, host, state, started_at, heartbeat_at)"
        " VALUES (50, 1, 1, 'h', 'running', ?, ?)",
        now - 100,
        now - 10,
    )
    dbfile.execute(
        "INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at)"
        " VALUES (?, 0, 'step', 'inc', 'x', '[5]', 'pending', 0)",
        rid,
    )
    dbfile.execute(
        "INSERT INTO tasks (run_rid, pos, shard, claim_token, claim_engine, claim_epoch)"
        " VALUES (?, 0, 0, 1, 50, 1)",
        rid,
    )
    assert check.check(database, lease_s=60).ok  # a heartbeat 10 s old is within a 60 s lease
    stale = check.check(database, lease_s=5)
    assert [(p.kind, p.run_id) for p in stale.problems] == [(check.STALE_CLAIM, waiting)]
    assert "engine 50 (running), whose last heartbeat is past the lease" in stale.problems[0].detail


async def test_check_is_read_only_and_runs_beside_a_busy_engine(
    engine_factory: EngineFactory,
    client: Client,
    database: str,
    dbfile: DbFile,
    wait_until: WaitUntil,
) -> None:
    reg = Registry()
    release = asyncio.Event()

    @step(registry=reg, name="held")
    async def held() -> str:
        await release.wait()
        return "ok"

    @workflow(registry=reg, name="holds")
    async def holds(ctx: Any) -> str:
        return await held()

    async with engine_factory(reg) as engine:
        runs = await client.start_many(holds, [[] for _ in range(5)])
        await wait_until(lambda: engine.load()["in_flight"] == 5, "steps in flight")
        # In-flight claims of a live engine are fine; another writer holding the lock (on
        # PostgreSQL: row locks in an open transaction) does not stop a reader either.
        with dbfile.connect() as locker:
            locker.execute(
                "BEGIN" if dbfile.postgres else "BEGIN IMMEDIATE",
            )
            locker.execute("UPDATE runs SET updated_at = updated_at")
            report = await asyncio.to_thread(check.check, database)
            locker.execute("ROLLBACK")
        assert report.ok, report.summary()
        release.set()
        assert [await client.result(r, timeout=10) for r in runs] == ["ok"] * 5

    if dbfile.postgres:
        # Its session cannot write at all: test_a_postgres_reader_cannot_write.
        assert check.check(database).ok
        return
    before = _file_digest(Path(database))
    assert check.check(database).ok
    assert _file_digest(Path(database)) == before


def test_files_that_are_not_a_current_database_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(errors.StoreError, match=re.escape(f"{missing}: no database here")):
        check.check(missing)
    assert not missing.exists()

    text = tmp_path / "text.sqlite"
    text.write_text("hello, not a database\n" * 100)
    with pytest.raises(
        errors.SchemaError, match=re.escape(f"{text}: ") + ".*not an SQLite database"
    ):
        check.check(text)

    foreign = tmp_path / "foreign.sqlite"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(errors.SchemaError, match=re.escape(f"{foreign}: not an executor database")):
        check.check(foreign)

    old = tmp_path / "old.sqlite"
    with contextlib.closing(sqlite3.connect(old)) as conn:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # ours, at schema version 0
    with pytest.raises(errors.SchemaError, match=r"schema version 0.*executor migrate"):
        check.check(old)


def test_postgres_databases_that_are_not_a_current_one_are_refused(pg_empty_url: str) -> None:
    where = re.escape(pg_empty_url)
    with pytest.raises(errors.SchemaError, match=where + ": not an executor database"):
        check.check(pg_empty_url)
    with psycopg.connect(pg_empty_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('application', 7)")
    with pytest.raises(errors.SchemaError, match=where + r": not an executor database \(meta"):
        check.check(pg_empty_url)
    with psycopg.connect(pg_empty_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = %s", (APPLICATION_ID,))
    with pytest.raises(errors.SchemaError, match=r"schema version 0.*executor migrate"):
        check.check(pg_empty_url)


def test_a_postgres_reader_cannot_write(pg_url: str) -> None:
    """The session of every reader (check, replay-check, the dashboard, /metrics) is read-only:
    whatever a bug made it send, the server would refuse to write."""
    cfg = reader.database_config(pg_url)
    with reader.reading(cfg) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    with (
        pytest.raises(errors.StoreWriteError, match="read-only transaction"),
        reader.reading(cfg) as conn,
    ):
        conn.execute("DELETE FROM runs")


# --- the CLI verb --------------------------------------------------------------------------------


def _cli(config: Path, *args: str, tty: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `executor check`; with `tty`, its stdout is a terminal (the human summary)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECUTOR_")}
    cmd = [sys.executable, "-m", "executor", "check", "--config", str(config), *args]
    if not tty:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            cmd, env=env, stdout=follower, stderr=subprocess.PIPE, text=True, timeout=60
        )
        os.close(follower)
        follower = -1
        out = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    return subprocess.CompletedProcess(
        cmd, proc.returncode, out.decode().replace("\r\n", "\n"), proc.stderr
    )


async def test_the_cli_exits_0_when_clean_and_1_with_a_summary(
    engine_factory: EngineFactory, client: Client, database: str, dbfile: DbFile, tmp_path: Path
) -> None:
    _, waiting = await _finished_and_running(engine_factory, client)
    config = tmp_path / "executor.toml"
    key = "url" if dbfile.postgres else "path"
    config.write_text(f'[database]\n{key} = "{database}"\n')

    clean = await asyncio.to_thread(_cli, config, tty=True)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout == f"{database}: ok: 2 runs, no broken invariant\n"
    piped = await asyncio.to_thread(_cli, config)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["ok"] is True  # stdout not a terminal: JSON

    dbfile.execute("DELETE FROM replays WHERE run_rid = ?", dbfile.rid(waiting))
    broken = await asyncio.to_thread(_cli, config, tty=True)
    assert broken.returncode == 1
    assert f"{database}: 1 problems in 1 runs (of 2): 1 stuck_run" in broken.stdout
    assert f"stuck_run: run {waiting}: running with no queued" in broken.stdout

    as_json = await asyncio.to_thread(_cli, config, "--json")
    assert as_json.returncode == 1
    doc: dict[str, Any] = json.loads(as_json.stdout)
    assert doc["ok"] is False and doc["counts"] == {"stuck_run": 1}
    assert doc["problems"] == [
        {"kind": "stuck_run", "run_id": waiting, "detail": doc["problems"][0]["detail"]}
    ]

    missing = tmp_path / "elsewhere.toml"
    missing.write_text(f'[database]\npath = "{tmp_path / "none.sqlite"}"\n')
    gone = await asyncio.to_thread(_cli, missing)
    assert gone.returncode == 3 and "no database here" in gone.stderr
