"""The SQLite file: opening it, checking it is ours, migrating it, and running work on it.

One aiosqlite connection owns one thread. Statements are not sent one await at a time: a whole
transaction is a plain function that runs on that thread in one hop (see `Database.run`), because a
thread hop per statement would cap us at a few thousand statements a second.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import aiosqlite

from executor import config, errors
from executor.store import sql

P = ParamSpec("P")
T = TypeVar("T")

# "EXEC" in ASCII: marks the file as ours, so we never migrate someone else's database.
APPLICATION_ID = 0x45584543
SCHEMA_VERSION = len(sql.migrations())


def transaction(
    fn: Callable[Concatenate[sqlite3.Connection, P], T],
) -> Callable[Concatenate[sqlite3.Connection, P], T]:
    """Run `fn` inside BEGIN IMMEDIATE ... COMMIT, rolling back on any error.

    IMMEDIATE takes the write lock up front, so a transaction never fails half-way because another
    writer got there first (busy_timeout covers the wait).
    """

    @functools.wraps(fn)
    def wrapper(conn: sqlite3.Connection, *args: P.args, **kwargs: P.kwargs) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args, **kwargs)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    return wrapper  # type: ignore[return-value]


def _classify(path: Path, what: str, exc: sqlite3.Error) -> errors.StoreError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return errors.StoreBusy(f"{path}: {what}: {text}")
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return errors.SchemaError(f"{path}: the file is not a valid executor database ({text})")
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and (
        "readonly" in text or "disk" in text or "full" in text or "I/O" in text
    ):
        return errors.StoreWriteError(f"{path}: {what}: {text}")
    return errors.StoreError(f"{path}: {what}: {text}")


class Database:
    """An open executor database."""

    def __init__(self, path: Path, conn: aiosqlite.Connection, raw: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._raw = raw
        self.shards = 0

    @classmethod
    async def open(cls, cfg: config.DatabaseConfig, *, shards: int | None = None) -> Database:
        """Open (creating and migrating if needed) the database at cfg.path.

        `shards` is recorded when the file is created; a later open with a different count is an
        error, because every stored run and task already carries its shard.
        """
        path = Path(cfg.path)
        _precreate(path, 0o640 if cfg.group_readable else 0o600)
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _classify(path, "open", exc) from exc
        raw = conn._conn  # the sqlite3 connection; only ever used on aiosqlite's own thread
        db = cls(path, conn, raw)
        try:
            await db.run(_setup, cfg, path)
            db.shards = await db.run(_check_shards, shards, path)
        except BaseException:
            await conn.close()
            raise
        return db

    async def run(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """Run fn(connection, *args) on the database thread and return its result."""
        try:
            # aiosqlite's queue-and-thread machinery, fed a whole function instead of one
            # statement. test_store.py pins this behaviour so an aiosqlite upgrade cannot
            # silently break it.
            result: T = await self._conn._execute(  # type: ignore[no-untyped-call]
                fn, self._raw, *args, **kw
            )
        except sqlite3.Error as exc:
            raise _classify(self.path, getattr(fn, "__name__", "query"), exc) from exc
        return result

    async def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        await self._conn.close()


def _precreate(path: Path, mode: int) -> None:
    """Create the file with restrictive permissions before SQLite does (it copies them to -wal)."""
    if path.exists():
        return
    if not path.parent.exists():
        raise errors.StoreError(f"{path}: the folder {path.parent} does not exist")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError:
        return
    except OSError as exc:
        raise errors.StoreError(f"{path}: cannot create the database: {exc}") from exc
    os.close(fd)


def _setup(conn: sqlite3.Connection, cfg: config.DatabaseConfig, path: Path) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(cfg.busy_timeout_s * 1000)}")
    # Fail fast (and clearly) on a file that is not SQLite, before changing anything.
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise errors.SchemaError(f"{path}: not an SQLite database ({exc})") from exc
    if app_id != APPLICATION_ID and (app_id != 0 or tables > 0):
        raise errors.SchemaError(
            f"{path}: this SQLite file was not created by executor (application_id={app_id:#x});"
            " refusing to touch it"
        )
    if version > SCHEMA_VERSION:
        raise errors.SchemaError(
            f"{path}: schema version {version} is newer than this executor supports"
            f" ({SCHEMA_VERSION}); upgrade executor"
        )
    if version == 0 and tables == 0:
        # Only possible before the first table: lets purges give space back to the file system
        # in small steps (PRAGMA incremental_vacuum) instead of one VACUUM of the whole file.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    synchronous = "FULL" if cfg.durability == "full" else "NORMAL"
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA cache_size = -65536")  # 64 MiB page cache
    conn.execute("PRAGMA temp_store = MEMORY")
    for number, name, script in sql.migrations():
        if number <= version:
            continue
        _migrate(conn, number, name, script, path)


def _migrate(conn: sqlite3.Connection, number: int, name: str, script: str, path: Path) -> None:
    # One transaction per migration, version bump included: a failure leaves the previous
    # version intact, never a half-migrated file.
    try:
        conn.execute("BEGIN IMMEDIATE")
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        if current >= number:  # another process migrated meanwhile
            conn.execute("ROLLBACK")
            return
        for statement in _statements(script):
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise errors.SchemaError(f"{path}: migration {name} failed: {exc}") from exc


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (sqlite3.complete_statement knows the grammar)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf)
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()
    ):
        raise ValueError(f"incomplete statement at the end of a migration: {buf[:80]!r}")
    return out


def _check_shards(conn: sqlite3.Connection, shards: int | None, path: Path) -> int:
    row = conn.execute(sql.Q["select_shards"]).fetchone()
    if row is not None:
        stored = int(row[0])
        if shards is not None and shards != stored:
            raise errors.ConfigError(
                f"engine.shards: {shards}, but {path} was created with {stored} shards"
                " (every stored run keeps its shard; use the same count)"
            )
        return stored
    if shards is None:
        shards = config.EngineConfig().shards
    conn.execute("BEGIN IMMEDIATE")
    try:
        again = conn.execute(sql.Q["select_shards"]).fetchone()
        if again is None:
            conn.execute(sql.Q["insert_shards"], {"shards": shards})
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(again[0]) if again is not None else shards
