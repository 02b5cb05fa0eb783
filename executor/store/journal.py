"""Recording journal results: the fence every writer of a result goes through (record_one, and
record_many for a batch of finished steps); and reading runs and their journals back for a replay.

Pieces of transactions, not transactions: the flush (repository.record), the timers, a signal, a
child's end and the operator verbs all record through them, in their own transaction, so a
result is written at most once and always queues a replay entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from executor.store import payloads, pghot
from executor.store.conn import Conn
from executor.vocabulary import (
    Delivery,
    JournalEntry,
    Outcome,
    RunSnapshot,
    RunState,
    StepState,
)


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


def record_many(done: list[Outcome], conn: Conn, now: float) -> list[Delivery]:
    """Record finished steps with a few statements over the whole batch.

    The same fences as journal.record_one: our claim token still holds the task, the step is
    still pending, the run is running or parked; a step twice in the batch counts once. sqlite3
    lets go of the GIL around every statement step (each row of an executemany or of a result
    set), and the event loop keeps it busy, so per-row statements made this the most expensive
    transaction of the engine; the statements over the batch cost less per row the fewer passes
    they make over it (one fence, and the numbering only for a batch with several results of
    one run), and the recorded seqs come back as one row.
    """
    if not done:
        return []
    if conn.dialect == "postgres":  # the fence was checked by the caller, in this transaction
        return pghot.record(done, conn, now, None).deliveries
    rows, plain = _rows(done, conn, now)
    conn.execute(conn.q["record_in_create"])
    conn.execute(conn.q["record_in_clear"])
    conn.executemany(conn.q["record_in_add_plain" if plain else "record_in_add"], rows)
    conn.execute(conn.q["record_in_fence"])
    if not plain:
        conn.execute(conn.q["record_in_number"])
    conn.execute(conn.q["record_in_delete_tasks"])
    conn.execute(conn.q["record_in_steps"], {"now": now})
    conn.execute(conn.q["record_in_runs"], {"now": now})
    conn.execute(conn.q["record_in_replays"], {"now": now})
    places, seqs = conn.execute(conn.q["record_in_recorded"]).fetchone()
    conn.execute(conn.q["record_in_clear"])
    events = []
    new = tuple.__new__  # a NamedTuple without its Python __new__: a third less per row
    for i, seq in sorted(zip(orjson.loads(places), orjson.loads(seqs), strict=True)):
        o = done[i]
        events.append(
            new(
                Delivery,
                (o.run_rid, o.pos, seq, o.status, o.result, o.error, now, o.value, o.has_value),
            )
        )
    return events


# Each parameter that is not exactly an int, float or str costs sqlite3 a look-up of adapters
# (a StrEnum member, None, bytes): ~0.15 us a parameter, a quarter of a row of the batch.
_STATUS = {s: str(s.value) for s in StepState}


def _rows(done: list[Outcome], conn: Conn, now: float) -> tuple[list[tuple[Any, ...]], bool]:
    """record_in_add's rows: each outcome with its place in the batch and its place k among its
    run's outcomes (from 1); and whether the batch is plain: a result per run and no error, so
    record_in_add_plain's rows leave out k (1) and the error (NULL). A later copy of an outcome
    with the same step and claim is left out: it could only be recorded where the first was
    not."""
    put = payloads.put
    inline = payloads.INLINE_MAX_BYTES
    status = _STATUS
    rows: list[tuple[Any, ...]] = []
    if len({o.run_rid for o in done}) == len(done) and all(o.error is None for o in done):
        for i, o in enumerate(done):
            result = o.stored or o.result
            if result is not None and (type(result) is not bytes or len(result) > inline):
                result = put(conn, result, now)
            rows.append((i, o.run_rid, o.pos, o.token, status[o.status], result))
        return rows, True
    seen: set[tuple[int, int, int | None]] = set()
    k: dict[int, int] = {}
    for i, o in enumerate(done):
        step = (o.run_rid, o.pos, o.token)
        if step not in seen:
            seen.add(step)
            k[o.run_rid] = k.get(o.run_rid, 0) + 1
            result = put(conn, o.stored or o.result, now)
            rows.append(
                (i, o.run_rid, o.pos, o.token, status[o.status], result, o.error, k[o.run_rid])
            )
    return rows, False


def drop_pending_work(conn: Conn, rid: int) -> None:
    """A run left the running states: its queued tasks, timers and waits go with it."""
    conn.execute(conn.q["delete_queued_tasks_of_run"], (rid,))
    conn.execute(conn.q["delete_timers_of_run"], (rid,))
    conn.execute(conn.q["delete_waits_of_run"], (rid,))


def snapshot(conn: Conn, row: Sequence[Any], entries: list[JournalEntry]) -> RunSnapshot:
    """A run as a full replay needs it, from its select_runs_for_replay row and its journal, with
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


def load_runs(conn: Conn, rids: Iterable[int]) -> dict[int, RunSnapshot]:
    """Everything a full replay needs, for each run (missing runs are left out): two statements
    for the whole batch, in one read snapshot across the run rows and their journals."""
    rids = list(rids)
    # The batch as the dialect takes a list: an array on PostgreSQL, a JSON array on SQLite.
    batch = rids if conn.dialect == "postgres" else "[" + ",".join(map(str, rids)) + "]"
    conn.execute(conn.q["begin_read"])
    try:
        entries: dict[int, list[JournalEntry]] = {}
        for rid, *entry in conn.execute(conn.q["select_journals"], (batch,)):
            entries.setdefault(rid, []).append(JournalEntry(*entry))
        rows = {row[0]: row for row in conn.execute(conn.q["select_runs_for_replay"], (batch,))}
        return {rid: snapshot(conn, rows[rid], entries.get(rid, [])) for rid in rids if rid in rows}
    finally:
        conn.execute("COMMIT")


def load_deliveries(conn: Conn, after: Mapping[int, int]) -> dict[int, list[Delivery]]:
    """For each running run, its journal results recorded after seq `after[rid]`, in seq order:
    what a live instance misses when someone else recorded results (a signal, a child's end, a
    resume), so it is fed just those instead of being rebuilt from the whole journal. Runs that
    are no longer running are left out (they need the full path)."""
    conn.execute(conn.q["begin_read"])  # one snapshot across the run rows and their journals
    try:
        out: dict[int, list[Delivery]] = {}
        for rid, seq in after.items():
            row = conn.execute(conn.q["run_status_of_rid"], (rid,)).fetchone()
            if row is None or row[0] != RunState.RUNNING:
                continue
            out[rid] = [
                Delivery(
                    rid,
                    pos,
                    s,
                    status,
                    payloads.resolve(conn, result) if payloads.is_ref(result) else result,
                    error,
                    finished_at,
                )
                for pos, s, status, result, error, finished_at in conn.execute(
                    conn.q["select_journal_after"], (rid, seq)
                )
            ]
    finally:
        conn.execute("COMMIT")
    return out
