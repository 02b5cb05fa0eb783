"""PostgresDatabase: opening, migrating once, refusing what is not ours, and mapping errors.

Real PostgreSQL (the session's throwaway cluster, tests/support/postgres.py), one fresh
database per test.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest

from executor import Client, DatabaseConfig, errors
from executor.store import database, pgdatabase
from executor.store.pgdatabase import PgConn, PostgresDatabase

pytestmark = pytest.mark.anyio


def cfg(url: str, **fields: Any) -> DatabaseConfig:
    return DatabaseConfig(url=url, **fields)


def admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def meta(url: str) -> dict[str, int]:
    with admin(url) as conn:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def backend_pid(conn: PgConn) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return int(row[0])


async def test_an_empty_database_is_migrated_and_marked_as_ours(pg_empty_url: str) -> None:
    db = await PostgresDatabase.open(cfg(pg_empty_url), shards=3)
    try:
        assert db.shards == 3
        assert db.read_only is None
        assert db.dialect == "postgres"
    finally:
        await db.close()
    rows = meta(pg_empty_url)
    assert rows["application"] == pgdatabase.APPLICATION_ID
    assert rows["schema_version"] == pgdatabase.SCHEMA_VERSION
    assert rows["shards"] == 3
    assert rows["epoch"] == 0
    # Opened again: nothing to migrate, the shard count is the recorded one.
    db = await PostgresDatabase.open(cfg(pg_empty_url))
    assert db.shards == 3
    await db.close()


async def test_concurrent_first_opens_migrate_once(pg_empty_url: str) -> None:
    # Separate connections on separate threads, started together: the advisory lock makes one
    # migrate while the others wait, then find the schema in place.
    opened = await asyncio.gather(
        *(PostgresDatabase.open(cfg(pg_empty_url), shards=4) for _ in range(4))
    )
    try:
        assert [db.shards for db in opened] == [4, 4, 4, 4]
    finally:
        for db in opened:
            await db.close()
    assert meta(pg_empty_url)["schema_version"] == pgdatabase.SCHEMA_VERSION


def _open_in_process(url: str, results: Any) -> None:
    async def go() -> int:
        db = await PostgresDatabase.open(cfg(url), shards=5)
        await db.close()
        return db.shards

    results.put(asyncio.run(go()))


async def test_concurrent_first_opens_from_two_processes(pg_empty_url: str) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_open_in_process, args=(pg_empty_url, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        await asyncio.to_thread(proc.join, 60)
        assert proc.exitcode == 0
    assert sorted(results.get(timeout=5) for _ in procs) == [5, 5]
    assert meta(pg_empty_url)["schema_version"] == pgdatabase.SCHEMA_VERSION


async def test_a_database_with_foreign_tables_is_refused(pg_empty_url: str) -> None:
    with admin(pg_empty_url) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    with pytest.raises(errors.SchemaError, match="did not create"):
        await PostgresDatabase.open(cfg(pg_empty_url))
    with admin(pg_empty_url) as conn:  # untouched
        assert conn.execute("SELECT to_regclass('runs')").fetchone() == (None,)


async def test_a_foreign_meta_table_is_refused(pg_empty_url: str) -> None:
    with admin(pg_empty_url) as conn:
        conn.execute("CREATE TABLE meta (key text PRIMARY KEY, value text)")
        conn.execute("INSERT INTO meta VALUES ('application', 'someone else')")
    with pytest.raises(errors.SchemaError, match="did not write"):
        await PostgresDatabase.open(cfg(pg_empty_url))


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    db = await PostgresDatabase.open(cfg(pg_url))
    await db.close()
    with admin(pg_url) as conn:
        conn.execute("UPDATE meta SET value = 999 WHERE key = 'schema_version'")
    with pytest.raises(errors.SchemaError, match="schema version 999 is newer"):
        await PostgresDatabase.open(cfg(pg_url))


async def test_another_shard_count_is_refused(pg_url: str) -> None:
    db = await PostgresDatabase.open(cfg(pg_url), shards=2)
    await db.close()
    with pytest.raises(errors.ConfigError, match="created with 2 shards"):
        await PostgresDatabase.open(cfg(pg_url), shards=3)


async def test_a_killed_backend_is_a_write_error_and_the_next_call_reconnects(
    pg_url: str,
) -> None:
    secret_url = pg_url.replace("postgres@", "postgres:hunter2@")  # trust auth ignores it
    db = await PostgresDatabase.open(cfg(secret_url))
    try:
        pid = await db.run(backend_pid)
        with admin(pg_url) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(errors.StoreWriteError) as caught:
            await db.run(backend_pid)
        message = str(caught.value)
        assert "backend_pid" in message and "postgres:***@" in message
        assert "hunter2" not in message
        assert await db.run(backend_pid) != pid
    finally:
        await db.close()


async def test_bad_values_are_invalid_arguments(pg_url: str) -> None:
    db = await PostgresDatabase.open(cfg(pg_url))
    try:
        with pytest.raises(errors.InvalidArgument, match="out of range"):
            await db.run(lambda c: c.execute("SELECT %s::bigint", (2**70,)).fetchone())
        with pytest.raises(errors.InvalidArgument, match="NUL"):
            await db.run(lambda c: c.execute("SELECT %s::text", ("a\0b",)).fetchone())
        # The connection is still good.
        assert await db.run(lambda c: c.execute("SELECT 1").fetchone()) == (1,)
    finally:
        await db.close()


async def test_a_function_that_leaves_a_transaction_open_is_an_error(pg_url: str) -> None:
    db = await PostgresDatabase.open(cfg(pg_url))
    try:
        with pytest.raises(errors.StoreError, match="left a transaction open"):
            await db.run(lambda c: c.execute("BEGIN"))
        assert await db.run(lambda c: c.in_transaction) is False
    finally:
        await db.close()


async def test_a_deadlock_runs_the_loser_again(pg_url: str) -> None:
    one = await PostgresDatabase.open(cfg(pg_url))
    two = await PostgresDatabase.open(cfg(pg_url))
    with admin(pg_url) as conn:
        conn.execute("CREATE TABLE pair (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO pair VALUES (1, 0), (2, 0)")
    both_hold_one = threading.Barrier(2, timeout=10)
    attempts: list[int] = []

    def cross(conn: PgConn, first: int, second: int) -> None:
        attempts.append(first)
        conn.execute("BEGIN")
        conn.execute("UPDATE pair SET n = n + 1 WHERE id = %s", (first,))
        if attempts.count(first) == 1:
            both_hold_one.wait()
        conn.execute("UPDATE pair SET n = n + 1 WHERE id = %s", (second,))
        conn.execute("COMMIT")

    try:
        await asyncio.gather(one.run(cross, 1, 2), two.run(cross, 2, 1))
    finally:
        await one.close()
        await two.close()
    assert len(attempts) == 3  # one of the two ran again after the deadlock
    with admin(pg_url) as conn:
        assert conn.execute("SELECT n FROM pair ORDER BY id").fetchall() == [(2,), (2,)]


async def test_a_daemon_session_gives_up_on_statements_longer_than_its_lease(
    pg_url: str,
) -> None:
    db = await PostgresDatabase.open(cfg(pg_url), lease_s=0.2)
    try:
        with pytest.raises(errors.StoreBusy, match="lease_s"):
            await db.run(lambda c: c.execute("SELECT pg_sleep(2)").fetchone())
        assert await db.run(lambda c: c.execute("SELECT 1").fetchone()) == (1,)
        settings = await db.run(
            lambda c: c.execute(
                "SELECT current_setting('idle_in_transaction_session_timeout'),"
                " current_setting('lock_timeout')"
            ).fetchone()
        )
        assert settings == ("100ms", "200ms")
    finally:
        await db.close()


async def test_a_read_only_server_opens_read_only_only_when_allowed(pg_url: str) -> None:
    db = await PostgresDatabase.open(cfg(pg_url))
    await db.close()
    with admin(pg_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        assert name is not None
        conn.execute(f'ALTER DATABASE "{name[0]}" SET default_transaction_read_only = on')
    with pytest.raises(errors.StoreWriteError, match="only reads"):
        await PostgresDatabase.open(cfg(pg_url))
    db = await PostgresDatabase.open(cfg(pg_url), read_only_ok=True)
    try:
        assert db.read_only is not None
        with pytest.raises(errors.StoreWriteError, match="read-only"):
            await db.run(lambda c: c.execute("UPDATE meta SET value = 1 WHERE key = 'epoch'"))
    finally:
        await db.close()


async def test_open_database_picks_the_store_by_url(pg_url: str, tmp_path: Any) -> None:
    pg = await database.open_database(DatabaseConfig(url=pg_url), shards=2)
    lite = await database.open_database(DatabaseConfig(path=tmp_path / "x.sqlite"), shards=2)
    try:
        assert isinstance(pg, PostgresDatabase)
        assert isinstance(lite, database.Database)
        assert pg.dialect == "postgres" and lite.dialect == "sqlite"
    finally:
        await pg.close()
        await lite.close()


async def test_an_unreachable_server_is_a_write_error_naming_it(tmp_path: Any) -> None:
    url = f"postgresql://someone:pw@/nowhere?host={tmp_path}"
    with pytest.raises(errors.StoreWriteError, match=r"someone:\*\*\*@/nowhere") as caught:
        await PostgresDatabase.open(cfg(url))
    assert "pw@" not in str(caught.value)


async def test_a_client_takes_a_postgres_url(pg_url: str) -> None:
    async with Client(pg_url, shards=2) as client:
        assert client.shards == 2
        assert client.path == pg_url
        assert await client.schema_version() == pgdatabase.SCHEMA_VERSION
    with pytest.raises(errors.InvalidArgument, match="a PostgreSQL URL"):
        Client("postgresql://h:port/db")


async def test_a_client_reads_the_url_from_the_environment(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXECUTOR_DATABASE_URL", pg_url)
    monkeypatch.setenv("EXECUTOR_ENGINE_SHARDS", "3")
    async with Client() as client:
        assert client.db.dialect == "postgres"
        assert client.shards == 3
    assert not (tmp_path / "executor.sqlite").exists()


async def test_a_client_that_must_not_create_refuses_an_empty_database(
    pg_empty_url: str,
) -> None:
    with pytest.raises(errors.StoreError, match=r"no executor database here \(database.url from"):
        async with Client(pg_empty_url, must_exist="database.url from EXECUTOR_DATABASE_URL"):
            pass
    with admin(pg_empty_url) as conn:  # nothing was created
        assert conn.execute("SELECT to_regclass('meta')").fetchone() == (None,)
    async with Client(pg_empty_url, shards=2) as client:  # creating is the default
        assert client.shards == 2
    async with Client(pg_empty_url, must_exist=True) as client:
        assert client.shards == 2
