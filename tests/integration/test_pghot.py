"""The PostgreSQL hot path (store/pghot.py): the array literals it sends its batches as, and
the record's numbering when another writer records a step of the same run meanwhile.

Both need a real server (the `pg_url` fixture); the rest of the hot path runs in every engine
test parametrized over both databases.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor.store import journal, pghot
from executor.store import repository as repo
from executor.store.pgdatabase import PgConn
from executor.vocabulary import (
    NewRun,
    NewStep,
    Outcome,
    OutcomeKind,
    Recorded,
    ReplayOutput,
    StepKind,
)

# PostgreSQL text cannot hold NUL, nor UTF-8 a lone surrogate (Python str can); anything else goes.
TEXTS = st.lists(
    st.none() | st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"])),
    max_size=8,
)
BLOBS = st.lists(st.none() | st.binary(max_size=64), max_size=8)
INTS = st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), max_size=8)


@pytest.fixture
def conn(pg_url: str) -> Iterator[PgConn]:
    with psycopg.connect(pg_url, autocommit=True) as raw:
        yield PgConn(raw)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=TEXTS, blobs=BLOBS, ints=INTS)
def test_array_literals_round_trip(
    conn: PgConn, texts: list[str | None], blobs: list[bytes | None], ints: list[int | None]
) -> None:
    row = conn.execute(
        "SELECT %s::text[], %s::bytea[], %s::bigint[]",
        (pghot._texts(texts), pghot._blobs(blobs), pghot._ints(ints)),
    ).fetchone()
    assert row == (texts, blobs, ints)


def test_a_record_numbers_after_a_signal_that_committed_while_it_waited(conn: PgConn) -> None:
    """A batch record whose snapshot predates another writer's result on the same run waits for
    that writer's lock on the run, then numbers after it: no seq is given twice."""
    now = time.time()
    repo.create_runs(conn, [NewRun("r", "wf", None, 0, b"[]", None)], now)
    ((rid, seq, generation),) = repo.pending_replays(conn, 10)
    steps = [NewStep(pos, StepKind.STEP, "s", "fp", b"[]", None) for pos in (0, 1)]
    repo.commit_replays(conn, [ReplayOutput(rid, 0, seq, steps, generation=generation)], now)
    claimed = repo.claim(conn, 1, 0, 7, [(0, 10)], now)
    assert claimed is not None and [c.pos for c in claimed] == [0, 1]
    other = PgConn(psycopg.connect(conn.raw.info.dsn, autocommit=True))
    try:
        # Another writer records position 1 (as a signal or an operator would) and holds its
        # transaction open: it has the run's row locked.
        other.execute("BEGIN")
        other.execute("DELETE FROM tasks WHERE run_rid = %s AND pos = 1", (rid,))
        first = journal.record_one(other, Outcome(OutcomeKind.DONE, rid, 1, result=b"1"), now)
        assert first is not None and first.seq == 1
        result: list[Recorded] = []
        done = Outcome(OutcomeKind.DONE, rid, 0, 7, result=b"0", shard=0)
        recorder = threading.Thread(
            target=lambda: result.append(repo.record(conn, [done], [], now)), name="recorder"
        )
        recorder.start()
        recorder.join(0.3)
        assert recorder.is_alive(), "the record waits for the other writer's lock on the run"
        other.execute("COMMIT")
        recorder.join(10)
    finally:
        other.raw.close()
    (recorded,) = result
    assert [d.seq for d in recorded.deliveries] == [2]
    seqs = conn.execute("SELECT pos, seq FROM steps WHERE run_rid = %s ORDER BY pos", (rid,))
    assert seqs.fetchall() == [(0, 2), (1, 1)]
    assert conn.execute("SELECT last_seq FROM runs").fetchone() == (2,)
    assert conn.execute("SELECT seq FROM replays").fetchone() == (2,)
