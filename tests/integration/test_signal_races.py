"""Signals racing their waits' creation and timeouts, at the store level, over every ordering
hypothesis picks.

SQLite serializes writers, so a race between a signal (Client.signal in another process), the
replay commit that creates a wait, and the timer that fires its timeout is an ordering of their
transactions. Whatever the ordering: exactly one of message and timeout wins each wait, a message
is never lost nor consumed twice, and a topic's messages go to its waits in order.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor import codec, config, vocabulary
from executor.check import check
from executor.store import repository as repo
from executor.store import signals
from executor.store.conn import SqliteConn
from executor.store.database import Database

Op = tuple[str, int]
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.integers(0, 1)),  # 1: with a timeout that is due at once
        st.tuples(st.just("signal"), st.integers(0, 2)),  # the key: 0 = none, else a dedup key
        st.tuples(st.just("fire"), st.just(0)),
    ),
    max_size=14,
)


def _new_db(path: Path) -> sqlite3.Connection:
    async def create() -> None:
        db = await Database.open(config.DatabaseConfig(path=path), shards=1)
        await db.close()

    asyncio.run(create())
    return sqlite3.connect(path, isolation_level=None, factory=SqliteConn)


def _wait_step(pos: int, timed: bool) -> vocabulary.NewStep:
    args = codec.encode([["t"]])
    return vocabulary.NewStep(
        pos, vocabulary.StepKind.WAIT, "t", codec.fingerprint(args), args, 0.0 if timed else None
    )


def _check_state(conn: sqlite3.Connection, rid: int, sent: int) -> None:
    messages = conn.execute(
        "SELECT id, payload, consumed_pos FROM mailbox WHERE run_rid = ? ORDER BY id", (rid,)
    ).fetchall()
    assert len(messages) == sent  # nothing lost, nothing duplicated
    taken = {pos: orjson.loads(payload) for _, payload, pos in messages if pos is not None}
    consumed = [pos for _, _, pos in messages if pos is not None]
    assert consumed == sorted(consumed), "a topic's messages go to its waits in order"
    assert len(set(consumed)) == len(consumed), "a wait took two messages"
    waits = conn.execute(
        "SELECT pos, status, result, error FROM steps WHERE run_rid = ? ORDER BY pos", (rid,)
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
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_signal_wait_and_timeout_in_any_order(ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "races.sqlite"
        conn = _new_db(path)
        try:
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
        finally:
            conn.close()
        report = check(path)
        assert report.ok, report.summary()
