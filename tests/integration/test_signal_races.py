"""Signals racing their waits' creation and timeouts, at the store level, over every ordering
hypothesis picks.

SQLite serializes writers, so a race between a signal (Client.signal in another process), the
replay commit that creates a wait, and the timer that fires its timeout is an ordering of their
transactions; on PostgreSQL each of them locks the run's row first, so they run in some order
too. Whatever the ordering: exactly one of message and timeout wins each wait, a message is never
lost nor consumed twice, and a topic's messages go to its waits in order. On both databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor import codec, config, vocabulary
from executor.check import check
from executor.store import repository as repo
from executor.store import signals
from executor.store.conn import Conn, SqliteConn
from executor.store.database import Database
from executor.store.pgdatabase import PgConn
from tests.support import postgres

Op = tuple[str, int]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.integers(0, 1)),  # 1: with a timeout that is due at once
        st.tuples(st.just("signal"), st.integers(0, 2)),  # the key: 0 = none, else a dedup key
        st.tuples(st.just("fire"), st.just(0)),
    ),
    max_size=14,
)


@contextlib.contextmanager
def _new_db(dialect: str, request: pytest.FixtureRequest) -> Iterator[tuple[Conn, str]]:
    """A fresh database with one shard, and a connection to it; and what `check` takes."""
    if dialect == "postgres":
        cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
        name = cluster.create_database(template=postgres.TEMPLATE)
        url = cluster.url(name)
        try:
            with psycopg.connect(url, autocommit=True) as raw:
                raw.execute("INSERT INTO meta (key, value) VALUES ('shards', 1)")
                yield PgConn(raw), url
        finally:
            cluster.drop_database(name)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "races.sqlite"

        async def create() -> None:
            db = await Database.open(config.DatabaseConfig(path=path), shards=1)
            await db.close()

        asyncio.run(create())
        conn = sqlite3.connect(path, isolation_level=None, factory=SqliteConn)
        try:
            yield conn, str(path)
        finally:
            conn.close()


def _q(conn: Conn, sql: str) -> str:
    return sql.replace("?", "%s") if conn.dialect == "postgres" else sql


def _wait_step(pos: int, timed: bool) -> vocabulary.NewStep:
    args = codec.encode([["t"]])
    return vocabulary.NewStep(
        pos, vocabulary.StepKind.WAIT, "t", codec.fingerprint(args), args, 0.0 if timed else None
    )


def _check_state(conn: Conn, rid: int, sent: int) -> None:
    messages = conn.execute(
        _q(conn, "SELECT id, payload, consumed_pos FROM mailbox WHERE run_rid = ? ORDER BY id"),
        (rid,),
    ).fetchall()
    assert len(messages) == sent  # nothing lost, nothing duplicated
    taken = {pos: orjson.loads(payload) for _, payload, pos in messages if pos is not None}
    consumed = [pos for _, _, pos in messages if pos is not None]
    assert consumed == sorted(consumed), "a topic's messages go to its waits in order"
    assert len(set(consumed)) == len(consumed), "a wait took two messages"
    waits = conn.execute(
        _q(conn, "SELECT pos, status, result, error FROM steps WHERE run_rid = ? ORDER BY pos"),
        (rid,),
    ).fetchall()
    for pos, status, result, error in waits:
        if status == "succeeded":
            assert orjson.loads(result) == ["t", taken[pos]]
        elif status == "failed":
            assert orjson.loads(error)["type"] == "WaitTimeout"
            assert pos not in taken, "a message consumed by a wait that timed out"
        else:
            assert pos not in taken
    pending = [pos for pos, status, _, _ in waits if status == "pending"]
    unread = [m for m in messages if m[2] is None]
    assert not (pending and unread), "an unread message while a wait waits for it"


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=OPS)
def test_signal_wait_and_timeout_in_any_order(
    dialect: str, request: pytest.FixtureRequest, ops: list[Op]
) -> None:
    with _new_db(dialect, request) as (conn, where):
        run = vocabulary.NewRun("run-1", "wf", None, 0, b"[]", None)
        repo.create_runs(conn, [run], 1.0)
        rid = conn.execute("SELECT rid FROM runs").fetchone()[0]
        pos = sent = 0
        keys: set[int] = set()
        for kind, arg in ops:
            if kind == "wait":
                out = vocabulary.ReplayOutput(rid, 0, 0, [_wait_step(pos, bool(arg))])
                repo.commit_replays(conn, [out], 2.0)
                pos += 1
            elif kind == "signal":
                key = None if arg == 0 else f"k{arg}"
                assert signals.send_signal(conn, "run-1", "t", orjson.dumps(sent), key, 3.0)
                if key is None or arg not in keys:
                    sent += 1
                    keys.add(arg)
            else:
                repo.fire_timers(conn, 10.0, 100)
            _check_state(conn, rid, sent)
        report = check(where)
        assert report.ok, report.summary()
