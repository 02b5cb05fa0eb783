"""The storage settings of [database]: the page size of a new file, and payload compression.

A new SQLite file gets `database.page_size`; an existing file keeps the page size it was created
with whatever the setting says. Compression applies to payloads written from then on: payloads
written under any setting read back under any other (docs/PAYLOADS.md).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from executor import DatabaseConfig, codec
from executor.store import payloads
from executor.store.database import Database, open_database
from executor.store.repository import create_runs
from executor.vocabulary import NewRun
from tests.support.engine import database_config

if TYPE_CHECKING:
    from conftest import DbFile

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """`dbfile` reads the database the test writes: SQLite's file or PostgreSQL's URL."""
    return database_url


def _pragmas(path: Path) -> tuple[int, str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return (
            conn.execute("PRAGMA page_size").fetchone()[0],
            conn.execute("PRAGMA journal_mode").fetchone()[0],
        )


async def test_a_new_file_gets_the_page_size_and_an_existing_file_keeps_its_own(
    tmp_path: Path,
) -> None:
    for size in (4096, 8192, 65536):
        path = tmp_path / f"p{size}.sqlite"
        db = await Database.open(DatabaseConfig(path=path, page_size=size), shards=2)
        await db.close()
        assert _pragmas(path) == (size, "wal")
        # Opened again with another setting: the file's own page size, and still usable.
        db = await Database.open(DatabaseConfig(path=path, page_size=16384), shards=2)
        try:
            await db.run(create_runs, [NewRun("r", "wf", None, 0, b"[]", None)], time.time())
        finally:
            await db.close()
        assert _pragmas(path) == (size, "wal")
    default = tmp_path / "default.sqlite"
    await (await Database.open(DatabaseConfig(path=default), shards=2)).close()
    assert _pragmas(default) == (DatabaseConfig().page_size, "wal") == (8192, "wal")


def _prose(n: int, seed: int) -> str:
    words = ("the", "model", "answers", "with", "care", "and", "a", f"note{seed}")
    return " ".join(words[(i * 7 + seed) % len(words)] for i in range(n // 4))[:n]


def _stored(dbfile: DbFile) -> dict[int, tuple[str, int, int]]:
    """size of the payload -> (codec, size, stored bytes), for each payload row."""
    rows = dbfile.query("SELECT size, codec, length(data) FROM payloads")
    return {size: (c, size, stored) for size, c, stored in rows}


async def test_compression_follows_the_setting_and_every_payload_reads_back(
    database_url: str, dbfile: DbFile
) -> None:
    settings: list[dict[str, Any]] = [
        {"payload_compression": False},  # never, even a large one
        {"payload_compress_min_bytes": 1024},  # from 1 KiB: a 2 KB prompt too
        {},  # the default: from 4 KiB
    ]
    values = []
    now = time.time()
    for i, fields in enumerate(settings):
        small, large = _prose(2000, i), _prose(6000, i)
        values += [small, large]
        db = await open_database(database_config(database_url, **fields), shards=2)
        try:
            runs = [
                NewRun(f"run-{i}-{j}", "wf", None, 0, codec.encode([v]), None)
                for j, v in enumerate((small, large))
            ]
            await db.run(create_runs, runs, now)
        finally:
            await db.close()
        stored = _stored(dbfile)
        small_row, large_row = stored[len(codec.encode(small))], stored[len(codec.encode(large))]
        if i == 0:
            assert small_row[0] == large_row[0] == "json"
        elif i == 1:
            assert small_row[0] == large_row[0] == "zlib"
            assert small_row[2] < small_row[1] * payloads._SAVE_FRACTION
        else:
            assert (small_row[0], large_row[0]) == ("json", "zlib")
    # Read back with compression off, from a cold cache: whatever each was written with.
    payloads._cache.clear()
    db = await open_database(database_config(database_url, payload_compression=False), shards=2)
    try:
        for n, v in enumerate(values):
            blob = dbfile.value("SELECT args FROM runs WHERE id = ?", f"run-{n // 2}-{n % 2}")
            assert payloads.is_ref(bytes(blob))
            assert await db.run(payloads.resolve, bytes(blob)) == codec.encode([v])
    finally:
        await db.close()
