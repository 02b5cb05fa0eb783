"""The payload store around its sizes (inline, hashed in pieces, compressed) on both databases;
the reference counts when only a result changes (migrations sqlite/0011, postgres/0002), on new
and on migrated databases; the cache of resolved payloads, bounded in bytes."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor import Client, codec
from executor.store import journal, payloads, sql
from executor.store.conn import Conn
from executor.store.database import transaction
from executor.store.repository import commit_replays, create_runs
from executor.vocabulary import NewRun, NewStep, Outcome, OutcomeKind, ReplayOutput, StepKind

if TYPE_CHECKING:
    from conftest import DbFile

# Around every size where the store changes how it keeps a payload.
EDGES = sorted(
    {
        edge + d
        for edge in (
            payloads.INLINE_MAX_BYTES,
            codec._HASH_PIECE,
            2 * codec._HASH_PIECE,
            payloads.COMPRESS_MIN_BYTES,
            payloads.SHARE_MIN_BYTES,
        )
        for d in (-2, -1, 0, 1, 2)
    }
)
_ids = itertools.count()
PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126, exclude_characters='"\\')


@pytest.fixture
def database(database_url: str) -> str:
    return database_url


def _open(database: Path | str) -> None:
    async def go() -> None:
        async with Client(database, shards=2):
            pass

    asyncio.run(go())


def _q(conn: Conn, statement: str) -> str:
    return statement if conn.dialect == "sqlite" else statement.replace("?", "%s")


def _text(size: int, seed: str, compressible: bool) -> str:
    """A string whose JSON is exactly `size` bytes (no character JSON escapes)."""
    n = size - 2
    if compressible:
        return (seed * (n // len(seed) + 1))[:n]
    return random.Random(seed).randbytes(n // 2 + 1).hex()[:n]


def _start(conn: Conn, args: bytes) -> int:
    """A run started with `args` whose first step is called with `args` too; its rid."""
    run_id = f"run-{next(_ids)}"
    now = time.time()
    create_runs(conn, [NewRun(run_id, "wf", None, 0, args, None)], now)
    rid = int(conn.execute(_q(conn, "SELECT rid FROM runs WHERE id = ?"), (run_id,)).fetchone()[0])
    step = NewStep(0, StepKind.STEP, "call", "fp", args, None)
    commit_replays(conn, [ReplayOutput(rid, 0, 0, [step])], now)
    return rid


def _record(conn: Conn, rid: int, result: bytes) -> None:
    """The step's result recorded (the fence every writer of a result takes), and the run's."""
    now = time.time()
    done = Outcome(OutcomeKind.DONE, rid, 0, None, result=result)
    assert transaction(journal.record_one)(conn, done, now) is not None

    @transaction
    def finish(conn: Conn) -> None:
        stored = payloads.put(conn, result, now)
        conn.execute(_q(conn, "UPDATE runs SET result = ? WHERE rid = ?"), (stored, rid))

    finish(conn)


def _row(conn: Conn, table: str, rid: int) -> tuple[Any, Any]:
    key = "run_rid" if table == "steps" else "rid"
    query = f"SELECT args, result FROM {table} WHERE {key} = ?"
    args, result = conn.execute(_q(conn, query), (rid,)).fetchone()
    return args, result


def _payload_problems(conn: Conn) -> list[Any]:
    """What `executor check` reports of the payload store: references to missing payloads and
    reference counts that do not match the rows (the tasks these tests leave are no concern)."""
    return [
        tuple(row)
        for name in ("check_missing_payloads", "check_payload_refcounts")
        for row in conn.execute(conn.q[name]).fetchall()
    ]


@pytest.fixture
def opened(database: str) -> str:
    _open(database)
    return database


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.sampled_from(EDGES) | st.integers(3, 2 * payloads.COMPRESS_MIN_BYTES),
    seed=st.text(PRINTABLE, min_size=1, max_size=30),
    compressible=st.booleans(),
    cold=st.booleans(),
)
def test_any_size_round_trips_stored_once_and_counted(
    opened: str, dbfile: DbFile, size: int, seed: str, compressible: bool, cold: bool
) -> None:
    value = codec.encode(_text(size, seed, compressible))
    assert len(value) == size
    args = b"[" + value + b",7]"
    with dbfile.connect() as conn:
        rid = _start(conn, args)
        _record(conn, rid, value)
        if cold:  # read back from the rows, not from the cache of resolved payloads
            payloads._cache.clear()
        for table in ("runs", "steps"):
            stored_args, stored_result = _row(conn, table, rid)
            assert payloads.resolve(conn, stored_args) == args
            assert payloads.resolve(conn, stored_result) == value
            assert payloads.is_ref(stored_result) == (size > payloads.INLINE_MAX_BYTES)
        assert _payload_problems(conn) == []
        if size <= payloads.INLINE_MAX_BYTES:
            return
        # The arguments by content: one row for the value in the run's and the step's arguments
        # (apart from the small 7), its digest of the whole value however it was hashed.
        # Results under SHARE_MIN_BYTES: a row of their own each; larger, by content too.
        digest = hashlib.blake2b(value, digest_size=16).digest()
        select = "SELECT id, codec, data, refs FROM payloads WHERE "
        shared = conn.execute(_q(conn, select + "digest = ?"), (digest,)).fetchone()
        results = [int(bytes(_row(conn, t, rid)[1])[1:]) for t in ("runs", "steps")]
        rows = [shared] + [
            conn.execute(_q(conn, select + "id = ?"), (i,)).fetchone() for i in results
        ]
    if size >= payloads.SHARE_MIN_BYTES:
        assert results == [shared[0]] * 2 and shared[3] >= 4
    else:
        assert shared[0] not in results and results[0] != results[1] and shared[3] >= 2
        assert [r[3] for r in rows[1:]] == [1, 1]
    packed = zlib.compress(value, payloads.ZLIB_LEVEL)
    squeezed = len(packed) <= len(value) * 0.875
    for _, how, data, _ in rows:
        assert how == ("zlib" if size >= payloads.COMPRESS_MIN_BYTES and squeezed else "json")
        assert bytes(data) == (packed if how == "zlib" else value)


def _payload_versions(conn: Conn, digest: bytes) -> Any:
    """What changes each time the payload row is written: PostgreSQL's row version (xmin); on
    SQLite the count kept by a temporary trigger of this connection (_watch_updates)."""
    if conn.dialect == "postgres":
        query = "SELECT xmin::text FROM payloads WHERE digest = %s"
        return conn.execute(query, (digest,)).fetchone()[0]
    query = (
        "SELECT count(*) FROM temp.payload_writes"
        " WHERE id = (SELECT id FROM main.payloads WHERE digest = ?)"
    )
    return conn.execute(query, (digest,)).fetchone()[0]


def _watch_updates(conn: Conn) -> None:
    if conn.dialect == "sqlite":
        conn.execute("CREATE TEMP TABLE payload_writes (id INTEGER)")
        conn.execute(
            "CREATE TEMP TRIGGER payload_writes AFTER UPDATE ON main.payloads"
            " BEGIN INSERT INTO payload_writes VALUES (NEW.id); END"
        )


def test_recording_a_result_leaves_the_arguments_payload_alone(opened: str, dbfile: DbFile) -> None:
    """Only the column that changed moves its references: the arguments' payload row is not
    written again when the step's result (or the run's) is recorded."""
    prompt = codec.encode("an argument stored apart " * 100)
    result = codec.encode("a result stored apart " * 100)
    args = b"[" + prompt + b",1]"
    digest = hashlib.blake2b(prompt, digest_size=16).digest()
    with dbfile.connect() as conn:
        _watch_updates(conn)
        rid = _start(conn, args)
        before = _payload_versions(conn, digest)
        _record(conn, rid, result)
        assert _payload_versions(conn, digest) == before
        refs = _q(conn, "SELECT refs FROM payloads WHERE digest = ?")
        assert conn.execute(refs, (digest,)).fetchone()[0] == 2  # the run's and the step's
        # Changing the arguments still moves their references (an operator's edit, say).
        conn.execute(_q(conn, "UPDATE steps SET args = ? WHERE run_rid = ?"), (b"[1]", rid))
        assert conn.execute(refs, (digest,)).fetchone()[0] == 1
        assert _payload_problems(conn) == []


@pytest.fixture
def older(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[str]:
    """The test's database migrated only up to the version before the update triggers changed
    (sqlite 0010, postgres 0001); the patch is undone when the test opens it again."""
    dialect = "sqlite" if not database_url.startswith("postgres") else "postgres"
    upto = {"sqlite": 10, "postgres": 1}[dialect]
    full = sql.migrations
    monkeypatch.setattr(sql, "migrations", lambda d: full(d)[:upto] if d == dialect else full(d))
    yield database_url
    monkeypatch.undo()


@pytest.fixture
def pg_url(pg_empty_url: str) -> str:
    return pg_empty_url  # `older` migrates it itself


def test_a_populated_database_migrates_to_the_new_triggers(
    older: str, dbfile: DbFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs whose payloads were counted by the old triggers keep their counts through the
    migration, and results recorded after it count right."""
    _open(older)
    upto = len(sql.migrations("sqlite" if dbfile.postgres is False else "postgres"))
    prompts = [codec.encode(f"prompt {i} " * 300) for i in range(3)]
    with dbfile.connect() as conn:
        rids = [_start(conn, b"[" + p + b",1]") for p in prompts]
        _record(conn, rids[0], prompts[0])  # recorded under the old triggers
        assert int(conn.execute(conn.q["schema_version"]).fetchone()[0]) == upto
    monkeypatch.undo()
    _open(older)  # migrates
    with dbfile.connect() as conn:
        assert int(conn.execute(conn.q["schema_version"]).fetchone()[0]) == upto + 1
        for rid, prompt in zip(rids[1:], prompts[1:], strict=True):
            _record(conn, rid, prompt)
        counts = conn.execute("SELECT size, refs FROM payloads ORDER BY id").fetchall()
        assert _payload_problems(conn) == []
    # Each prompt: once by content for the run's and the step's arguments (2 references), and
    # the step's and the run's results (all three recorded: one before the migration) a row each.
    assert sorted(tuple(c) for c in counts) == sorted(
        [(len(p), 2) for p in prompts] + [(len(p), 1) for p in prompts for _ in range(2)]
    )
