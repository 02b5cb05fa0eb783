"""Shared fixtures: a database file per test, engines with fast settings on a private registry,
an open client, a reader on the file for checks in SQL, and polling with a deadline.

Async tests run on anyio's pytest plugin (`@pytest.mark.anyio`); the default backend is plain
asyncio, and modules that want uvloop too override `anyio_backend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from executor import Client, DatabaseConfig, Engine, EngineConfig, Registry

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

# Invariant 2: a running run always has something that will make it progress.
STUCK_RUNS_SQL = """
SELECT r.id FROM runs AS r
WHERE r.status = 'running'
  AND NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.run_rid = r.rid)
  AND NOT EXISTS (SELECT 1 FROM timers AS m WHERE m.run_rid = r.rid)
  AND NOT EXISTS (SELECT 1 FROM replays AS p WHERE p.run_rid = r.rid)
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "executor.sqlite"


class EngineFactory(Protocol):
    def __call__(
        self,
        reg: Registry,
        *,
        path: Path | None = None,
        on_finish: Callable[[str, str], None] | None = None,
        **settings: Any,
    ) -> contextlib.AbstractAsyncContextManager[Engine]: ...


@pytest.fixture
def engine_factory(db_path: Path) -> EngineFactory:
    """`async with engine_factory(reg, concurrency=2) as engine:` a started Engine, stopped after.

    Settings default to FAST_SETTINGS; the file defaults to the test's db_path.
    """

    @contextlib.asynccontextmanager
    async def start(
        reg: Registry,
        *,
        path: Path | None = None,
        on_finish: Callable[[str, str], None] | None = None,
        **settings: Any,
    ) -> AsyncIterator[Engine]:
        cfg = EngineConfig(**{**FAST_SETTINGS, **settings})
        engine = Engine(cfg, DatabaseConfig(path=path or db_path), reg=reg, on_finish=on_finish)
        await engine.start()
        try:
            yield engine
        finally:
            await engine.stop("test finished")

    return start


@pytest.fixture
async def client(db_path: Path) -> AsyncIterator[Client]:
    async with Client(db_path, shards=SHARDS) as c:
        yield c


async def _wait_until(
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


@pytest.fixture
def wait_until() -> WaitUntil:
    """`await wait_until(lambda: ..., "what we wait for")`: poll with a deadline."""
    return _wait_until


class DbFile:
    """Plain sqlite3 connections to the test's file, for checks an API does not expose.

    Each call opens its own connection: in WAL mode a read sees one committed snapshot and
    never blocks the engine.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()

    def value(self, sql: str, *params: Any) -> Any:
        rows = self.query(sql, *params)
        return rows[0][0] if rows else None

    def execute(self, sql: str, *params: Any) -> int:
        with self.connect() as conn:
            return conn.execute(sql, params).rowcount

    def stuck_runs(self) -> list[str]:
        """Running runs with no task, no timer and no replay entry (must always be empty)."""
        return [r[0] for r in self.query(STUCK_RUNS_SQL)]

    def rid(self, run_id: str) -> int:
        return int(self.value("SELECT rid FROM runs WHERE id = ?", run_id))


@pytest.fixture
def dbfile(db_path: Path) -> DbFile:
    return DbFile(db_path)
