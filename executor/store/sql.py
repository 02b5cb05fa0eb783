"""The named SQL statements and the numbered migrations of each dialect, loaded once.

executor/store/<dialect>/*.sql hold the statements: a block starts with a line "-- name: NAME"
and runs to the next one; a name defined twice in one dialect is an error. Both dialects define
the same names with the same parameters (SQLite `?`/`:name`, PostgreSQL `%s`/`%(name)s`), so a
store function runs unchanged on either (tests/unit/test_sql_dialects.py checks the names).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType

DIALECTS = ("sqlite", "postgres")

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"/\*include (\w+)\*/")


def _folder(dialect: str) -> Traversable:
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r} (expected one of {DIALECTS})")
    return resources.files(__package__).joinpath(dialect)


def _load(text: str, where: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"{where}: query {name} is defined twice")
        queries[name] = body.strip()
    return queries


def _load_all(dialect: str) -> dict[str, str]:
    # Every *.sql file of the dialect (one per area: queries.sql for the engine and client,
    # check.sql for the invariant checker, ...); a name defined twice is an error.
    merged: dict[str, str] = {}
    for entry in sorted(_folder(dialect).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            where = f"{dialect}/{entry.name}"
            for name, query in _load(entry.read_text(), where).items():
                if name in merged:
                    raise ValueError(f"{where}: query {name} is defined twice")
                merged[name] = query
    return merged


def _expand(queries: dict[str, str]) -> dict[str, str]:
    # A clause shared by several statements (e.g. the run filter) is written once and included
    # by name: /*include NAME*/ is replaced by the block NAME.
    return {name: _INCLUDE.sub(lambda m: queries[m.group(1)], q) for name, q in queries.items()}


@functools.cache
def queries(dialect: str) -> Mapping[str, str]:
    """The named statements of `dialect` ("sqlite" or "postgres"), includes expanded."""
    return MappingProxyType(_expand(_load_all(dialect)))


@functools.cache
def migrations(dialect: str) -> tuple[tuple[int, str, str], ...]:
    """The numbered migrations of `dialect`, in order: (version, file name, script)."""
    found = []
    for entry in _folder(dialect).joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_\w+\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise ValueError(
                f"{dialect} migration {name} is out of sequence (expected {expected:04d})"
            )
    return tuple(found)
