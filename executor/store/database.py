"""The SQLite file: opening it, checking it is ours, migrating it, and running work on it; and
`open_database`, which opens the store the configuration names (this file, or PostgreSQL through
store/pgdatabase.py), behind the `Store` surface the engine and the client use.

One aiosqlite connection owns one thread. Statements are not sent one await at a time: a whole
transaction is a plain function that runs on that thread in one hop (see `Database.run`), because a
thread hop per statement would cap us at a few thousand statements a second.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar, cast

import aiosqlite

from executor import config, errors
from executor.store import sql, turnstile
from executor.store.conn import Conn, SqliteConn

P = ParamSpec("P")
T = TypeVar("T")
C = TypeVar("C", bound=Conn)

# "EXEC" in ASCII: marks the file as ours, so we never migrate someone else's database.
APPLICATION_ID = 0x45584543
SCHEMA_VERSION = len(sql.migrations("sqlite"))


def transaction(fn: Callable[Concatenate[C, P], T]) -> Callable[Concatenate[C, P], T]:
    """Run `fn` inside begin_write ... COMMIT, rolling back on any error.

    On SQLite begin_write is BEGIN IMMEDIATE: it takes the write lock up front, so a transaction
    never fails half-way because another writer got there first (busy_timeout covers the wait).
    """

    @functools.wraps(fn)
    def wrapper(conn: C, *args: P.args, **kwargs: P.kwargs) -> T:
        gate = conn.turnstile
        if gate is not None:  # SQLite: take turns with this process's other connections
            _begin_in_turn(conn, gate)
        else:
            conn.execute(conn.q["begin_write"])
        try:
            try:
                result = fn(conn, *args, **kwargs)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        finally:
            if gate is not None:
                gate.release()

    return wrapper  # type: ignore[return-value]


def _begin_in_turn(conn: Conn, gate: turnstile.Turnstile) -> None:
    """BEGIN IMMEDIATE once this process's other writers of the file have had their turn
    (store/turnstile.py), within database.busy_timeout_s in all."""
    timeout_s = conn.busy_timeout_s
    waited = gate.acquire(timeout_s)
    try:
        if waited < _SHORT_WAIT_S:
            conn.execute(conn.q["begin_write"])
            return
        # What is left of the timeout for SQLite's own wait (another process's writer).
        left_ms = max(1, int((timeout_s - waited) * 1000))
        conn.execute(f"PRAGMA busy_timeout = {left_ms}")
        try:
            conn.execute(conn.q["begin_write"])
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    except BaseException:
        gate.release()
        raise


# A wait for the turnstile shorter than this is not taken off SQLite's own busy timeout (two
# PRAGMAs for a few ms of bound are not worth it).
_SHORT_WAIT_S = 0.05


def classify(path: Path, what: str, exc: sqlite3.Error, read_only: str | None = None) -> Exception:
    """The StoreError for a driver error, naming the file and, where SQLite's text is vague
    ("unable to open database file", "disk I/O error"), the cause the file system reports."""
    text = str(exc)
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith("SQLITE_CORRUPT") or "malformed" in text:
        return errors.StoreCorrupt(
            f"{path}: the database file is damaged ({text}); executor stops and writes nothing"
            " more to it (see docs/RELIABILITY.md: restore a backup, or recover it)"
        )
    if name.startswith("SQLITE_NOTADB") or "not a database" in text:
        return errors.SchemaError(f"{path}: not an SQLite database ({text})")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return errors.StoreBusy(
            f"{path}: {what}: database is locked (another process held the write lock longer"
            " than database.busy_timeout_s)"
        )
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and (
        "readonly" in text or "disk" in text or "full" in text or "I/O" in text or "open" in text
    ):
        cause = read_only or write_blocker(path) or text
        return errors.StoreWriteError(f"{path}: {what}: cannot write the database: {cause}")
    if isinstance(exc, sqlite3.InterfaceError | sqlite3.ProgrammingError):
        # Bad values from a caller that got past validation: the caller's bug, not the file's.
        return errors.InvalidArgument(f"{path}: {what}: {text}")
    return errors.StoreError(f"{path}: {what}: {text}")


def _strerror(exc: OSError) -> str:
    text = (exc.strerror or str(exc)).lower()
    if exc.errno == errno.EPERM:
        text += " (an immutable or append-only attribute? see lsattr)"
    return text


# These two never open the database file: closing any descriptor of a file drops every POSIX
# lock this process holds on it, so an open-and-close here, beside a live connection in the same
# process (the daemon's retention Client next to its engine), silently broke SQLite's locking and
# the engine stopped seeing other processes' commits. os.access and stat open nothing.


def read_blocker(path: Path) -> str | None:
    """Why this process cannot read the file at `path`; None if it may."""
    if path.is_dir():
        return "it is a directory, not a file"
    if path.exists() and not os.access(path, os.R_OK):
        return "permission denied"
    return None


def write_blocker(path: Path) -> str | None:
    """Why this process cannot write the database at `path`, as the file system says; None if
    nothing stops it as far as can be told without writing. Opens, creates and changes nothing."""
    folder = path.parent
    if path.is_dir():
        return "it is a directory, not a file"
    try:
        fs = os.statvfs(folder)
    except OSError as exc:
        return f"cannot reach the folder {folder}: {_strerror(exc)}"
    if fs.f_flag & os.ST_RDONLY:
        return f"{folder} is on a read-only file system"
    if path.exists() and not os.access(path, os.W_OK):
        if os.geteuid() == 0:  # root passes permission bits: only an attribute refuses it
            return "operation not permitted (an immutable or append-only attribute? see lsattr)"
        return "permission denied"
    # SQLite keeps the -wal and -shm files next to the database and must be able to create them.
    side_files = [Path(f"{path}{suffix}") for suffix in ("-wal", "-shm")]
    if not all(f.exists() for f in side_files) and not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot create files in {folder} (for the -wal and -shm files): permission denied"
    if (fs.f_bavail == 0 and os.geteuid() != 0) or fs.f_bfree == 0:
        return f"no space left on the file system of {folder}"
    return None


def _connector(path: Path, read_only: bool, timeout_s: float) -> Callable[[], SqliteConn]:
    """How to open the file: read-write, or read-only when this process cannot write it (see
    connect_read_only)."""
    if not read_only:
        # bytes: a path that is not valid UTF-8 (os.fsencode keeps the bytes) still opens.
        def read_write() -> SqliteConn:
            return sqlite3.connect(
                os.fsencode(path),
                timeout=timeout_s,
                isolation_level=None,
                check_same_thread=False,
                factory=SqliteConn,
            )

        return read_write
    return functools.partial(connect_read_only, path, timeout_s)


def connect_read_only(path: Path, timeout_s: float) -> SqliteConn:
    """A connection that can never write the file (SQLite's mode=ro), for reads by a process that
    cannot or must not write it (`executor check`, read-only verbs on a read-only file). A file
    without -wal/-shm that we cannot write (a backup, read-only media, a full disk) opens
    `immutable`: no writer has it open (a writer always has the -shm file)."""
    absolute = Path(os.path.abspath(path))
    params = "mode=ro"
    side_files = [Path(f"{absolute}{suffix}") for suffix in ("-wal", "-shm")]
    # Without -wal and -shm no connection has the file open, and SQLite could not create -shm
    # (which WAL reads need) where we cannot write: read it as the file it is.
    if not any(f.exists() for f in side_files) and write_blocker(absolute) is not None:
        params += "&immutable=1"
    uri = absolute.as_uri() + "?" + params
    return sqlite3.connect(
        uri,
        uri=True,
        timeout=timeout_s,
        isolation_level=None,
        check_same_thread=False,
        factory=SqliteConn,
    )


async def _connect(
    path: Path, read_only: bool, timeout_s: float, blocker: str | None
) -> aiosqlite.Connection:
    pending = aiosqlite.Connection(_connector(path, read_only, timeout_s), 64)
    try:
        return await pending
    except sqlite3.Error as exc:
        # aiosqlite has queued the stop of its worker thread; wait until the thread has run it,
        # or it reports to a loop that asyncio.run has closed meanwhile (a thread traceback).
        await asyncio.to_thread(pending._thread.join, 5.0)
        raise classify(path, "open", exc, blocker) from exc


class Store(Protocol):
    """An open executor database of either dialect: all the engine and the client use."""

    @property
    def path(self) -> Path | str:
        """What messages call it: the SQLite file, or the URL without its password."""
        ...

    @property
    def dialect(self) -> str: ...

    @property
    def shards(self) -> int: ...

    @property
    def read_only(self) -> str | None:
        """Why this process cannot write, when opened read-only; else None."""
        ...

    async def run(
        self, fn: Callable[Concatenate[Conn, P], T], *args: P.args, **kw: P.kwargs
    ) -> T: ...

    async def close(self) -> None: ...


async def open_database(
    cfg: config.DatabaseConfig,
    *,
    shards: int | None = None,
    read_only_ok: bool = False,
    verify: bool = False,
    lease_s: float | None = None,
    must_exist: str | None = None,
) -> Store:
    """The store `cfg` names: PostgreSQL at cfg.url when set, else the SQLite file at cfg.path
    (see Database.open for the arguments; `lease_s`, the engine's, bounds how long a PostgreSQL
    session may hold locks). `must_exist`: refuse (StoreError) rather than create executor's
    schema in an empty PostgreSQL database; the text says where the URL came from. (For a file,
    the caller checks with require_file: opening creates it.)"""
    if not cfg.url:
        return await Database.open(cfg, shards=shards, read_only_ok=read_only_ok, verify=verify)
    try:
        # Imported here: psycopg is an optional dependency, needed only for a PostgreSQL URL.
        from executor.store import pgdatabase
    except ImportError as exc:
        raise errors.ConfigError(
            f"database.url: PostgreSQL needs psycopg, which is not installed ({exc});"
            " pip install 'executor[postgres]'"
        ) from exc
    return await pgdatabase.PostgresDatabase.open(
        cfg,
        shards=shards,
        read_only_ok=read_only_ok,
        verify=verify,
        lease_s=lease_s,
        must_exist=must_exist,
    )


class Database:
    """An open executor database: the SQLite file."""

    dialect = "sqlite"

    def __init__(self, path: Path, conn: aiosqlite.Connection, raw: SqliteConn) -> None:
        self.path = path
        self._conn = conn
        self._raw = raw
        self.shards = 0
        # Why this process cannot write the file, when it was opened read-only; else None.
        self.read_only: str | None = None
        # Set once SQLite reports corruption: from then on nothing reaches the file.
        self._corrupt: errors.StoreCorrupt | None = None

    @classmethod
    async def open(
        cls,
        cfg: config.DatabaseConfig,
        *,
        shards: int | None = None,
        read_only_ok: bool = False,
        verify: bool = False,
    ) -> Database:
        """Open (creating and migrating if needed) the database at cfg.path.

        `shards` is recorded when the file is created; a later open with a different count is an
        error, because every stored run and task already carries its shard. With `read_only_ok`,
        a file this process can read but not write opens read-only (reads work; a write fails
        with StoreWriteError naming why); without, it is refused with that error at once.
        `verify` (the engine): unless database.quick_check_on_start is off, run SQLite's
        quick_check before anything is written (StoreCorrupt if it fails).
        """
        path = Path(cfg.path)
        blocker = _prepare(path, 0o640 if cfg.group_readable else 0o600)
        if blocker is not None and not read_only_ok:
            raise errors.StoreWriteError(f"{path}: cannot write the database: {blocker}")
        conn = await _connect(path, blocker is not None, cfg.busy_timeout_s, blocker)
        # The SqliteConn _connector made; only ever used on aiosqlite's own thread.
        raw = cast(SqliteConn, conn._conn)
        raw.compress_min_bytes = cfg.compress_min_bytes
        raw.busy_timeout_s = cfg.busy_timeout_s
        db = cls(path, conn, raw)
        db.read_only = blocker
        try:
            await db.run(_setup, cfg, path, blocker, verify)
            db.shards = await db.run(_check_shards, shards, path, blocker is not None)
        except BaseException:
            await conn.close()
            raise
        if blocker is None:
            raw.turnstile = turnstile.for_file(path)
        return db

    async def run(
        self, fn: Callable[Concatenate[SqliteConn, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """Run fn(connection, *args) on the database thread and return its result."""
        if self._corrupt is not None:
            raise self._corrupt
        started = time.monotonic()
        try:
            # aiosqlite's queue-and-thread machinery, fed a whole function instead of one
            # statement. test_store.py pins this behaviour so an aiosqlite upgrade cannot
            # silently break it.
            result: T = await self._conn._execute(  # type: ignore[no-untyped-call]
                fn, self._raw, *args, **kw
            )
        except sqlite3.Error as exc:
            error = classify(self.path, getattr(fn, "__name__", "query"), exc, self.read_only)
            if isinstance(error, errors.StoreCorrupt):
                self._corrupt = error
            if isinstance(error, errors.StoreError):
                error.started_at = started
            raise error from exc
        except (UnicodeError, OverflowError, RecursionError) as exc:
            # A value SQLite cannot bind (lone surrogates, an int over 64 bits) that got past the
            # callers' checks: still an error of ours, never a bare Python one.
            raise errors.InvalidArgument(
                f"{self.path}: {getattr(fn, '__name__', 'query')}: {type(exc).__name__}: {exc}"
            ) from exc
        return result

    async def close(self) -> None:
        """Close the connection (checkpointing the WAL, unless the file is damaged)."""
        await self._conn.close()


def require_file(path: Path, hint: str = "") -> None:
    """StoreError unless a file exists at `path` (for verbs that must not create a database)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise errors.StoreError(
            f"{path}: no database here{hint}; start the daemon or run `executor migrate` first"
        ) from None
    except OSError as exc:
        raise errors.StoreError(f"{path}: cannot use this path: {_strerror(exc)}") from exc


def _prepare(path: Path, mode: int) -> str | None:
    """Create the file if missing; return what stops us writing it (see write_blocker). A path
    the file system refuses outright (too long, a directory, a folder missing) is a StoreError."""
    try:
        if path.is_dir():
            raise errors.StoreError(f"{path}: it is a directory, not a database file")
        _precreate(path, mode)
        return write_blocker(path)
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES on a folder on the way, ...
        raise errors.StoreError(f"{path}: cannot use this path: {_strerror(exc)}") from exc


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
        raise errors.StoreError(f"{path}: cannot create the database: {_strerror(exc)}") from exc
    os.close(fd)


def _setup(
    conn: sqlite3.Connection,
    cfg: config.DatabaseConfig,
    path: Path,
    read_only: str | None = None,
    verify: bool = False,
) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(cfg.busy_timeout_s * 1000)}")
    # Fail fast (and clearly) on a file that is not SQLite or is damaged, before changing anything.
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    except sqlite3.Error as exc:
        raise classify(path, "open", exc, read_only) from exc
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
    if verify and cfg.quick_check_on_start and tables:
        _quick_check(conn, path)
    if read_only is not None:
        if version < SCHEMA_VERSION:
            raise errors.SchemaError(
                f"{path}: schema version {version}, but this executor reads version"
                f" {SCHEMA_VERSION}, and the file cannot be migrated here ({read_only});"
                " run `executor migrate` where it can be written"
            )
        return
    if version == 0 and tables == 0:
        # Both only possible before the first table (and the page size before WAL). Incremental
        # vacuum lets purges give space back to the file system in small steps instead of one
        # VACUUM of the whole file; the page size is the file's for good (docs/PAYLOADS.md).
        conn.execute(f"PRAGMA page_size = {int(cfg.page_size)}")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    synchronous = "FULL" if cfg.durability == "full" else "NORMAL"
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA cache_size = -65536")  # 64 MiB page cache
    conn.execute("PRAGMA temp_store = MEMORY")
    for number, name, script in sql.migrations("sqlite"):
        if number <= version:
            continue
        _migrate(conn, number, name, script, path)


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(20)")]
    except sqlite3.Error as exc:
        raise classify(path, "quick_check", exc) from exc
    if problems != ["ok"]:
        raise errors.StoreCorrupt(
            f"{path}: the database file is damaged (quick_check: {' '.join(problems[0].split())}"
            + (f"; and {len(problems) - 1} more problems" if len(problems) > 1 else "")
            + "); executor writes nothing to it (see docs/RELIABILITY.md: restore a backup,"
            " or recover it)"
        )


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


def _check_shards(conn: Conn, shards: int | None, path: Path, read_only: bool = False) -> int:
    row = conn.execute(conn.q["select_shards"]).fetchone()
    if row is not None:
        stored = int(row[0])
        if shards is not None and shards != stored:
            raise errors.ConfigError(
                f"engine.shards: {shards}, but {path} was created with {stored} shards"
                " (every stored run keeps its shard; use the same count)"
            )
        return stored
    if read_only:
        raise errors.SchemaError(f"{path}: no shard count recorded, and the file is read-only")
    if shards is None:
        shards = config.EngineConfig().shards
    conn.execute(conn.q["begin_write"])
    try:
        again = conn.execute(conn.q["select_shards"]).fetchone()
        if again is None:
            conn.execute(conn.q["insert_shards"], {"shards": shards})
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(again[0]) if again is not None else shards
