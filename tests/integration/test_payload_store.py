"""The payload store: large payloads stored once by content, out of the journal rows, compressed,
the largest in files beside the database; references counted by triggers; retention; `check`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from executor import Client, Registry, check, codec, errors, step, workflow
from executor.store import payloads
from executor.store.conn import SqliteConn
from executor.store.database import open_database
from executor.store.repository import commit_replays, create_runs
from executor.vocabulary import NewRun, NewStep, ReplayOutput, StepKind

if TYPE_CHECKING:
    from conftest import DbFile, EngineFactory

from tests.support.engine import database_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


PROMPT = "You are a careful assistant. " * 800  # about 23 KB (compressed), the same in every call

REG = Registry()


@step(registry=REG, name="summarize")
async def summarize(system: str, doc: int) -> str:
    return f"summary of {doc}: " + "words " * 400  # 2.4 KB, a different one per doc


@step(registry=REG, name="big")
async def big(n: int) -> str:
    return os.urandom(n // 2).hex()


@workflow(registry=REG, name="docs")
async def docs(ctx: Any, n: int) -> list[str]:
    return list(await asyncio.gather(*(summarize(PROMPT, i) for i in range(n))))


@workflow(registry=REG, name="huge")
async def huge(ctx: Any, n: int) -> int:
    value = await big(n)
    await ctx.sleep(0)
    return len(await big(n)) + len(value)


def payload_rows(dbfile: DbFile) -> list[tuple[Any, ...]]:
    return dbfile.query(
        "SELECT id, size, codec, length(data), file, refs FROM payloads ORDER BY id"
    )


async def test_a_shared_prompt_is_stored_once_and_results_out_of_the_rows(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile
) -> None:
    async with engine_factory(REG):
        run = await client.start(docs, 50)
        results = await client.result(run, timeout=30)
    assert results == [f"summary of {i}: " + "words " * 400 for i in range(50)]
    rows = payload_rows(dbfile)
    prompt = [r for r in rows if r[5] == 50]
    assert len(prompt) == 1, rows  # one row, fifty references
    _, size, codec, stored, file, _ = prompt[0]
    assert size > 23_000 and codec == "zlib" and stored < size / 10 and file is None
    # No journal row holds a payload above the inline limit.
    assert dbfile.value("SELECT max(length(args)) FROM steps") <= payloads.INLINE_MAX_BYTES
    assert dbfile.value("SELECT max(length(result)) FROM steps") <= payloads.INLINE_MAX_BYTES
    assert check.check(dbfile.path).ok


async def test_the_same_payload_in_10000_steps_is_stored_once(
    database: Path | str, dbfile: DbFile
) -> None:
    args = payloads_blob = f'["{PROMPT}", 1]'.encode()
    db = await open_database(database_config(database), shards=2)
    try:
        now = time.time()
        runs = [NewRun(f"run-{i}", "wf", None, i % 2, b"[]", None) for i in range(100)]
        await db.run(create_runs, runs, now)
        rids = [r for (r,) in dbfile.query("SELECT rid FROM runs ORDER BY rid")]
        outputs = [
            ReplayOutput(
                rid,
                rid % 2,
                0,
                [
                    NewStep(pos, StepKind.STEP, "summarize", "fp", payloads_blob, None)
                    for pos in range(100)
                ],
            )
            for rid in rids
        ]
        await db.run(commit_replays, outputs, now)
    finally:
        await db.close()
    assert dbfile.value("SELECT count(*) FROM steps") == 10_000
    assert dbfile.query("SELECT count(*), sum(refs) FROM payloads") == [(1, 10_000)]
    assert dbfile.value("SELECT sum(length(args)) FROM steps") < 10_000 * 8
    with dbfile.connect() as conn:
        assert payloads.resolve(conn, dbfile.value("SELECT args FROM steps LIMIT 1")) == args
    assert check.check(dbfile.path).ok


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # files: SQLite only
async def test_a_50_mb_result_round_trips_through_a_file(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile
) -> None:
    n = 50 * 1000 * 1000
    async with engine_factory(REG):
        run = await client.start(huge, n)
        assert await client.result(run, timeout=120) == 2 * n
    rows = [r for r in payload_rows(dbfile) if r[4] is not None]
    assert len(rows) == 2 and all(r[1] == n + 2 and r[3] is None and r[5] == 1 for r in rows)
    files = sorted(os.listdir(payloads.folder(dbfile.path)))
    assert files == sorted(r[4] for r in rows)
    # As private as the database file itself.
    assert payloads.folder(dbfile.path).stat().st_mode & 0o777 == 0o700
    assert {(payloads.folder(dbfile.path) / f).stat().st_mode & 0o777 for f in files} == {0o600}
    assert check.check(dbfile.path).ok
    # Retention: the run purged, its payloads and their files go.
    dbfile.execute("DELETE FROM steps")
    dbfile.execute("DELETE FROM runs")
    dbfile.execute("DELETE FROM replays")
    with dbfile.connect() as conn:
        collected = payloads.collect(conn)
    assert collected.payloads == 2 and collected.files == 2
    assert os.listdir(payloads.folder(dbfile.path)) == []


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_on_postgresql_a_large_result_stays_in_the_table(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile
) -> None:
    """No files beside a database on another machine: a result over FILE_MIN_BYTES is a row of
    payloads like a smaller one, compressed."""
    n = payloads.FILE_MIN_BYTES + 1000
    async with engine_factory(REG):
        run = await client.start(huge, n)
        assert await client.result(run, timeout=60) == 2 * n
    rows = [r for r in payload_rows(dbfile) if r[1] == n + 2]
    assert len(rows) == 2 and all(r[4] is None and r[3] and r[5] == 1 for r in rows)
    assert check.check(dbfile.path).ok


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # files: SQLite only
async def test_retention_removes_only_unreferenced_payloads(
    database: Path | str, dbfile: DbFile
) -> None:
    shared = f'["{PROMPT}"]'.encode()
    large = ("[" + "1," * (payloads.FILE_MIN_BYTES // 2) + "1]").encode()
    async with Client(database, shards=2) as client:
        await client.db.run(
            create_runs,
            [
                NewRun("a", "wf", None, 0, shared, None),
                NewRun("b", "wf", None, 1, shared, None),
                NewRun("c", "wf", None, 0, large, None),
            ],
            time.time(),
        )
    assert [(r[5], r[4] is not None) for r in payload_rows(dbfile)] == [(2, False), (1, True)]
    # An orphan file (a crash between its write and its commit), old enough to be swept.
    folder = payloads.folder(database)
    orphan = folder / "0123.orphan"
    orphan.write_bytes(b"x")
    os.utime(orphan, (0, 0))
    report = check.check(database)
    assert report.counts() == {"orphan_payload_file": 1}
    dbfile.execute("DELETE FROM runs WHERE id IN ('a', 'c')")  # a purge
    dbfile.execute("DELETE FROM replays WHERE run_rid NOT IN (SELECT rid FROM runs)")
    with dbfile.connect() as conn:
        collected = payloads.collect(conn)
    assert collected == payloads.Collected(payloads=1, files=2, bytes=len(large))
    assert [r[5] for r in payload_rows(dbfile)] == [1]  # the prompt: run b still refers to it
    assert os.listdir(folder) == []
    assert check.check(database).ok
    async with Client(database) as client:
        assert (await client.db.run(_args_of, "b")) == shared


def _args_of(conn: sqlite3.Connection, run_id: str) -> bytes | None:
    blob = conn.execute("SELECT args FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
    return payloads.resolve(conn, blob)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # files: SQLite only
async def test_check_reports_a_missing_payload_file_and_a_bad_refcount(
    database: Path | str, dbfile: DbFile
) -> None:
    large = ("[" + "2," * (payloads.FILE_MIN_BYTES // 2) + "2]").encode()
    async with Client(database, shards=2) as client:
        await client.db.run(create_runs, [NewRun("a", "wf", None, 0, large, None)], time.time())
    (name,) = os.listdir(payloads.folder(database))
    (payloads.folder(database) / name).unlink()
    dbfile.execute("UPDATE payloads SET refs = 5")
    report = check.check(database)
    assert report.counts() == {"missing_payload": 1, "refcount_mismatch": 1}
    assert name in report.summary()


def test_a_reference_to_a_missing_payload_is_refused(dbfile: DbFile, database: Path | str) -> None:
    asyncio.run(_open(database))
    refused = (sqlite3.IntegrityError, psycopg.errors.ForeignKeyViolation)
    with pytest.raises(refused, match="reference to a missing payload"):
        dbfile.execute(
            "INSERT INTO runs (id, workflow, shard, status, args, created_at, updated_at)"
            " VALUES ('x', 'wf', 0, 'running', ?, 0, 0)",
            b"\x0042",
        )


async def _open(path: Path) -> None:
    async with Client(path, shards=2):
        pass


# --- a crash while a large payload is written ----------------------------------------------------

WRITER = textwrap.dedent(
    """
    import asyncio, os, sys
    from executor import Client

    async def main(path):
        async with Client(path, shards=2) as client:
            i = 0
            while True:
                i += 1
                # Distinct and barely compressible, so each start writes a large file.
                await client.start("wf", os.urandom(3_000_000).hex(), i)
                print(i, flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_sigkill_while_writing_large_payloads_leaves_no_dangling_reference(
    tmp_path: Path,
) -> None:
    db = tmp_path / "crash.sqlite"
    folder = payloads.folder(db)
    for attempt in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True
        )
        try:
            # Kill it while a payload file is being written (a temporary file exists), after a
            # few committed starts.
            deadline = time.monotonic() + 60
            assert proc.stdout is not None
            for _ in range(attempt + 1):
                proc.stdout.readline()
            while time.monotonic() < deadline:
                with contextlib.suppress(FileNotFoundError):
                    if any(n.endswith(".tmp") for n in os.listdir(folder)):
                        break
            else:
                raise AssertionError("the writer never wrote a payload file")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        report = check.check(db)
        # Orphan files (the one being written) are allowed; a reference without its payload,
        # or a payload row without its file, never.
        assert set(report.counts()) <= {"orphan_payload_file"}, report.summary()
        with contextlib.closing(sqlite3.connect(db, factory=SqliteConn)) as conn:
            for (args,) in conn.execute("SELECT args FROM runs"):
                assert payloads.resolve(conn, args) is not None
    with contextlib.closing(sqlite3.connect(db, factory=SqliteConn)) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] >= 6


async def test_a_repeated_idempotency_key_with_large_arguments_returns_the_same_run(
    client: Client,
) -> None:
    first = await client.start("wf", PROMPT, 1, idempotency_key="k")
    assert await client.start("wf", PROMPT, 1, idempotency_key="k") == first
    with pytest.raises(errors.IdempotencyConflict, match="other arguments"):
        await client.start("wf", PROMPT, 2, idempotency_key="k")


def _remove_database(db: Path) -> None:
    for leftover in db.parent.glob(f"{db.name}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()


async def test_a_new_database_at_the_same_path_never_reads_an_old_payload(tmp_path: Path) -> None:
    db = tmp_path / "again.sqlite"
    for text in ("first " * 300, "second " * 300):  # both stored as payload 1 of their file
        _remove_database(db)
        async with Client(db, shards=2) as client:
            run = await client.start("wf", text)
            assert await client.db.run(_args_of, run) == codec.encode([text])
