"""Every PostgreSQL statement of executor/store/postgres/*.sql is accepted by a real server.

The server parses, resolves and plans each one with its parameters untyped (PREPARE), against the
schema of the PostgreSQL migrations: a misspelt column, a SQLite-only function, or a parameter
whose type PostgreSQL cannot infer (a bare `%s IS NULL`) fails here, by the statement's name,
instead of in whichever test first runs it. The statements' meaning is tested by the store, CLI
and engine tests parametrized over both databases.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest

from executor.store import sql

POSTGRES = sql.queries("postgres")
# What PREPARE takes; other statements are utility ones (BEGIN, VACUUM, CREATE TEMP TABLE, ...)
# or clauses included into others (run_filter).
_PREPARABLE = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES")
_COMMENT = re.compile(r"--[^\n]*")
# Statements whose parameters PostgreSQL cannot type from the text alone, but psycopg sends typed
# (a Python int or float carries its type; only str and None go untyped): their types, in order.
_TYPED_BY_PSYCOPG: dict[str, tuple[str, ...]] = {
    "lease_candidates": ("double precision", "double precision"),  # now - lease_s
}
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s|%%")


def _first_word(statement: str) -> str:
    words = _COMMENT.sub(" ", statement).split()
    return words[0].upper() if words else ""


def _numbered(statement: str) -> str:
    """psycopg's placeholders as the server's: %s -> $n in order, %(name)s -> one $n per name."""
    names: dict[str, int] = {}
    count = 0

    def number(m: re.Match[str]) -> str:
        nonlocal count
        if m.group(0) == "%%":
            return "%"
        if m.group(1) is None:
            count += 1
            return f"${count}"
        if m.group(1) not in names:
            count += 1
            names[m.group(1)] = count
        return f"${names[m.group(1)]}"

    return _PLACEHOLDER.sub(number, statement)


def test_numbering_matches_psycopg() -> None:
    assert _numbered("a = %s AND b = %s") == "a = $1 AND b = $2"
    numbered = _numbered("a = %(x)s OR %(y)s = %(x)s AND c LIKE '%%'")
    assert numbered == "a = $1 OR $2 = $1 AND c LIKE '%'"


@pytest.fixture
def migrated(pg_empty_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(pg_empty_url, autocommit=True) as conn:
        for _, _, script in sql.migrations("postgres"):
            conn.execute(script.encode(), prepare=False)
        yield conn


def test_every_statement_prepares(migrated: psycopg.Connection[tuple[object, ...]]) -> None:
    conn = migrated
    # The session temp tables some statements work on (retry_in, purge_in, ...).
    for statement in POSTGRES.values():
        if _first_word(statement) == "CREATE" and "TEMP" in statement.upper().split("TABLE")[0]:
            conn.execute(statement.encode(), prepare=False)
    failed: dict[str, str] = {}
    prepared = 0
    for n, (name, statement) in enumerate(sorted(POSTGRES.items())):
        if _first_word(statement) not in _PREPARABLE:
            continue
        try:
            types = _TYPED_BY_PSYCOPG.get(name)
            declared = f"({', '.join(types)})" if types else ""
            conn.execute(
                f"PREPARE s{n}{declared} AS {_numbered(statement)}".encode(), prepare=False
            )
            prepared += 1
        except psycopg.Error as exc:
            failed[name] = " ".join(str(exc).split())
    assert not failed, "\n".join(f"{name}: {why}" for name, why in failed.items())
    assert prepared > 0
