"""Bad input is refused clearly and leaves nothing half-done: payloads that are not JSON, database
files that are damaged, foreign or from a newer executor, and workflows that do not exist or get
the wrong number of arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import sqlite3
import string
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor import Client, DatabaseConfig, Engine, Registry, check, errors, step, workflow
from executor.store.database import APPLICATION_ID, SCHEMA_VERSION, Database
from tests.support.daemon import cli

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory

pytestmark = pytest.mark.anyio

REG = Registry()


@step(registry=REG, name="echo_step")
async def echo_step(value: Any) -> Any:
    return value


@workflow(registry=REG, name="round_trip")
async def round_trip(ctx: Any, *args: Any) -> list[Any]:
    """Sends every argument through a step and back: both the run's and a step's payloads."""
    return list(await echo_step(list(args)))


@workflow(registry=REG, name="two_args")
async def two_args(ctx: Any, a: int, b: int) -> int:
    return a + b


@pytest.fixture
async def engine(engine_factory: EngineFactory) -> AsyncIterator[Engine]:
    async with engine_factory(REG) as eng:
        yield eng


# --- payloads ------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),  # no lone surrogates: hypothesis leaves them out of text() by default
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (True is not 1, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(args=st.lists(JSON, max_size=4))
async def test_any_json_arguments_come_back_exactly(
    engine: Engine, client: Client, args: list[Any]
) -> None:
    run = await client.start(round_trip, *args)
    result = await client.result(run, timeout=15)
    assert same(result, args), (result, args)


class Reducible:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


# bytes, Decimal and datetime are storable since typed payloads (tests/test_typed_payloads.py).
POISON = st.sampled_from(
    [
        {1, 2},
        frozenset({"a"}),
        object(),
        Reducible(),
        float("nan"),
        float("inf"),
        float("-inf"),
        {1: "int key"},
        {None: "None key"},
        {(1, 2): "tuple key"},
        {True: "bool key"},
        2**64,
        -(2**63) - 1,
        10**100,
        complex(1, 2),
        "\ud800",  # a lone surrogate is not UTF-8
    ]
)

KEYS = st.text(string.ascii_letters, max_size=5)


def buried(poison: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A poison value somewhere inside otherwise valid JSON."""
    return st.recursive(
        poison,
        lambda inner: (
            st.tuples(st.lists(JSON, max_size=2), inner, st.lists(JSON, max_size=2)).map(
                lambda t: [*t[0], t[1], *t[2]]
            )
            | st.tuples(st.dictionaries(KEYS, JSON, max_size=2), KEYS, inner).map(
                lambda t: {**t[0], t[1]: t[2]}
            )
        ),
        max_leaves=4,
    )


def _snapshot(dbfile: DbFile) -> list[tuple[Any, ...]]:
    return dbfile.query(
        "SELECT (SELECT count(*) FROM runs), (SELECT coalesce(max(rid), 0) FROM runs),"
        " (SELECT count(*) FROM replays)"
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    good=st.lists(st.lists(JSON, max_size=3), max_size=4),
    bad=buried(POISON),
    where=st.integers(min_value=0, max_value=4),
)
async def test_anything_else_is_refused_and_nothing_is_written(
    client: Client, dbfile: DbFile, good: list[list[Any]], bad: Any, where: int
) -> None:
    before = _snapshot(dbfile)
    with pytest.raises(errors.PayloadError, match=r"^round_trip arguments"):
        await client.start(round_trip, bad)
    # One refused item refuses the whole batch: start_many is one transaction, checked first.
    batch = list(good)
    batch.insert(min(where, len(batch)), [bad])
    with pytest.raises(errors.PayloadError, match=r"round_trip arguments \(run #\d+\)"):
        await client.start_many(round_trip, batch)
    assert _snapshot(dbfile) == before


# --- database files ------------------------------------------------------------------------------


async def _real_database(path: Path) -> bytes:
    """A database with some runs in it, checkpointed into the main file; its bytes."""
    async with Client(path, shards=2) as c:
        await c.start_many("wf", [["x" * 300, i] for i in range(600)])
    return await asyncio.to_thread(path.read_bytes)


def _sql(db: Path, *statements: str) -> list[tuple[Any, ...]]:
    """Run statements on their own connection, closed (and so checkpointed) before returning."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        rows: list[tuple[Any, ...]] = []
        for statement in statements:
            rows = conn.execute(statement).fetchall()
        return rows


def _run_cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return cli(config, *args, timeout_s=60)


def _config(tmp: Path, db: Path) -> Path:
    config = tmp / f"{db.stem}.toml"
    config.write_text(f'[database]\npath = "{db}"\n\n[engine]\nshards = 2\n')
    return config


def _damaged(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) // 3]
    if how == "header_page_overwritten":
        return data[:100] + b"\xa5" * 3000 + data[3100:]
    if how == "not_sqlite":
        return b"this is a text file, not a database\n" * 200
    if how == "empty_header":
        return b"\0" * len(data)
    raise ValueError(how)


@pytest.mark.parametrize(
    "how", ["truncated", "header_page_overwritten", "not_sqlite", "empty_header"]
)
async def test_a_damaged_or_foreign_file_is_refused_naming_it(tmp_path: Path, how: str) -> None:
    data = await _real_database(tmp_path / "good.sqlite")
    db = tmp_path / f"{how}.sqlite"
    db.write_bytes(_damaged(data, how))
    before = db.read_bytes()
    with pytest.raises(errors.StoreError, match=re.escape(str(db))):
        await Database.open(DatabaseConfig(path=db))
    with pytest.raises(errors.StoreError, match=re.escape(str(db))):
        await asyncio.to_thread(check.check, db)
    config = _config(tmp_path, db)
    for verb in ("migrate", "run"):
        done = await asyncio.to_thread(_run_cli, verb, config=config)
        assert done.returncode == 3, (verb, done.stderr)
        assert str(db) in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert db.read_bytes() == before  # refused, never "repaired" or migrated


async def test_damage_deep_inside_is_found_by_check(tmp_path: Path) -> None:
    db = tmp_path / "deep.sqlite"
    data = await _real_database(db)
    # Overwrite the root page of the runs table, header and all: the file's header and schema
    # (which may span pages of their own, wherever they fall) are intact, so the file opens,
    # but check reads every page.
    page = int.from_bytes(data[16:18], "big")  # the header's page size (1 means 65536)
    page = 65536 if page == 1 else page
    ((root,),) = _sql(db, "SELECT rootpage FROM sqlite_schema WHERE name = 'runs'")
    at = (root - 1) * page
    db.write_bytes(data[:at] + b"\x5a" * page + data[at + page :])
    report = await asyncio.to_thread(check.check, db)
    assert [p.kind for p in report.problems][:1] == [check.CORRUPT_FILE], report.summary()
    done = await asyncio.to_thread(_run_cli, "check", "--json", config=_config(tmp_path, db))
    assert done.returncode == 1 and "corrupt_file" in done.stdout


async def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "newer.sqlite"
    await _real_database(db)
    _sql(db, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = db.read_bytes()
    with pytest.raises(
        errors.SchemaError, match=re.escape(f"{db}: schema version {SCHEMA_VERSION + 1}")
    ):
        await Database.open(DatabaseConfig(path=db))
    for verb in ("migrate", "run"):
        done = await asyncio.to_thread(_run_cli, verb, config=_config(tmp_path, db))
        assert done.returncode == 3 and "newer" in done.stderr, done.stderr
    assert db.read_bytes() == before


async def test_a_failing_migration_leaves_the_file_at_its_version(tmp_path: Path) -> None:
    # Ours (application_id) at version 0, with a table in the way of migration 0001: it fails
    # half-way through its statements, and its transaction takes everything back.
    db = tmp_path / "conflict.sqlite"
    _sql(
        db, f"PRAGMA application_id = {APPLICATION_ID}", "CREATE TABLE tasks (conflicting INTEGER)"
    )
    with pytest.raises(
        errors.SchemaError, match=re.escape(str(db)) + r": migration 0001_\w+\.sql failed"
    ):
        await Database.open(DatabaseConfig(path=db))
    done = await asyncio.to_thread(_run_cli, "migrate", config=_config(tmp_path, db))
    assert done.returncode == 3 and "migration" in done.stderr, done.stderr
    assert _sql(db, "PRAGMA user_version") == [(0,)]
    tables = {r[0] for r in _sql(db, "SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert tables == {"tasks"}  # runs and steps, created before the conflict, rolled back


# --- workflows that do not exist or get the wrong arguments --------------------------------------


async def test_unknown_workflows_and_wrong_arity_are_refused_at_start(
    db_path: Path, dbfile: DbFile
) -> None:
    async with Client(db_path, reg=REG, strict=True, shards=2) as c:
        with pytest.raises(errors.RegistryError, match="unknown workflow 'no_such_flow'"):
            await c.start("no_such_flow", 1)
        with pytest.raises(errors.RegistryError, match=r"two_args takes 2 arguments.*got 3"):
            await c.start("two_args", 1, 2, 3)
        with pytest.raises(errors.RegistryError, match=r"takes 2 arguments.*got 1"):
            await c.start_many(two_args, [[1, 2], [1]])
    assert dbfile.value("SELECT count(*) FROM runs") == 0


async def test_the_engine_fails_or_parks_runs_it_cannot_run_saying_why(
    engine: Engine, db_path: Path
) -> None:
    # A client that knows no workflows lets anything through; the engine refuses it.
    async with Client(db_path, reg=Registry()) as blind:
        ghost = await blind.start("no_such_flow", 1)
        wrong = await blind.start("two_args", 1, 2, 3)
        # An unknown name is a deploy mistake: the run is parked (resumable), not failed.
        with pytest.raises(errors.RunParked, match="workflow 'no_such_flow' is not registered"):
            await blind.result(ghost, timeout=15)
        with pytest.raises(errors.WorkflowFailed) as arity:
            await blind.result(wrong, timeout=15)
        assert arity.value.error["type"] in ("TypeError", "RegistryError")
        assert "argument" in str(arity.value.error["message"])
    report = check.check(db_path)
    assert report.ok, report.summary()


async def test_a_step_call_refused_for_its_arguments_leaves_no_gap_in_the_journal(
    engine_factory: EngineFactory, client: Client, db_path: Path, dbfile: DbFile
) -> None:
    reg = Registry()

    @step(registry=reg, name="echo_step")
    async def echo_again(value: Any) -> Any:
        return value

    @workflow(registry=reg, name="catches")
    async def catches(ctx: Any) -> str:
        first = await echo_again("a")
        try:
            await echo_again({1, 2})  # refused in the workflow, before any position is taken
        except errors.PayloadError as exc:
            refused = str(exc)
        return f"{first} {await echo_again('b')} ({refused})"

    async with engine_factory(reg, instance_cache_size=0):  # every result: a full replay
        run = await client.start(catches)
        result = await client.result(run, timeout=15)
    assert result.startswith("a b (echo_step arguments[0]: value of type set")
    assert dbfile.query("SELECT pos FROM steps ORDER BY pos") == [(0,), (1,)]
    report = check.check(db_path)
    assert report.ok, report.summary()
