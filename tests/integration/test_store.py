"""The database file: creation, refusal of files that are not ours, shards, permissions, and the
thread `Database.run` uses. Every test opens a real SQLite file in tmp_path."""

from __future__ import annotations

import inspect
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import aiosqlite
import pytest

from executor import errors, vocabulary
from executor.config import DatabaseConfig
from executor.store import engines
from executor.store import repository as repo
from executor.store.database import APPLICATION_ID, SCHEMA_VERSION, Database, transaction

if TYPE_CHECKING:
    from tests.support.engine import DbFile

pytestmark = pytest.mark.anyio

TABLES = {"runs", "steps", "tasks", "replays", "timers", "engines", "meta"}


def schema(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT type, name, coalesce(sql, '') FROM sqlite_schema ORDER BY name"
        ).fetchall()
    finally:
        conn.close()


async def test_a_fresh_file_gets_the_schema(db_path: Path, dbfile: DbFile) -> None:
    db = await Database.open(DatabaseConfig(path=db_path), shards=3)
    try:
        assert db.shards == 3
        assert db.path == db_path
    finally:
        await db.close()
    tables = {r[0] for r in dbfile.query("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert tables >= TABLES
    assert dbfile.value("PRAGMA user_version") == SCHEMA_VERSION >= 1
    assert dbfile.value("PRAGMA application_id") == APPLICATION_ID
    assert dbfile.value("PRAGMA journal_mode") == "wal"
    assert dict(dbfile.query("SELECT key, value FROM meta")) == {"epoch": 0, "shards": 3}


async def test_reopening_changes_nothing(db_path: Path, dbfile: DbFile) -> None:
    cfg = DatabaseConfig(path=db_path)
    db = await Database.open(cfg, shards=2)
    try:
        ids = await db.run(
            repo.create_runs, [vocabulary.NewRun("r1", "wf", None, 1, b"[]", "key")], 1.0
        )
        assert ids == ["r1"]
    finally:
        await db.close()
    before = schema(db_path)
    for shards in (None, 2):
        db = await Database.open(cfg, shards=shards)
        try:
            assert db.shards == 2
            row = await db.run(repo.get_run, "r1")
            assert (
                row is not None
                and row.workflow == "wf"
                and row.status == vocabulary.RunState.RUNNING
            )
        finally:
            await db.close()
    assert schema(db_path) == before
    assert dbfile.value("PRAGMA user_version") == SCHEMA_VERSION
    assert dbfile.value("SELECT count(*) FROM runs") == 1


def read(path: Path) -> bytes:
    return path.read_bytes()


def mode(path: Path) -> int | None:
    return stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else None


def write_garbage(path: Path) -> bytes:
    garbage = b"this is a text file, not a database\n" * 100
    path.write_bytes(garbage)
    return garbage


async def test_a_file_that_is_not_sqlite_is_refused(db_path: Path) -> None:
    garbage = write_garbage(db_path)
    with pytest.raises(errors.SchemaError) as info:
        await Database.open(DatabaseConfig(path=db_path))
    assert str(db_path) in str(info.value)
    assert read(db_path) == garbage


async def test_an_sqlite_file_that_is_not_ours_is_refused(db_path: Path, dbfile: DbFile) -> None:
    with dbfile.connect() as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
        conn.execute("INSERT INTO accounts (owner) VALUES ('alice')")
    before = schema(db_path)
    with pytest.raises(errors.SchemaError) as info:
        await Database.open(DatabaseConfig(path=db_path))
    assert str(db_path) in str(info.value)
    assert "not created by executor" in str(info.value)
    assert schema(db_path) == before
    assert dbfile.value("PRAGMA journal_mode") == "delete"  # not even switched to WAL
    assert dbfile.value("PRAGMA user_version") == 0


async def test_an_sqlite_file_with_another_application_id_is_refused(
    db_path: Path, dbfile: DbFile
) -> None:
    dbfile.execute("PRAGMA application_id = 1234")
    with pytest.raises(errors.SchemaError, match="application_id=0x4d2"):
        await Database.open(DatabaseConfig(path=db_path))


async def test_a_newer_schema_is_refused(db_path: Path, dbfile: DbFile) -> None:
    db = await Database.open(DatabaseConfig(path=db_path))
    await db.close()
    dbfile.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 40}")
    with pytest.raises(errors.SchemaError) as info:
        await Database.open(DatabaseConfig(path=db_path))
    message = str(info.value)
    assert str(db_path) in message
    assert f"schema version {SCHEMA_VERSION + 40} is newer" in message
    assert dbfile.value("PRAGMA user_version") == SCHEMA_VERSION + 40


async def test_the_shard_count_is_fixed_at_creation(db_path: Path) -> None:
    cfg = DatabaseConfig(path=db_path)
    db = await Database.open(cfg, shards=4)
    await db.close()
    with pytest.raises(errors.ConfigError) as info:
        await Database.open(cfg, shards=2)
    assert "created with 4 shards" in str(info.value)
    assert str(db_path) in str(info.value)
    db = await Database.open(cfg)
    try:
        assert db.shards == 4
    finally:
        await db.close()


async def test_a_missing_folder_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "executor.sqlite"
    with pytest.raises(errors.StoreError, match="does not exist"):
        await Database.open(DatabaseConfig(path=path))


@pytest.mark.parametrize(("group_readable", "expected"), [(False, 0o600), (True, 0o640)])
async def test_files_are_private(db_path: Path, group_readable: bool, expected: int) -> None:
    old_umask = os.umask(0o022)
    try:
        db = await Database.open(DatabaseConfig(path=db_path, group_readable=group_readable))
    finally:
        os.umask(old_umask)
    try:
        await db.run(repo.create_runs, [vocabulary.NewRun("r1", "wf", None, 0, b"[]", None)], 1.0)
        wal, shm = Path(f"{db_path}-wal"), Path(f"{db_path}-shm")
        assert (mode(db_path), mode(wal), mode(shm)) == (expected, expected, expected)
    finally:
        await db.close()


async def test_run_executes_on_aiosqlites_own_thread(db_path: Path) -> None:
    # Database.run feeds whole functions to aiosqlite's private `_execute`; pin its shape so an
    # aiosqlite upgrade that changes it fails here rather than in production.
    assert inspect.iscoroutinefunction(aiosqlite.Connection._execute)
    params = list(inspect.signature(aiosqlite.Connection._execute).parameters.values())
    assert [p.kind for p in params[1:]] == [
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.VAR_KEYWORD,
    ]
    db = await Database.open(DatabaseConfig(path=db_path))
    try:
        worker = db._conn._thread
        assert isinstance(worker, threading.Thread) and worker.is_alive()

        def where(conn: sqlite3.Connection, tag: str, *, twice: bool) -> tuple[int, str, int]:
            value = conn.execute("SELECT 21 * ?", (2 if twice else 1,)).fetchone()[0]
            return threading.get_ident(), tag, value

        first = await db.run(where, "a", twice=True)
        second = await db.run(where, "b", twice=False)
        assert first == (worker.ident, "a", 42)
        assert second == (worker.ident, "b", 21)
        assert worker.ident != threading.get_ident()
    finally:
        await db.close()


async def test_run_wraps_driver_errors_and_transactions_roll_back(
    db_path: Path, dbfile: DbFile
) -> None:
    db = await Database.open(DatabaseConfig(path=db_path))

    @transaction
    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('half', 1)")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    try:
        with pytest.raises(errors.StoreError) as info:
            await db.run(half_done)
        assert isinstance(info.value.__cause__, sqlite3.Error)
        assert str(db_path) in str(info.value) and "half_done" in str(info.value)
        # The connection is usable again and nothing of the failed transaction stayed.
        assert await db.run(engines.bump_epoch) == 1
    finally:
        await db.close()
    assert dbfile.value("SELECT count(*) FROM meta WHERE key = 'half'") == 0
