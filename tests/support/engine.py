"""The one way tests build an in-process engine, wait for something, and read the database file.

conftest.py turns these into fixtures (`engine_factory`, `wait_until`, `dbfile`); tests that need
an engine outside a fixture (a second engine, a hypothesis example, an engine they start and stop
themselves) call `make_engine` or `start_engine` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from executor import DatabaseConfig, Engine, EngineConfig, Registry, check
from executor.store.conn import Conn, SqliteConn

SHARDS = 2
# Fast enough that a test waits milliseconds for the engine, slow enough for 2 busy cores.
FAST_SETTINGS: dict[str, Any] = {
    "shards": SHARDS,
    "concurrency": 8,
    "poll_interval_s": 0.01,
    "heartbeat_interval_s": 0.05,
    "lease_s": 0.5,
    "flush_interval_s": 0.001,
    "drain_timeout_s": 10.0,
}
DEADLINE_S = 15.0  # generous: a deadline only matters when something is broken

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(EngineConfig))


def database_config(database: Path | str, **fields: Any) -> DatabaseConfig:
    """The test's database as a DatabaseConfig: a PostgreSQL URL, else a file's path."""
    if isinstance(database, str) and database.startswith(("postgresql://", "postgres://")):
        return DatabaseConfig(url=database, **fields)
    return DatabaseConfig(path=Path(database), **fields)


def is_postgres(database: Path | str) -> bool:
    return isinstance(database, str) and database.startswith(("postgresql://", "postgres://"))


def database_toml(database: Path | str) -> str:
    """The [database] table of a config file for the test's database."""
    return f'[database]\n{"url" if is_postgres(database) else "path"} = "{database}"\n'


def make_engine(
    reg: Registry,
    path: Path | str,
    *,
    on_finish: Callable[[str, str], None] | None = None,
    database: dict[str, Any] | None = None,
    **settings: Any,
) -> Engine:
    """An Engine on `path` (a file, or a PostgreSQL URL), not started (`async with` starts and
    stops it).

    `settings`: EngineConfig fields over FAST_SETTINGS; any other keyword goes to Engine() itself
    (limits=, concurrency_keys=, shared=, ...). `database`: DatabaseConfig fields besides the path.
    """
    cfg = {k: v for k, v in settings.items() if k in _CONFIG_FIELDS}
    extra = {k: v for k, v in settings.items() if k not in _CONFIG_FIELDS}
    return Engine(
        EngineConfig(**{**FAST_SETTINGS, **cfg}),
        database_config(path, **(database or {})),
        reg=reg,
        on_finish=on_finish,
        **extra,
    )


@contextlib.asynccontextmanager
async def start_engine(reg: Registry, path: Path | str, **kwargs: Any) -> AsyncIterator[Engine]:
    """make_engine(...), started, and stopped when the block ends."""
    engine = make_engine(reg, path, **kwargs)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop("test finished")


class EngineFactory(Protocol):
    def __call__(
        self,
        reg: Registry,
        *,
        path: Path | str | None = None,
        on_finish: Callable[[str, str], None] | None = None,
        database: dict[str, Any] | None = None,
        **settings: Any,
    ) -> contextlib.AbstractAsyncContextManager[Engine]: ...


async def wait_until(
    condition: Callable[[], Any],
    what: str,
    timeout_s: float = DEADLINE_S,
    interval_s: float = 0.005,
) -> Any:
    """Poll `condition` (sync or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


WaitUntil = Callable[..., Awaitable[Any]]


# SQLite's named placeholders (`::` is a PostgreSQL cast, not one).
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _args(params: tuple[Any, ...]) -> Any:
    return params[0] if len(params) == 1 and isinstance(params[0], dict) else params


class DbFile:
    """Plain connections to the test's database, for checks an API does not expose: the SQLite
    file (`path`), or the PostgreSQL database at a URL. Tests write SQLite's `?` placeholders;
    on PostgreSQL they become psycopg's (a literal `%` is escaped), so one statement serves both.

    Each call opens its own connection (autocommit): a read sees one committed snapshot and never
    blocks the engine.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.postgres = is_postgres(path)

    @contextlib.contextmanager
    def connect(self) -> Iterator[Conn]:
        if self.postgres:
            import psycopg

            from executor.store.pgdatabase import PgConn

            with psycopg.connect(str(self.path), autocommit=True) as raw:
                yield PgConn(raw)
            return
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, factory=SqliteConn)
        try:
            yield conn
        finally:
            conn.close()

    def _sql(self, sql: str) -> str:
        if not self.postgres:
            return sql
        return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%").replace("?", "%s"))

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of `sql`; `params` are the `?` values, or one dict of `:name` values."""
        with self.connect() as conn:
            return [tuple(row) for row in conn.execute(self._sql(sql), _args(params)).fetchall()]

    def value(self, sql: str, *params: Any) -> Any:
        rows = self.query(sql, *params)
        return rows[0][0] if rows else None

    def execute(self, sql: str, *params: Any) -> int:
        with self.connect() as conn:
            return conn.execute(self._sql(sql), _args(params)).rowcount

    def stuck_runs(self) -> list[str]:
        """Running runs nothing will move on (invariant 2: must always be empty), as
        `executor check` finds them."""
        report = check.check(self.path)
        return [p.run_id for p in report.problems if p.kind == check.STUCK_RUN]

    def rid(self, run_id: str) -> int:
        return int(self.value("SELECT rid FROM runs WHERE id = ?", run_id))


@contextlib.contextmanager
def write_lock(db: Path) -> Iterator[sqlite3.Connection]:
    """Another connection takes the write lock and holds it until the block ends."""
    conn = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
