"""Golden files: databases written by earlier code, finished by today's.

tests/golden/ holds small databases with runs stopped mid-flight (held steps, a pending retry, a
durable sleep, a caught failure, a run parked by changed code, finished runs, a run never claimed),
written by make_golden.py at the commits their manifests name: schema3 by the code at the start
of issue 10, schema1 and schema2 by the last commits whose newest migration was 0001 and 0002.
Today's engine must migrate each file, replay every journal without parking, and finish every
run with the result the golden workflows give. A change in the codec, the argument fingerprint,
step positions or a migration that breaks old rows fails here, before it parks users' runs.

The schema itself is pinned in tests/golden/schema.sql: it changes only with a new migration.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from executor import Client, DatabaseConfig, WorkflowFailed
from tests.golden import flows
from tests.support.engine import make_engine

pytestmark = pytest.mark.anyio

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
SCHEMA_FILE = GOLDEN / "schema.sql"
FILES = sorted(GOLDEN.glob("schema*.sqlite"))
DEADLINE_S = 30.0


def _manifest(db: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(db.with_suffix(".json").read_text())
    return manifest


def schema_dump(path: Path) -> str:
    """The schema as SQLite stores it (tables, indexes, in name order) and its version."""
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"
        ).fetchall()
    finally:
        conn.close()
    body = "\n\n".join(f"-- {kind} {name}\n{sql.strip()};" for kind, name, sql in rows)
    return f"-- PRAGMA user_version = {version}\n\n{body}\n"


@pytest.fixture(autouse=True)
def _quiet_flows() -> None:
    """Nothing held, nothing failing on purpose, attempts counted from zero."""
    flows.HOLD.clear()
    flows.REACHED.clear()
    flows.FAILING.clear()
    flows.ATTEMPTS.clear()
    flows.VARIANT = "A"


async def finish_golden_runs(src: Path, tmp_path: Path) -> Path:
    """Copy a golden file, run today's engine on it, check every run's end; return the copy."""
    manifest = _manifest(src)
    db_path = tmp_path / src.name
    shutil.copyfile(src, db_path)
    ids: dict[str, str] = manifest["runs"]
    assert set(ids) == set(flows.RUNS), "the golden file and flows.RUNS disagree on the runs"
    db = DatabaseConfig(path=db_path)
    async with (
        # Strict: under the default policy ("log") a changed argument fingerprint only logs and
        # keeps the recorded result, so a codec or fingerprint change would pass unnoticed here.
        make_engine(flows.registry, db_path, shards=manifest["shards"], replay_args="strict"),
        Client(db, reg=flows.registry) as client,
    ):
        # The parked run stays parked, with the error that names the position and both codes.
        parked = await client.status(ids["drift"])
        assert parked.status == "parked", parked
        assert parked.error is not None
        assert "nondeterminism at position 1" in parked.error["message"], parked.error
        for label, (_, _, end, expected) in flows.RUNS.items():
            if label == "drift":
                continue
            if end == "failed":
                with pytest.raises(WorkflowFailed) as failed:
                    await client.result(ids[label], timeout=DEADLINE_S)
                assert failed.value.error["type"] == expected, label
            else:
                assert await client.result(ids[label], timeout=DEADLINE_S) == expected, label
        # Fixed code deployed (VARIANT is back to "A"): resume replays it to the end.
        assert await client.resume(ids["drift"])
        assert await client.result(ids["drift"], timeout=DEADLINE_S) == flows.RUNS["drift"][3]
    # Steps recorded before the upgrade came from the journal, not from running them again;
    # the held ones (cancelled at the drain) and the failing one ran once more.
    assert flows.ATTEMPTS == {
        "seq-2": 2,  # the sequential run's held step, and the fresh run's last
        "seq-3": 1,
        "fan-1": 1,
        "fan-sum": 1,
        "first-slow": 1,
        "sleep-after": 1,
        "retry": 1,
        "caught-after": 1,
        "seq-0": 1,  # the "fresh" run, never claimed before
        "seq-1": 1,
    }, flows.ATTEMPTS
    return db_path


@pytest.mark.parametrize("src", FILES, ids=lambda p: p.stem)
async def test_golden_file_migrates_replays_and_finishes(src: Path, tmp_path: Path) -> None:
    """Files from earlier schema versions migrate (with runs in flight) and finish like the rest."""
    db_path = await finish_golden_runs(src, tmp_path)
    # Migrated or not, the file has exactly the schema of a new one, and keeps its page size
    # (4 KiB then; new files get database.page_size).
    assert schema_dump(db_path) == SCHEMA_FILE.read_text()
    assert _page_size(db_path) == _page_size(src) == 4096


def _page_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        size: int = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return size


def test_the_golden_files_cover_every_earlier_schema_version() -> None:
    versions = {_manifest(f)["schema_version"] for f in FILES}
    current = int(SCHEMA_FILE.read_text().split("=")[1].split()[0])
    assert set(range(1, 4)) <= versions, "schema 1, 2 (old releases) and 3 (issue 10's start)"
    assert max(versions) <= current


async def test_schema_changes_only_with_a_migration(tmp_path: Path) -> None:
    """A fresh file's schema equals tests/golden/schema.sql.

    After adding a migration, rewrite the file with
    `EXECUTOR_WRITE_GOLDEN_SCHEMA=1 python -m pytest tests/integration/test_golden.py`.
    """
    path = tmp_path / "fresh.sqlite"
    async with Client(path, shards=2):
        pass
    actual = schema_dump(path)
    if os.environ.get("EXECUTOR_WRITE_GOLDEN_SCHEMA") == "1":
        SCHEMA_FILE.write_text(actual)
    expected = SCHEMA_FILE.read_text()
    if actual != expected:
        old = expected.splitlines()[0]
        new = actual.splitlines()[0]
        assert old != new, (
            f"the schema changed without a new migration ({new}): every change to the schema"
            " is a numbered file in executor/store/sqlite/migrations/"
        )
        pytest.fail(f"new migration ({old} -> {new}): rewrite {SCHEMA_FILE} (see this docstring)")
