"""Shard leases (store/leases.py) on a real SQLite file: a Hypothesis state machine of several
engines ticking, pausing, dying and joining on a virtual clock, checking after every step that a
shard's epoch never goes down, that no two engines may write the same shard, that a write is let
through only at the current (owner, epoch), and that the shards settle on their rendezvous owners;
then the fences of claim and record with a stolen shard."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from executor import Client
from executor.store import leases, sharding
from executor.store import repository as repo
from executor.store.conn import SqliteConn
from executor.vocabulary import EngineState, Outcome, OutcomeKind

SHARDS = 8
LEASE_S = 2.0


def migrated_file(path: Path, shards: int = SHARDS) -> None:
    async def create() -> None:
        async with Client(path, shards=shards):
            pass

    asyncio.run(create())


def connect(path: Path) -> SqliteConn:
    return sqlite3.connect(path, isolation_level=None, factory=SqliteConn)


def add_engine(conn: SqliteConn, now: float) -> int:
    """An engine row of the current epoch, as PostgreSQL registers them (several share a file
    here only in tests: on SQLite every new engine takes a new epoch)."""
    row = conn.execute(
        "INSERT INTO engines (epoch, pid, host, state, started_at, heartbeat_at)"
        " VALUES ((SELECT value FROM meta WHERE key = 'epoch'), 1, 'test', 'running', ?, ?)"
        " RETURNING id",
        (now, now),
    ).fetchone()
    return int(row[0])


class LeaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.path: Path | None = None
        self.conn: SqliteConn | None = None
        self.now = 1_000_000.0
        self.held: dict[int, dict[int, int]] = {}  # engine -> what it believes it owns
        self.paused: set[int] = set()
        self.dead: set[int] = set()
        self.max_epoch = [0] * SHARDS
        self.mine: dict[int, frozenset[int]] = {}  # engine -> its targets at its last tick

    @initialize()
    def start(self) -> None:
        self.path = Path(TMP.mktemp("leases")) / "leases.sqlite"
        migrated_file(self.path)
        self.conn = connect(self.path)
        leases.ensure(self.conn, SHARDS)
        for _ in range(2):
            self.held[add_engine(self.conn, self.now)] = {}

    def teardown(self) -> None:
        if self.conn is not None:
            self.conn.close()

    @property
    def active(self) -> list[int]:
        return [e for e in self.held if e not in self.paused and e not in self.dead]

    def _tick(self, engine: int) -> None:
        assert self.conn is not None
        held = self.held[engine]
        # The engine hands back what it no longer should own at once (nothing in flight here).
        mine = self.mine.get(engine, frozenset(held))
        release = {s: e for s, e in held.items() if s not in mine}
        result = leases.tick(
            self.conn, engine, held, release, EngineState.RUNNING, self.now, LEASE_S
        )
        self.held[engine] = {**result.kept, **result.acquired}
        self.mine[engine] = result.mine

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data())
    def tick(self, data: st.DataObject) -> None:
        self._tick(data.draw(st.sampled_from(self.active)))

    @rule(dt=st.floats(0.1, 3.0))
    def advance(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: len(self.active) > 1)
    @rule(data=st.data())
    def pause(self, data: st.DataObject) -> None:
        self.paused.add(data.draw(st.sampled_from(self.active)))

    @precondition(lambda self: bool(self.paused))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        self.paused.discard(data.draw(st.sampled_from(sorted(self.paused))))

    @precondition(lambda self: len(self.active) > 1)
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        self.dead.add(data.draw(st.sampled_from(self.active)))

    @precondition(lambda self: len(self.held) < 5)
    @rule()
    def join(self) -> None:
        assert self.conn is not None
        self.held[add_engine(self.conn, self.now)] = {}

    @rule(data=st.data())
    def stale_write(self, data: st.DataObject) -> None:
        """Any engine, paused or not, tries to write under what it believes it owns."""
        assert self.conn is not None
        engine = data.draw(st.sampled_from(sorted(self.held)))
        fence = leases.Fence(engine, dict(self.held[engine]))
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            owned = leases.owned(self.conn, fence)
            rows = {
                s: (o, e)
                for s, o, e in self.conn.execute("SELECT shard, owner, epoch FROM shard_leases")
            }
        finally:
            self.conn.execute("COMMIT")
        assert owned is not None
        for shard in owned:
            assert rows[shard] == (engine, fence.epochs[shard])

    @rule()
    def settle(self) -> None:
        """Past a lease, the engines still running own every shard, as `assign` says."""
        assert self.conn is not None
        self.now += LEASE_S + 0.1
        # Four rounds is the bound: the first renews the joiners' heartbeats (until then the
        # earlier tickers of the round see them as dead), the second gives every engine the same
        # targets, the third releases what moved, and in the fourth an owner that ticked before
        # the releaser in the third takes it.
        for _ in range(4):
            for engine in self.active:
                self._tick(engine)
        targets = sharding.assign(tuple(range(SHARDS)), tuple(sorted(self.active)))
        for shard, owner in self.conn.execute("SELECT shard, owner FROM shard_leases"):
            assert owner == targets[shard], (shard, owner, targets)

    @invariant()
    def epochs_only_go_up_and_writers_are_unique(self) -> None:
        if self.conn is None:
            return
        for shard, epoch in self.conn.execute("SELECT shard, epoch FROM shard_leases"):
            assert epoch >= self.max_epoch[shard]
            self.max_epoch[shard] = epoch
        writers: dict[int, int] = {}
        for engine, held in self.held.items():
            owned = leases.owned(self.conn, leases.Fence(engine, dict(held)))
            assert owned is not None
            for shard in owned:
                assert shard not in writers, f"shard {shard}: {writers[shard]} and {engine}"
                writers[shard] = engine


TMP: pytest.TempPathFactory


@pytest.fixture(autouse=True)
def _tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    global TMP
    TMP = tmp_path_factory


def test_lease_state_machine() -> None:
    LeaseMachine.TestCase.settings = settings(
        max_examples=int(os.environ.get("LEASE_EXAMPLES", "25")),
        stateful_step_count=30,
        deadline=None,
    )
    LeaseMachine.TestCase().runTest()


def test_a_stolen_shard_refuses_the_old_owners_claim_and_record(tmp_path: Path) -> None:
    path = tmp_path / "steal.sqlite"
    migrated_file(path, shards=2)
    conn = connect(path)
    try:
        now = time.time()
        leases.ensure(conn, 2)
        old = add_engine(conn, now)
        mine = leases.tick(conn, old, {}, {}, EngineState.RUNNING, now, LEASE_S)
        assert set(mine.acquired) == {0, 1}
        fence = leases.Fence(old, mine.acquired)
        # A run in shard 0 with a queued task, claimed by the old owner.
        conn.execute(
            "INSERT INTO runs (id, workflow, version, shard, status, args, created_at,"
            " updated_at) VALUES ('r', 'w', '', 0, 'running', x'5b5d', ?, ?)",
            (now, now),
        )
        rid = conn.execute("SELECT rid FROM runs WHERE id = 'r'").fetchone()[0]
        conn.execute(
            "INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at)"
            " VALUES (?, 0, 'step', 's', '', x'5b5d', 'pending', ?)",
            (rid, now),
        )
        conn.execute("INSERT INTO tasks (run_rid, pos, shard) VALUES (?, 0, 0)", (rid,))
        claimed = repo.claim(conn, old, 0, 7, [(0, 1), (1, 1)], now, True, fence)
        assert claimed is not None and [c.pos for c in claimed] == [0]
        # The old owner stalls past its lease; a newcomer takes both shards with new epochs and
        # puts the old owner's claim back in the queue, in the same transaction.
        later = now + LEASE_S + 1
        new = add_engine(conn, later)
        took = leases.tick(conn, new, {}, {}, EngineState.RUNNING, later, LEASE_S)
        assert took.acquired == {0: 2, 1: 2} and took.requeued == 1
        # The old owner wakes up: its claim finds nothing, its result is refused by the lease.
        assert repo.claim(conn, old, 0, 8, [(0, 1)], later, True, fence) == []
        done = Outcome(OutcomeKind.DONE, rid, 0, 7, result=b"1", shard=0)
        recorded = repo.record(conn, [done], [], later, fence)
        assert recorded.refused == 1 and recorded.deliveries == []
        assert conn.execute("SELECT status FROM steps WHERE run_rid = ?", (rid,)).fetchone() == (
            "pending",
        )
        # Its next tick renews nothing: it has lost both shards.
        after = leases.tick(conn, old, fence.epochs, {}, EngineState.RUNNING, later, LEASE_S)
        assert after.kept == {} and after.acquired == {}
        # The new owner claims the task again (at least once) and records it.
        fence2 = leases.Fence(new, took.acquired)
        again = repo.claim(conn, new, 0, 9, [(0, 1)], later, True, fence2)
        assert again is not None and [c.pos for c in again] == [0]
        done2 = Outcome(OutcomeKind.DONE, rid, 0, 9, result=b"1", shard=0)
        assert len(repo.record(conn, [done2], [], later, fence2).deliveries) == 1
    finally:
        conn.close()
