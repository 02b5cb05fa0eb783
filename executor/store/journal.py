"""Recording one journal result: the fence every writer of a result goes through.

A piece of transactions, not a transaction: the flush (repository.record, set-based for many
results), the timers, a signal, a child's end and the operator verbs all record through it, in
their own transaction, so a result is written at most once and always queues a replay entry.
"""

from __future__ import annotations

import sqlite3

from executor.store import payloads
from executor.store.sql import Q
from executor.vocabulary import Delivery, Outcome


def record_one(conn: sqlite3.Connection, o: Outcome, now: float) -> Delivery | None:
    """Record `o` if its step is still pending and its run running or parked; give the step the
    run's next seq and queue the run's replay. None: dropped by the fence."""
    row = conn.execute(
        Q["record_step"],
        {
            "status": o.status,
            "result": payloads.put(conn, o.stored or o.result, now),
            "error": o.error,
            "now": now,
            "rid": o.run_rid,
            "pos": o.pos,
        },
    ).fetchone()
    if row is None:
        return None  # step already recorded, or the run is no longer running: drop it
    seq = row[0]
    shard = conn.execute(Q["advance_run"], {"seq": seq, "now": now, "rid": o.run_rid}).fetchone()[0]
    conn.execute(Q["queue_replay"], {"rid": o.run_rid, "shard": shard, "seq": seq, "now": now})
    return Delivery(o.run_rid, o.pos, seq, o.status, o.result, o.error, now, o.value, o.has_value)


def drop_pending_work(conn: sqlite3.Connection, rid: int) -> None:
    """A run left the running states: its queued tasks, timers and waits go with it."""
    conn.execute(Q["delete_queued_tasks_of_run"], (rid,))
    conn.execute(Q["delete_timers_of_run"], (rid,))
    conn.execute(Q["delete_waits_of_run"], (rid,))
