"""PostgreSQL as the store: connecting, checking the database is ours, migrating it, and running
work on it, with the surface of the SQLite `Database` (store/database.py), so the engine and the
client do not know which one they hold (`database.open_database` picks by `[database] url`).

One psycopg connection per PostgresDatabase, owned by one thread, in autocommit mode so the store
functions' own BEGIN ... COMMIT (`database.transaction`) delimit transactions exactly as on SQLite.
A whole transaction function runs on that thread in one hop (`run`), as on SQLite: one writer
stream per daemon keeps concurrent transactions on the same run out, which the optimistic
checks in the store rely on (research scale-out.md 4.5). Statements are prepared on the server
at their first use: the store's statements are a fixed set of named ones.

Errors name the database by its URL without the password. A lost connection (a restarted server,
a network cut, a terminated backend) is a StoreWriteError: the engine keeps its results and
retries, and the next call connects again. A serialization failure or deadlock retries the whole
function, unless it had already committed something.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg.pq import TransactionStatus

from executor import config, configvalues, errors
from executor.store import sql
from executor.store.turnstile import Turnstile

P = ParamSpec("P")
T = TypeVar("T")

# "EXEC" in ASCII, as SQLite's application_id: meta.application marks the database as ours, and
# the same number keys the advisory lock that serializes migrations across processes.
APPLICATION_ID = 0x45584543
SCHEMA_VERSION = len(sql.migrations("postgres"))
# A deadlock or serialization failure runs the function again, this many times at most.
RETRIES = 5
_COMMIT = "COMMIT"


class PgConn:
    """A psycopg connection with the PostgreSQL statements: what store functions get as `conn`
    (the `Conn` protocol of store/conn.py)."""

    q: Mapping[str, str] = sql.queries("postgres")
    dialect = "postgres"
    # The server queues writers itself: no turnstile (store/turnstile.py is SQLite's).
    turnstile: Turnstile | None = None
    busy_timeout_s = 0.0

    def __init__(
        self,
        raw: psycopg.Connection[Any],
        compress_min_bytes: int | None = config.DatabaseConfig().compress_min_bytes,
    ) -> None:
        self.raw = raw
        self.compress_min_bytes = compress_min_bytes
        # COMMITs sent so far: a function that committed must not be run again on a retry.
        self.commits = 0

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def execute(self, query: str, parameters: Any = (), /) -> psycopg.Cursor[Any]:
        # Parameters are always passed (an empty tuple when none), so `%%` means `%` in every
        # statement, with or without parameters.
        if query == _COMMIT:
            self.commits += 1
        return self.raw.execute(query, parameters)

    def executemany(self, query: str, parameters: Iterable[Any], /) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        cursor.executemany(query, parameters)
        return cursor


def session_options(cfg: config.DatabaseConfig, lease_s: float | None) -> dict[str, str]:
    """The server settings of our sessions (research scale-out.md 4.4 step 5).

    A daemon (`lease_s` given) must never hold locks longer than its shard lease: a session
    paused inside a transaction (a stalled process) is ended by the server after half a lease,
    and a statement or a lock wait gives up after one lease, so a new owner is never blocked
    for long. A client waits for locks as long as SQLite's busy timeout would.
    """
    if lease_s is None:
        return {
            "lock_timeout": f"{round(cfg.busy_timeout_s * 1000)}ms",
            "idle_in_transaction_session_timeout": "60s",
        }
    lease_ms = max(1, round(lease_s * 1000))
    return {
        "lock_timeout": f"{lease_ms}ms",
        "statement_timeout": f"{lease_ms}ms",
        "idle_in_transaction_session_timeout": f"{max(1, lease_ms // 2)}ms",
        # The engine's batch statements (postgres/hot.sql) take arrays whose length only a
        # custom plan sees; the generic plan the server switches a prepared statement to after
        # five runs made the replay commit 2.4x slower (noop benchmark, docs/PERFORMANCE.md).
        # Still prepared: parsed and analysed once, planned per call (~0.5 ms per batch).
        "plan_cache_mode": "force_custom_plan",
    }


class PostgresDatabase:
    """An open executor database on PostgreSQL."""

    dialect = "postgres"

    def __init__(self, cfg: config.DatabaseConfig, options: Mapping[str, str]) -> None:
        self._url = cfg.url
        # What messages call the database: its URL without the password.
        self.path = configvalues.redact_url(cfg.url)
        self.shards = 0
        # Why this session cannot write (a read-only server), when opened read-only; else None.
        self.read_only: str | None = None
        self._connect_timeout = max(2, round(cfg.busy_timeout_s))
        self._options = dict(options)
        self._compress_min_bytes = cfg.compress_min_bytes
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="executor-postgres")
        self._conn: PgConn | None = None  # only touched on self._thread

    @classmethod
    async def open(
        cls,
        cfg: config.DatabaseConfig,
        *,
        shards: int | None = None,
        read_only_ok: bool = False,
        verify: bool = False,
        lease_s: float | None = None,
        must_exist: str | None = None,
    ) -> PostgresDatabase:
        """Connect to the database at cfg.url, migrating it if needed (see database.Database.open:
        the same meaning of `shards` and `read_only_ok`; `verify` has nothing to check here, the
        server checks its own pages). `lease_s`: the engine's lease, which bounds how long our
        sessions may hold locks (session_options). `must_exist`: a StoreError instead of creating
        the schema in an empty database (the text says where the URL came from)."""
        db = cls(cfg, session_options(cfg, lease_s))
        try:
            db.read_only, db.shards = await db._hop(db._open, shards, read_only_ok, must_exist)
        except BaseException:
            await db.close()
            raise
        return db

    async def run(
        self, fn: Callable[Concatenate[PgConn, P], T], *args: P.args, **kw: P.kwargs
    ) -> T:
        """Run fn(connection, *args) on the database thread and return its result."""
        return await self._hop(self._call, fn, *args, **kw)

    async def close(self) -> None:
        """Close the connection and end the database thread."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._disconnect)
        finally:
            await asyncio.to_thread(self._thread.shutdown)

    async def _hop(self, fn: Callable[P, T], /, *args: P.args, **kw: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kw))

    # -- on the database thread --

    def _call(self, fn: Callable[Concatenate[PgConn, P], T], /, *args: P.args, **kw: P.kwargs) -> T:
        started = time.monotonic()
        what = getattr(fn, "__name__", "query")
        for attempt in range(RETRIES + 1):
            conn = self._connection(started, what)
            commits = conn.commits
            try:
                result = fn(conn, *args, **kw)
            except psycopg.Error as exc:
                self._settle(conn)
                retry = isinstance(exc, pgerrors.SerializationFailure | pgerrors.DeadlockDetected)
                if retry and conn.commits == commits and attempt < RETRIES:
                    # On a thread of our own: sleeping blocks nothing but this database's queue.
                    time.sleep(random.uniform(0.001, 0.01) * 2**attempt)
                    continue
                raise self._error(exc, what, started) from exc
            except (UnicodeError, OverflowError, RecursionError) as exc:
                self._settle(conn)
                raise errors.InvalidArgument(
                    f"{self.path}: {what}: {type(exc).__name__}: {exc}"
                ) from exc
            except BaseException:
                self._settle(conn)
                raise
            if conn.in_transaction:
                # A function must end what it began: an open transaction would hold its locks
                # until the server's idle timeout ends the session.
                self._settle(conn)
                raise errors.StoreError(f"{self.path}: {what}: left a transaction open")
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _connection(self, started: float, what: str) -> PgConn:
        if self._conn is not None and not self._conn.raw.closed:
            return self._conn
        try:
            raw = psycopg.connect(
                self._url,
                autocommit=True,
                prepare_threshold=0,
                connect_timeout=self._connect_timeout,
                application_name="executor",
                options=" ".join(f"-c {k}={v}" for k, v in self._options.items()),
            )
        except psycopg.Error as exc:
            raise self._error(exc, what, started) from exc
        # Every named statement of the store stays prepared (psycopg keeps 100 by default).
        raw.prepared_max = 1024
        self._conn = PgConn(raw, self._compress_min_bytes)
        return self._conn

    def _settle(self, conn: PgConn) -> None:
        """After a failure: roll back what is open; a broken connection is dropped, and the next
        call connects again."""
        if conn.raw.broken or conn.raw.closed:
            conn.raw.close()
            self._conn = None
            return
        if conn.in_transaction:
            try:
                conn.raw.execute("ROLLBACK")
            except psycopg.Error:
                conn.raw.close()
                self._conn = None

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.raw.close()
            self._conn = None

    def _error(self, exc: psycopg.Error, what: str, started: float) -> errors.ExecutorError:
        error = classify(self.path, what, exc)
        if isinstance(error, errors.StoreError):
            error.started_at = started
        return error

    def _open(
        self, shards: int | None, read_only_ok: bool, must_exist: str | None
    ) -> tuple[str | None, int]:
        started = time.monotonic()
        # Migrations wait for each other on a lock: no lock_timeout for this first session.
        options, self._options = self._options, {}
        try:
            conn = self._connection(started, "open")
            try:
                read_only = _read_only(conn)
                if read_only is not None and not read_only_ok:
                    raise errors.StoreWriteError(
                        f"{self.path}: cannot write the database: {read_only}"
                    )
                if must_exist is not None and _version(conn, self.path) == 0:
                    raise errors.StoreError(
                        f"{self.path}: no executor database here ({must_exist}); start the"
                        " daemon or run `executor migrate` first"
                    )
                migrate(conn, self.path, read_only)
                count = _check_shards(conn, shards, self.path, read_only)
            except psycopg.Error as exc:
                self._settle(conn)
                raise self._error(exc, "open", started) from exc
        finally:
            self._options = options
        # Reconnect with the session settings on the first call.
        self._disconnect()
        return read_only, count


def classify(where: str, what: str, exc: psycopg.Error) -> errors.ExecutorError:
    """Our error for a psycopg error, naming the database (`where`, without the password)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if exc.sqlstate:
        text += f" (SQLSTATE {exc.sqlstate})"
    if isinstance(exc, pgerrors.LockNotAvailable | pgerrors.QueryCanceled):
        return errors.StoreBusy(
            f"{where}: {what}: {text}: a lock or the statement took longer than allowed"
            " (the engine's lease_s, or database.busy_timeout_s for a client)"
        )
    if isinstance(exc, pgerrors.SerializationFailure | pgerrors.DeadlockDetected):
        return errors.StoreBusy(f"{where}: {what}: {text}: still conflicting after retries")
    if isinstance(
        exc,
        psycopg.OperationalError | pgerrors.ReadOnlySqlTransaction | pgerrors.InsufficientPrivilege,
    ):
        # Connection refused or lost, server shutting down, disk full, read-only, no rights.
        return errors.StoreWriteError(f"{where}: {what}: cannot write the database: {text}")
    if isinstance(exc, psycopg.DataError) or (
        # Raised by psycopg itself (no SQLSTATE): a Python value it cannot send.
        isinstance(exc, psycopg.ProgrammingError | psycopg.InterfaceError) and not exc.sqlstate
    ):
        return errors.InvalidArgument(f"{where}: {what}: {text}")
    return errors.StoreError(f"{where}: {what}: {text}")


def _read_only(conn: PgConn) -> str | None:
    row = conn.execute(conn.q["session_read_only"]).fetchone()
    if row is None or row[0] != "on":
        return None
    return "the server only reads (a hot standby, or default_transaction_read_only is on)"


def _version(conn: PgConn, where: str) -> int:
    """The schema version of the database: 0 when empty; SchemaError when it is not ours or is
    newer than this executor."""
    probe = conn.execute(conn.q["schema_probe"]).fetchone()
    assert probe is not None  # one row, always
    found, others = probe
    if not found:
        if others:
            raise errors.SchemaError(
                f"{where}: this database (schema) holds tables that executor did not create;"
                " refusing to touch it (give executor a database or schema of its own)"
            )
        return 0
    rows = dict(conn.execute(conn.q["select_schema_meta"]).fetchall())
    application = rows.get("application")
    if application != APPLICATION_ID:
        raise errors.SchemaError(
            f"{where}: this database has a `meta` table that executor did not write"
            f" (application={application!r}); refusing to touch it"
        )
    version = int(rows.get("schema_version", 0))
    if version > SCHEMA_VERSION:
        raise errors.SchemaError(
            f"{where}: schema version {version} is newer than this executor supports"
            f" ({SCHEMA_VERSION}); upgrade executor"
        )
    return version


def migrate(conn: PgConn, where: str, read_only: str | None = None) -> None:
    """Bring the database to SCHEMA_VERSION (SchemaError if it is not ours, or newer)."""
    version = _version(conn, where)
    if version == SCHEMA_VERSION:
        return
    if read_only is not None:
        raise errors.SchemaError(
            f"{where}: schema version {version}, but this executor reads version"
            f" {SCHEMA_VERSION}, and the database cannot be migrated here ({read_only});"
            " run `executor migrate` against a server that can be written"
        )
    for number, name, script in sql.migrations("postgres"):
        if number <= version:
            continue
        # One transaction per migration, version bump included (DDL is transactional here),
        # under an advisory lock: daemons starting together migrate once, the others wait and
        # then find the work done.
        conn.execute("BEGIN")
        try:
            conn.execute(conn.q["migration_lock"], (APPLICATION_ID,))
            current = _version(conn, where)
            if current >= number:
                conn.execute("ROLLBACK")
                continue
            # Without parameters and unprepared: a whole script of statements in one message.
            conn.raw.execute(script.encode(), prepare=False)
            conn.execute(conn.q["set_schema_version"], (number,))
            conn.execute(_COMMIT)
        except psycopg.Error as exc:
            if not conn.raw.broken and conn.in_transaction:
                conn.raw.execute("ROLLBACK")
            if isinstance(exc, psycopg.OperationalError):
                raise
            raise errors.SchemaError(f"{where}: migration {name} failed: {exc}") from exc
        except BaseException:
            if not conn.raw.broken and conn.in_transaction:
                conn.raw.execute("ROLLBACK")
            raise


def _check_shards(conn: PgConn, shards: int | None, where: str, read_only: str | None) -> int:
    """The shard count, recorded by the first open (under the migration lock, so concurrent
    first opens agree); a later open with another count is refused, as on SQLite."""
    row = conn.execute(conn.q["select_shards"]).fetchone()
    if row is None:
        if read_only is not None:
            raise errors.SchemaError(f"{where}: no shard count recorded, and {read_only}")
        conn.execute("BEGIN")
        try:
            conn.execute(conn.q["migration_lock"], (APPLICATION_ID,))
            row = conn.execute(conn.q["select_shards"]).fetchone()
            if row is None:
                count = config.EngineConfig().shards if shards is None else shards
                conn.execute(conn.q["insert_shards"], {"shards": count})
                row = (count,)
            conn.execute(_COMMIT)
        except BaseException:
            if not conn.raw.broken and conn.in_transaction:
                conn.raw.execute("ROLLBACK")
            raise
    stored = int(row[0])
    if shards is not None and shards != stored:
        raise errors.ConfigError(
            f"engine.shards: {shards}, but {where} was created with {stored} shards"
            " (every stored run keeps its shard; use the same count)"
        )
    return stored
