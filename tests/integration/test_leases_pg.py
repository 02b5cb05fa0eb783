"""Shard leases on PostgreSQL, in process: engines share one database (a newcomer takes its share
after the others drained it, so nothing runs twice, and drains nobody); `bump-epoch` drains them
all; a stolen shard refuses its old owner's claim and record."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from executor import Client, Registry, step, workflow
from executor.config import LimitSpec
from executor.engine.leases import quota_share, split_limits
from executor.store import leases
from executor.store import repository as repo
from executor.store.pgdatabase import PgConn
from executor.vocabulary import EngineState, Outcome, OutcomeKind
from tests.support.engine import DEADLINE_S, start_engine, wait_until

pytestmark = pytest.mark.anyio

SHARDS = 8
PG_SETTINGS: dict[str, Any] = {"shards": SHARDS, "concurrency": 4, "lease_s": 1.0}


def ticks(reg: Registry, ran: dict[tuple[int, int], int]) -> None:
    @step(registry=reg, name="tick")
    async def tick(i: int, j: int) -> int:
        ran[i, j] = ran.get((i, j), 0) + 1
        await asyncio.sleep(0.02)  # in flight long enough for a hand-over to meet some
        return j

    @workflow(registry=reg, name="ticks")
    async def flow(ctx: Any, i: int) -> int:
        total = 0
        for j in range(4):
            total += await tick(i, j)
        return total


async def owned_by(client: Client, engine_id: int) -> int:
    stats = await client.stats()
    return sum(1 for o in stats["owners"].values() if o is not None and o["engine"] == engine_id)


async def test_engines_share_the_shards_and_bump_epoch_drains_them_all(
    pg_url: str, tmp_path: Path
) -> None:
    reg = Registry()
    ran: dict[tuple[int, int], int] = {}
    ticks(reg, ran)
    db = {"url": pg_url}
    async with Client(pg_url, shards=SHARDS) as client:
        ids = await client.start_many("ticks", [[i] for i in range(60)])
        async with start_engine(reg, tmp_path / "unused", database=db, **PG_SETTINGS) as first:
            assert await owned_by(client, first.engine_id) == SHARDS
            await wait_until(lambda: len(ran) >= 20, "the first engine to get going")
            async with start_engine(reg, tmp_path / "unused", database=db, **PG_SETTINGS) as second:
                # Joining takes a share, after the first engine drained it; it drains nobody.
                assert second.epoch == first.epoch
                await wait_until(
                    lambda: owned_by(client, second.engine_id), "the newcomer to own shards"
                )
                results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
                assert first.state is EngineState.RUNNING
                assert (
                    await owned_by(client, first.engine_id)
                    + await owned_by(client, second.engine_id)
                    == SHARDS
                )
                # bump-epoch: every engine started before it drains and stops.
                await client.bump_epoch()
                await asyncio.wait_for(first.wait(), DEADLINE_S)
                await asyncio.wait_for(second.wait(), DEADLINE_S)
                assert first.stop_reason == second.stop_reason == "a newer epoch took over"
    assert results == [6] * 60
    assert set(ran.values()) == {1}  # a hand-over between live engines runs nothing twice
    assert first.counters["steps"] > 0 and second.counters["steps"] > 0


async def test_daemons_sharing_a_database_split_a_quota_between_them(
    pg_url: str, tmp_path: Path
) -> None:
    """[limits.api] concurrent = 2 over two daemons: each enforces its share of the shards (4 of
    8: one at a time), so together they never run more than 2 at once."""
    reg = Registry()
    running: list[int] = [0]
    most: list[int] = [0]

    @step(registry=reg, name="call", limits=["api"])
    async def call(i: int) -> int:
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            await asyncio.sleep(0.01)
        finally:
            running[0] -= 1
        return i

    @workflow(registry=reg, name="calls")
    async def calls(ctx: Any, i: int) -> int:
        return await call(i) + await call(i)

    db = {"url": pg_url}
    limits = [LimitSpec("api", concurrent=2)]
    async with (
        Client(pg_url, shards=SHARDS) as client,
        start_engine(reg, tmp_path / "a", database=db, limits=limits, **PG_SETTINGS) as a,
        start_engine(reg, tmp_path / "b", database=db, limits=limits, **PG_SETTINGS) as b,
    ):

        async def halves() -> bool:
            return await owned_by(client, a.engine_id) == await owned_by(client, b.engine_id)

        await wait_until(halves, "the two daemons to own half of the shards each")
        ids = await client.start_many("calls", [[i] for i in range(40)])
        results = [await client.result(r, timeout=DEADLINE_S) for r in ids]
    assert results == [2 * i for i in range(40)]
    assert most[0] <= 2, most


def test_the_quota_share_of_a_daemon_is_its_share_of_the_shards() -> None:
    assert quota_share(3, 12, 1) == 1.0  # alone (or on SQLite): all of it
    assert quota_share(4, 12, 3) == 4 / 12
    spec = LimitSpec("api", requests_per_minute=10, tokens_per_second=1000, concurrent=3)
    (third,) = split_limits([spec], 1 / 3)
    assert (third.requests_per_minute, third.tokens_per_second, third.concurrent) == (3, 333, 1)
    assert split_limits([spec], 0.0)[0].concurrent == 1  # never 0: it would stop the daemon
    assert split_limits([spec], 1.0) == [spec]


def test_a_stolen_shard_refuses_the_old_owners_claim_and_record(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as raw:
        conn = PgConn(raw)
        now = time.time()
        leases.ensure(conn, 2)

        def engine(at: float) -> int:
            row = conn.execute(
                "INSERT INTO engines (epoch, pid, host, state, started_at, heartbeat_at)"
                " VALUES (0, 1, 'test', 'running', %s, %s) RETURNING id",
                (at, at),
            ).fetchone()
            return int(row[0])

        old = engine(now)
        mine = leases.tick(conn, old, {}, {}, EngineState.RUNNING, now, 0.5)
        assert set(mine.acquired) == {0, 1}
        fence = leases.Fence(old, mine.acquired)
        rid = conn.execute(
            "INSERT INTO runs (id, workflow, version, shard, status, args, created_at,"
            " updated_at) VALUES ('r', 'w', '', 0, 'running', '\\x5b5d', %s, %s) RETURNING rid",
            (now, now),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at)"
            " VALUES (%s, 0, 'step', 's', '', '\\x5b5d', 'pending', %s)",
            (rid, now),
        )
        conn.execute("INSERT INTO tasks (run_rid, pos, shard) VALUES (%s, 0, 0)", (rid,))
        claimed = repo.claim(conn, old, 0, 7, [(0, 1), (1, 1)], now, True, fence)
        assert claimed is not None and [c.pos for c in claimed] == [0]
        # The old owner stalls past its lease (moved into the past here), and a newcomer takes
        # both shards with new epochs, putting the old owner's claim back in the queue.
        conn.execute("UPDATE shard_leases SET expires_at = expires_at - 60")
        conn.execute("UPDATE engines SET heartbeat_at = heartbeat_at - 60 WHERE id = %s", (old,))
        later = time.time()
        new = engine(later)
        took = leases.tick(conn, new, {}, {}, EngineState.RUNNING, later, 0.5)
        assert took.acquired == {0: 2, 1: 2} and took.requeued == 1
        assert repo.claim(conn, old, 0, 8, [(0, 1)], later, True, fence) == []
        done = Outcome(OutcomeKind.DONE, rid, 0, 7, result=b"1", shard=0)
        recorded = repo.record(conn, [done], [], later, fence)
        assert recorded.refused == 1 and recorded.deliveries == []
        status = conn.execute("SELECT status FROM steps WHERE run_rid = %s", (rid,)).fetchone()
        assert status[0] == "pending"
        again = repo.claim(conn, new, 0, 9, [(0, 1)], later, True, leases.Fence(new, took.acquired))
        assert again is not None and [c.pos for c in again] == [0]
