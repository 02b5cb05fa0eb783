"""The connection every store function takes: one protocol over SQLite and PostgreSQL.

A store function reads its SQL as `conn.q["name"]`, the named statements of the connection's own
dialect (executor/store/sqlite/*.sql or executor/store/postgres/*.sql), so the same function runs
on either database. Only what both drivers offer is here: no `lastrowid` (use RETURNING), no
`executescript`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from executor import config
from executor.store import sql
from executor.store.turnstile import Turnstile

# Until the opener sets it from the file's configuration (database.payload_compression).
_COMPRESS_MIN_BYTES = config.DatabaseConfig().compress_min_bytes


class Cursor(Protocol):
    """The part of a DB-API cursor both drivers share."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection of either dialect, with its named SQL."""

    @property
    def q(self) -> Mapping[str, str]:
        """This dialect's named SQL statements."""
        ...

    @property
    def dialect(self) -> str:
        """ "sqlite" or "postgres"."""
        ...

    @property
    def in_transaction(self) -> bool: ...

    @property
    def compress_min_bytes(self) -> int | None:
        """Stored payloads of at least this many encoded bytes are compressed; None: never
        (database.payload_compression, set by the opener; store/payloads.py)."""
        ...

    @property
    def turnstile(self) -> Turnstile | None:
        """SQLite: the file's write turnstile in this process (store/turnstile.py), which
        database.transaction takes around each write; None where there is none to take."""
        ...

    @property
    def busy_timeout_s(self) -> float:
        """How long a write waits for the write lock in all (database.busy_timeout_s)."""
        ...

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...


class SqliteConn(sqlite3.Connection):
    """A sqlite3 connection that carries the SQLite statements: open every executor file with
    `sqlite3.connect(..., factory=SqliteConn)`."""

    q: Mapping[str, str] = sql.queries("sqlite")
    dialect = "sqlite"
    compress_min_bytes: int | None = _COMPRESS_MIN_BYTES
    # Set by the opener for a file it may write (database.Database.open).
    turnstile: Turnstile | None = None
    busy_timeout_s: float = config.DatabaseConfig().busy_timeout_s
