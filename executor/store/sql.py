"""The named SQL statements of queries.sql, loaded once."""

from __future__ import annotations

import re
from importlib import resources
from types import MappingProxyType

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _load(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"queries.sql: query {name} is defined twice")
        queries[name] = body.strip()
    return queries


def _load_all() -> dict[str, str]:
    # Every *.sql file beside this module (one per area: queries.sql for the engine and client,
    # check.sql for the invariant checker, ...); a name defined twice is an error.
    merged: dict[str, str] = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, query in _load(entry.read_text()).items():
                if name in merged:
                    raise ValueError(f"{entry.name}: query {name} is defined twice")
                merged[name] = query
    return merged


_INCLUDE = re.compile(r"/\*include (\w+)\*/")


def _expand(queries: dict[str, str]) -> dict[str, str]:
    # A clause shared by several statements (e.g. the run filter) is written once and included
    # by name: /*include NAME*/ is replaced by the block NAME.
    return {name: _INCLUDE.sub(lambda m: queries[m.group(1)], q) for name, q in queries.items()}


Q = MappingProxyType(_expand(_load_all()))


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations, in order: (version, file name, script)."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = re.fullmatch(r"(\d{4})_\w+\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise ValueError(f"migration {name} is out of sequence (expected {expected:04d})")
    return found
