"""Writes while runs are started. Two connections of one process to one file take turns at the
write lock (store/turnstile.py): a writer that waits goes next, instead of sleeping in SQLite's
busy handler while the other takes the lock again as soon as it commits (an engine beside a
Client starting runs in batches back to back). A batch of runs is stored byte for byte as its
arguments were encoded, whichever way create_runs inserts it (one JSON statement, or row by row
for payload refs); and a start_many larger than one transaction commits in batches."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor import Client, bulk, codec, config, errors
from executor.store import database, engines, payloads, turnstile
from executor.store.conn import Conn

pytestmark = pytest.mark.anyio

DEADLINE_S = 60.0


@database.transaction
def _engine_write(conn: Conn, log: list[str]) -> None:
    # A write of the engine's kind (small): the rows are the client's, touched and left as is.
    conn.execute("UPDATE runs SET updated_at = updated_at WHERE rid = 1")
    log.append("engine")


def _ask_then_write(conn: Conn, log: list[str]) -> None:
    log.append("ask")  # on the engine's database thread, just before it queues for the lock
    _engine_write(conn, log)


async def test_a_waiting_writer_goes_next_while_another_commits_back_to_back(
    db_path: Path,
) -> None:
    cfg = config.DatabaseConfig(path=db_path)
    log: list[str] = []  # commits in order; list.append is atomic across threads
    async with Client(cfg, shards=2) as client:
        await client.start("wf")
        engine_db = await database.Database.open(cfg, shards=2)
        gate = engine_db._raw.turnstile
        assert gate is not None and gate is client.db._raw.turnstile  # type: ignore[attr-defined]
        done = threading.Event()
        first_batch = threading.Event()
        # The client's thread commits one long transaction after the other with no pause
        # between: SQLite's busy handler alone sleeps through every gap.
        starting = asyncio.ensure_future(client.db.run(_start_back_to_back, log, done, first_batch))
        try:
            await asyncio.wait_for(asyncio.to_thread(first_batch.wait, DEADLINE_S), DEADLINE_S)
            commits = []
            for _ in range(20):
                before = len(log)
                await asyncio.wait_for(engine_db.run(_ask_then_write, log), DEADLINE_S)
                asked = log.index("ask", before)
                # The client's commits between this write's asking and its own commit: the
                # batch holding the lock when it asked, and no other.
                commits.append(log[asked : log.index("engine", asked)].count("client"))
        finally:
            done.set()
            batches = await starting
            await engine_db.close()
    assert max(commits) <= 1, commits
    assert batches >= 1
    assert gate.entered >= 20 + batches


@database.transaction
def _long_write(conn: Conn) -> None:
    # A client's large batch: it holds the write lock for a while (the engine's threads run
    # meanwhile: the sleep lets go of the GIL, as SQLite's own work does).
    conn.execute("UPDATE runs SET updated_at = updated_at WHERE rid = 1")
    time.sleep(0.002)


def _start_back_to_back(
    conn: Conn, log: list[str], done: threading.Event, first: threading.Event
) -> int:
    batches = 0
    while not done.is_set() and batches < 100_000:
        _long_write(conn)
        log.append("client")
        first.set()
        batches += 1
    return batches


def test_the_turnstile_serves_waiters_in_order_and_gives_up_after_the_timeout() -> None:
    gate = turnstile.Turnstile()
    assert gate.acquire(1.0) == 0.0
    assert gate.acquire(1.0) == 0.0  # re-entrant on one thread
    order: list[str] = []

    def waiter(name: str, timeout_s: float) -> None:
        try:
            gate.acquire(timeout_s)
        except sqlite3.OperationalError as exc:
            order.append(f"{name}: {exc}")
            return
        order.append(name)
        gate.release()

    first = threading.Thread(target=waiter, args=("first", DEADLINE_S))
    first.start()
    _until(lambda: gate.waited == 1)  # queued
    second = threading.Thread(target=waiter, args=("second", DEADLINE_S))
    second.start()
    _until(lambda: gate.waited == 2)
    late = threading.Thread(target=waiter, args=("late", 0.01))
    late.start()
    late.join(DEADLINE_S)
    assert order == ["late: database is locked"]  # gave up, and left the queue
    gate.release()
    assert order == ["late: database is locked"]  # still held once (re-entrant)
    gate.release()
    first.join(DEADLINE_S)
    second.join(DEADLINE_S)
    assert order == ["late: database is locked", "first", "second"]
    assert gate.acquire(0.0) == 0.0  # free again
    gate.release()


def _until(cond: Any) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.001)


# Strings JSON must escape (quotes, backslashes, control characters, NUL, non-ASCII), and
# arguments large enough to be stored apart (a payload reference in the row).
_texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40
) | st.sampled_from(["\x00", '"\\', "\u2028", "\\u0000", "é" * 3000, "x" * 70_000])
_keys = st.sampled_from([None, "k1", "ké\u2028", "k\x00nul"])


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    args=st.lists(
        st.lists(_texts | st.integers(-(2**63), 2**63 - 1), max_size=3), min_size=1, max_size=6
    ),
    keys=st.lists(_keys, min_size=1, max_size=6),
    labels=st.sampled_from([None, {"batch": "b\x00"}, {"k": "é\\"}]),
)
def test_a_batch_is_stored_as_its_arguments_were_encoded(
    tmp_path: Path, args: list[list[Any]], keys: list[str | None], labels: dict[str, str] | None
) -> None:
    # One key per distinct argument list, so that no key conflicts; a repeat is the same run.
    owner: dict[str, list[Any]] = {}
    keys = [
        k if k is None or owner.setdefault(k, a) == a else None
        for k, a in zip(keys + [None] * len(args), args, strict=False)
    ]
    batch = [*args, args[0]]  # the first again: with a key, the same run
    keys = [*keys, keys[0]]

    async def go() -> None:
        path = tmp_path / f"b{time.monotonic_ns()}.sqlite"
        async with Client(path, shards=2) as client:
            ids = await client.start_many("wf", batch, idempotency_keys=keys, labels=labels)
            assert len(ids) == len(batch)
            for run_id, a, key in zip(ids, batch, keys, strict=True):
                assert await client.db.run(_stored, run_id) == (
                    codec.encode(a),
                    key,
                    None if labels is None else labels,
                )
            # Two positions are one run exactly when they carry the same key.
            for i, (id_i, key_i) in enumerate(zip(ids, keys, strict=True)):
                for id_j, key_j in zip(ids[i + 1 :], keys[i + 1 :], strict=True):
                    assert (id_i == id_j) == (key_i is not None and key_i == key_j)

    asyncio.run(go())


def _stored(conn: Conn, run_id: str) -> tuple[bytes, str | None, dict[str, str] | None]:
    blob, key, labels = conn.execute(
        "SELECT args, idempotency_key, labels FROM runs WHERE id = ?", (run_id,)
    ).fetchone()
    resolved = payloads.resolve(conn, blob)
    assert isinstance(resolved, bytes)
    return resolved, key, None if labels is None else orjson.loads(labels)


async def test_a_large_start_many_commits_in_batches_and_says_how_many_started(
    db_path: Path,
) -> None:
    async with Client(db_path, shards=2) as client:
        await client.start_many("wf", [["other"]], idempotency_keys=["k"])
        n = 2 * bulk.START_CHUNK + 10
        keys: list[str | None] = [None] * n
        keys[-1] = "k"  # held by a run with other arguments: the last transaction fails
        with pytest.raises(errors.IdempotencyConflict) as caught:
            await client.start_many("wf", [[i] for i in range(n)], idempotency_keys=keys)
        started = 2 * bulk.START_CHUNK
        assert f"the first {started} of its {n} runs were started" in "".join(
            caught.value.__notes__
        )
        assert await client.count() == 1 + started
        # The batches before it are whole, in order: the first `started` argument lists.
        firsts = await client.db.run(_first_args, started + 1)
        assert firsts == [b'["other"]'] + [codec.encode([i]) for i in range(started)]
        # Without a conflict every run starts, across batches, ids in order of the input.
        ids = await client.start_many("wf", [[i] for i in range(n)])
        assert len(set(ids)) == n
        assert await client.db.run(_first_args, 1 + started + n) == firsts + [
            codec.encode([i]) for i in range(n)
        ]


def _first_args(conn: Conn, limit: int) -> list[bytes]:
    return [a for (a,) in conn.execute("SELECT args FROM runs ORDER BY rid LIMIT ?", (limit,))]


async def test_a_large_start_many_pauses_only_for_an_engine_of_another_process(
    db_path: Path,
) -> None:
    async with Client(db_path, shards=2) as client:
        now = time.time()
        here = (os.getpid(), socket.gethostname())
        assert not await client.db.run(engines.live_elsewhere, *here, now, 15.0)
        await client.db.run(_add_engine, os.getpid(), socket.gethostname(), now)  # this process
        assert not await client.db.run(engines.live_elsewhere, *here, now, 15.0)
        await client.db.run(_add_engine, 1, "another-host", now - 60)  # stale heartbeat
        assert not await client.db.run(engines.live_elsewhere, *here, now, 15.0)
        await client.db.run(_add_engine, 1, "another-host", now)
        assert await client.db.run(engines.live_elsewhere, *here, now, 15.0)
        # With the pauses, every run still starts.
        ids = await client.start_many("wf", [[i] for i in range(bulk.START_CHUNK + 1)])
        assert len(set(ids)) == bulk.START_CHUNK + 1


@database.transaction
def _add_engine(conn: Conn, pid: int, host: str, beat: float) -> None:
    conn.execute(
        "INSERT INTO engines (epoch, pid, host, state, started_at, heartbeat_at)"
        " VALUES (1, ?, ?, 'running', ?, ?)",
        (pid, host, beat, beat),
    )
