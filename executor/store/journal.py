"""Recording one journal result: the fence every writer of a result goes through; and reading a
run and its journal back for a replay.

A piece of transactions, not a transaction: the flush (repository.record, set-based for many
results), the timers, a signal, a child's end and the operator verbs all record through it, in
their own transaction, so a result is written at most once and always queues a replay entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from executor.store import payloads
from executor.store.conn import Conn
from executor.vocabulary import Delivery, JournalEntry, Outcome, RunSnapshot


def record_one(conn: Conn, o: Outcome, now: float) -> Delivery | None:
    """Record `o` if its step is still pending and its run running or parked; give the step the
    run's next seq and queue the run's replay. None: dropped by the fence."""
    row = conn.execute(
        conn.q["record_step"],
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
    shard = conn.execute(
        conn.q["advance_run"], {"seq": seq, "now": now, "rid": o.run_rid}
    ).fetchone()[0]
    conn.execute(conn.q["queue_replay"], {"rid": o.run_rid, "shard": shard, "seq": seq, "now": now})
    return Delivery(o.run_rid, o.pos, seq, o.status, o.result, o.error, now, o.value, o.has_value)


def drop_pending_work(conn: Conn, rid: int) -> None:
    """A run left the running states: its queued tasks, timers and waits go with it."""
    conn.execute(conn.q["delete_queued_tasks_of_run"], (rid,))
    conn.execute(conn.q["delete_timers_of_run"], (rid,))
    conn.execute(conn.q["delete_waits_of_run"], (rid,))


def snapshot(conn: Conn, row: Sequence[Any], entries: list[JournalEntry]) -> RunSnapshot:
    """A run as a full replay needs it, from its select_run_for_replay row and its journal, with
    stored payloads read back."""
    if any(payloads.is_ref(j.result) for j in entries):
        entries = [
            j._replace(result=payloads.resolve(conn, j.result)) if payloads.is_ref(j.result) else j
            for j in entries
        ]
    *head, generation, seed, clock_origin, inherited = row
    snap = RunSnapshot._make((*head, entries, generation, seed, clock_origin, inherited))
    if payloads.is_ref(snap.args):
        snap = snap._replace(args=payloads.resolve(conn, snap.args))
    return snap
