"""Opening the database read-only, for processes that only look: `executor serve`, the metrics
endpoint, `executor check` and `executor replay-check`. They work while no daemon runs, and never
create, migrate or write the database: a SQLite file is opened with mode=ro, a PostgreSQL session
with default_transaction_read_only (no statement of it can write)."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from executor import config, configvalues, errors
from executor.store import database
from executor.store.conn import Conn, SqliteConn
from executor.store.database import APPLICATION_ID, SCHEMA_VERSION

if TYPE_CHECKING:
    from executor.store.pgdatabase import PgConn


def database_config(
    database: config.DatabaseConfig | Path | str, busy_timeout_s: float | None = None
) -> config.DatabaseConfig:
    """`database` as a DatabaseConfig: a PostgreSQL URL ("postgresql://...") or a file's path
    (a DatabaseConfig as it is); `busy_timeout_s`, when given, instead of the default."""
    if isinstance(database, config.DatabaseConfig):
        return database
    if isinstance(database, str) and database.startswith(("postgresql://", "postgres://")):
        try:
            cfg = config.DatabaseConfig(url=str(configvalues.DatabaseUrl().parse(database)))
        except configvalues.Invalid as exc:
            raise errors.InvalidArgument(f"database: expected {exc.expected}") from None
    else:
        cfg = config.DatabaseConfig(path=Path(database))
    if busy_timeout_s is None:
        return cfg
    return dataclasses.replace(cfg, busy_timeout_s=busy_timeout_s)


def open_readonly(path: Path, busy_timeout_s: float = 5.0) -> SqliteConn:
    """A read-only connection to an executor database file of this version; StoreError
    otherwise."""
    if not path.is_file():
        raise errors.StoreError(f"{path}: no database file here")
    try:
        conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro",
            uri=True,
            timeout=busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
            factory=SqliteConn,
        )
    except sqlite3.Error as exc:
        raise errors.StoreError(f"{path}: cannot open the database read-only: {exc}") from exc
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise errors.SchemaError(f"{path}: not a valid executor database ({exc})") from exc
    if app_id != APPLICATION_ID or version != SCHEMA_VERSION:
        conn.close()
        if app_id != APPLICATION_ID:
            raise errors.SchemaError(
                f"{path}: not an executor database (application_id={app_id:#x})"
            )
        raise errors.SchemaError(_version_mismatch(str(path), version, SCHEMA_VERSION))
    return conn


def _version_mismatch(where: str, version: int, expected: int) -> str:
    return f"{where}: schema version {version}, but this executor reads version {expected}" + (
        "; upgrade executor" if version > expected else "; run `executor migrate`"
    )


@contextlib.contextmanager
def reading(cfg: config.DatabaseConfig, what: str = "read") -> Iterator[Conn]:
    """A read-only connection to the executor database `cfg` names (the PostgreSQL database at
    cfg.url, else the file at cfg.path), closed when the block ends. SchemaError for a database
    that is not executor's or not of this version; a driver error inside the block becomes a
    StoreError naming the database and `what` was being done."""
    if not cfg.url:
        conn = open_readonly(cfg.path, cfg.busy_timeout_s)
        try:
            yield conn
        except sqlite3.Error as exc:
            raise database.classify(cfg.path, what, exc, "opened read-only") from exc
        finally:
            conn.close()
        return
    # psycopg is an optional dependency: imported for a PostgreSQL URL only.
    import psycopg

    from executor.store import pgdatabase

    pg = _open_postgres(cfg)
    try:
        yield pg
    except psycopg.Error as exc:
        raise pgdatabase.classify(cfg.where, what, exc) from exc
    finally:
        pg.raw.close()


def _open_postgres(cfg: config.DatabaseConfig) -> PgConn:
    import psycopg

    from executor.store import pgdatabase

    options = {
        # Every transaction of the session is read-only: the server refuses any write.
        "default_transaction_read_only": "on",
        # A read waits for a lock as long as SQLite's busy timeout would.
        "lock_timeout": f"{round(cfg.busy_timeout_s * 1000)}ms",
        "idle_in_transaction_session_timeout": "60s",
    }
    try:
        raw = psycopg.connect(
            cfg.url,
            autocommit=True,
            connect_timeout=max(2, round(cfg.busy_timeout_s)),
            application_name="executor (read-only)",
            options=" ".join(f"-c {k}={v}" for k, v in options.items()),
        )
    except psycopg.Error as exc:
        raise pgdatabase.classify(cfg.where, "open read-only", exc) from exc
    conn = pgdatabase.PgConn(raw)
    try:
        _check_postgres(conn, cfg.where)
    except BaseException:
        raw.close()
        raise
    return conn


def _check_postgres(conn: PgConn, where: str) -> None:
    import psycopg

    from executor.store import pgdatabase

    try:
        probe = conn.execute(conn.q["schema_probe"]).fetchone()
        found = bool(probe and probe[0])
        rows = dict(conn.execute(conn.q["select_schema_meta"]).fetchall()) if found else {}
    except psycopg.Error as exc:
        raise pgdatabase.classify(where, "open read-only", exc) from exc
    if not found or rows.get("application") != pgdatabase.APPLICATION_ID:
        raise errors.SchemaError(
            f"{where}: not an executor database"
            + ("" if not found else f" (meta application={rows.get('application')!r})")
        )
    version = int(rows.get("schema_version", 0))
    if version != pgdatabase.SCHEMA_VERSION:
        raise errors.SchemaError(_version_mismatch(where, version, pgdatabase.SCHEMA_VERSION))
