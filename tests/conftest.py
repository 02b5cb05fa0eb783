"""Fixtures for every tier: a database file per test, engines with fast settings on a private
registry, an open client, a reader on the file for checks in SQL, and polling with a deadline.
The helpers behind them live in tests/support/.

PostgreSQL: `pg_cluster` starts one throwaway cluster per session, only if some test asks for it;
`pg_url` is a fresh database of it per test, `pg_empty_url` one without executor's schema, and
`database_url` runs a test once on SQLite (a file path) and once on PostgreSQL (a URL). A missing
PostgreSQL fails those tests (tests/support/postgres.py), it never skips them.

Async tests run on anyio's pytest plugin (`@pytest.mark.anyio`); the default backend is plain
asyncio, and modules that want uvloop too override `anyio_backend`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from executor import Client, Engine, Registry
from tests.support import postgres
from tests.support.engine import SHARDS, DbFile, EngineFactory, WaitUntil, start_engine, wait_until


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "executor.sqlite"


@pytest.fixture
def database(db_path: Path) -> Path | str:
    """The database of engine_factory, client and dbfile: the test's SQLite file. A module whose
    tests run on both databases overrides it with `database_url` (a path, or a PostgreSQL URL)."""
    return db_path


@pytest.fixture
def engine_factory(database: Path | str) -> EngineFactory:
    """`async with engine_factory(reg, concurrency=2) as engine:` a started Engine, stopped after.

    Settings default to FAST_SETTINGS; the database defaults to the test's (`database`);
    keywords that are not EngineConfig fields go to Engine() (limits=, concurrency_keys=, ...).
    """
    default = database

    def start(
        reg: Registry,
        *,
        path: Path | str | None = None,
        on_finish: Callable[[str, str], None] | None = None,
        database: dict[str, Any] | None = None,
        **settings: Any,
    ) -> contextlib.AbstractAsyncContextManager[Engine]:
        return start_engine(
            reg, path or default, on_finish=on_finish, database=database, **settings
        )

    return start


@pytest.fixture
async def client(database: Path | str) -> AsyncIterator[Client]:
    async with Client(database, shards=SHARDS) as c:
        yield c


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> WaitUntil:
    """`await wait_until(lambda: ..., "what we wait for")`: poll with a deadline."""
    return wait_until


@pytest.fixture
def dbfile(database: Path | str) -> DbFile:
    return DbFile(database)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.Cluster]:
    with postgres.running_cluster() as cluster:
        postgres.prepare_template(cluster)
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: postgres.Cluster) -> Iterator[str]:
    """A fresh PostgreSQL database with executor's schema (a copy of the migrated template)."""
    name = pg_cluster.create_database(template=postgres.TEMPLATE)
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)


@pytest.fixture
def pg_empty_url(pg_cluster: postgres.Cluster) -> Iterator[str]:
    """A fresh PostgreSQL database with nothing in it (for tests of opening and migrating)."""
    name = pg_cluster.create_database()
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, db_path: Path) -> str:
    """The test's database, once per dialect: the SQLite file's path, or a PostgreSQL URL.
    Both are what Client(...) and `[database]` take; `.startswith("postgres")` tells them apart."""
    if request.param == "sqlite":
        return str(db_path)
    url: str = request.getfixturevalue("pg_url")
    return url
