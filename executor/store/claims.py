"""Claiming queued tasks for an engine's free slots, oldest workflow first (the dispatcher's
claim), and the records a claim's rows become: the replay commit's claims of a run's next steps
(repository.commit_replays) are read back into the same records.

Tasks are marked in flight, never deleted (invariant 3): the transaction that records a task's
result deletes it, and a claim whose engine died goes back to the queue (store/engines.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from executor.store import leases, payloads, pghot
from executor.store.conn import Conn
from executor.store.database import transaction
from executor.store.leases import Fence
from executor.vocabulary import Claimed


def claim(
    conn: Conn,
    engine_id: int,
    epoch: int,
    token: int,
    wants: Sequence[tuple[int, int]],
    now: float,
    limits: bool = True,
    fence: Fence | None = None,
) -> list[Claimed] | None:
    """Claim up to n queued tasks for each (shard, n), oldest workflow first.

    Returns None, claiming nothing, when the stored epoch has moved past ours: we must drain.
    Tasks are marked in flight, never deleted. `limits`: also read what the limiter needs (the
    run's concurrency key, whether the task was unparked); an engine without limits skips it.
    `fence`: claim only in shards the engine still owns at the epochs it holds (store/leases).
    """
    if not any(n > 0 for _, n in wants):
        # Nothing to claim: check the epoch with a read, without taking the write lock.
        current = conn.execute(conn.q["select_epoch"]).fetchone()[0]
        return [] if current == epoch else None
    if conn.dialect == "postgres":  # one statement, the lease fence in it (store/pghot.py)
        rows = pghot.claim(conn, engine_id, epoch, token, wants, now, fence)
        return None if rows is None else records(conn, rows, token, limits)
    return _claim(conn, engine_id, epoch, token, wants, now, limits, fence)


@transaction
def _claim(
    conn: Conn,
    engine_id: int,
    epoch: int,
    token: int,
    wants: Sequence[tuple[int, int]],
    now: float,
    limits: bool,
    fence: Fence | None,
) -> list[Claimed] | None:
    if conn.execute(conn.q["select_epoch"]).fetchone()[0] != epoch:
        return None
    owned = leases.owned(conn, fence)
    if owned is not None:
        wants = [(shard, n) for shard, n in wants if shard in owned]
    # Set-based: a few statements for the whole batch. sqlite3 lets go of the GIL around each
    # statement step, and the engine's event loop keeps it busy, so every step of this thread
    # can wait for the GIL: per-row statements made claims the slowest transaction we had.
    conn.executemany(
        conn.q["mark_claimed"],
        [
            {
                "token": token,
                "engine": engine_id,
                "epoch": epoch,
                "now": now,
                "shard": shard,
                "limit": limit,
            }
            for shard, limit in wants
            if limit > 0
        ],
    )
    conn.execute(conn.q["count_claimed_attempts"], {"token": token, "now": now})
    return records(conn, conn.execute(conn.q["select_claimed"], (token,)), token, limits)


def records(conn: Conn, rows: Iterable[Sequence[Any]], token: int, limits: bool) -> list[Claimed]:
    """Claimed tasks from rows in select_claimed's columns (both dialects), their arguments
    read from the payload store where they were stored there."""
    out: list[Claimed] = []
    new = tuple.__new__  # a NamedTuple without its Python __new__: 0.2 against 0.45 us a row
    for row in rows:
        run_rid, pos, shard, attempt, name, args, limit_key, run_id, workflow, unparked, ckey = row
        if not limits:
            unparked, ckey = False, None
        if payloads.is_ref(args):
            args = payloads.resolve(conn, args)
        out.append(
            new(
                Claimed,
                (
                    run_rid,
                    pos,
                    shard,
                    attempt,
                    name,
                    args,
                    token,
                    limit_key,
                    ckey,
                    bool(unparked),
                    run_id,
                    workflow,
                ),
            )
        )
    return out
