"""Opening the file read-only, for processes that only look: `executor serve` and the metrics
endpoint. They work while no daemon runs, and never create, migrate or write the file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from executor import errors
from executor.store.conn import SqliteConn
from executor.store.database import APPLICATION_ID, SCHEMA_VERSION


def open_readonly(path: Path, busy_timeout_s: float = 5.0) -> SqliteConn:
    """A read-only connection to an executor database of this version; StoreError otherwise."""
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
        raise errors.SchemaError(
            f"{path}: schema version {version}, but this executor reads version {SCHEMA_VERSION}"
            + ("; upgrade executor" if version > SCHEMA_VERSION else "; run `executor migrate`")
        )
    return conn
