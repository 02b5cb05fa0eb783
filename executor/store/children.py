"""Child workflows in the file: starting them from a parent's replay commit, telling the parent
when one finishes, and cancelling a whole tree.

Pieces of the transactions in store/repository.py (they never commit by themselves). The rules:

- a child is created in the transaction that commits its parent's journal entry, and only while
  the parent is running, so a cancelled tree never grows;
- whatever ends a child (its own finish, a cancel, an operator) records the parent's entry in the
  same transaction: a finished child never leaves its parent waiting;
- the parent's entry references the child's result (runs.result of the child), it is not copied.
"""

from __future__ import annotations

from typing import Any

import orjson

from executor.errors import error_blob
from executor.store import journal, payloads, sharding
from executor.store.conn import Conn
from executor.vocabulary import Delivery, NewStep, Outcome, OutcomeKind, RunState, StepState


def start(conn: Conn, parent_rid: int, s: NewStep, attached: bool, now: float) -> None:
    """Insert the run a parent's entry `s` starts (attached: a child, cancelled with its parent,
    its end recorded in the parent's entry; else a detached run), with its first replay entry."""
    assert s.target is not None and s.args is not None
    shards = int(conn.execute(conn.q["select_shards"]).fetchone()[0])
    row = conn.execute(
        conn.q["insert_child_run"],
        {
            "id": s.target,
            "workflow": s.name,
            # A child's own id picks its shard, so a fan-out spreads over every shard's slots.
            "shard": sharding.shard_of(s.target, shards),
            "args": payloads.put_args(conn, s.args, now),
            "now": now,
            "parent": parent_rid,
            "pos": s.pos,
            "attached": attached,
        },
    ).fetchone()
    if row is not None:
        conn.execute(conn.q["insert_first_replay"], (row[0], row[1], now))


def outcome_error(child_id: str, status: str, error: bytes | None) -> bytes:
    """The error recorded in the parent's entry for a child that failed or was cancelled."""
    detail: dict[str, Any] = orjson.loads(error) if error else {}
    if status == RunState.CANCELLED:
        return error_blob(
            "ChildCancelled", f"child run {child_id} was cancelled", child=child_id, error=detail
        )
    return error_blob(
        "ChildFailed",
        f"child run {child_id} failed: {detail.get('type')}: {detail.get('message')}",
        child=child_id,
        error=detail,
    )


def cancel_descendants(conn: Conn, rid: int, reason: str, now: float) -> list[int]:
    """Cancel every running or parked run below `rid`; return their rids."""
    error = error_blob("Cancelled", reason)
    params = {"rid": rid, "now": now, "error": error}
    cancelled = [r[0] for r in conn.execute(conn.q["cancel_descendants"], params).fetchall()]
    if conn.dialect == "postgres" and cancelled:
        # Each statement walks the tree as it was when it began: a child whose replay commit
        # (which locks it) was creating a grandchild is seen here only after it committed.
        while more := [r[0] for r in conn.execute(conn.q["cancel_descendants"], params)]:
            cancelled += more
    return cancelled


def run_left(
    conn: Conn,
    rid: int,
    status: str,
    result: bytes | None,
    error: bytes | None,
    now: float,
) -> list[Delivery]:
    """The run just finished (any way): drop its pending work, cancel the children it still
    has (and theirs), and if it is a child, record its end in its parent's journal. Returns
    that record, for a live parent."""
    journal.drop_pending_work(conn, rid)
    has_children, child_id, parent_rid, parent_pos = conn.execute(
        conn.q["family_of_run"], (rid,)
    ).fetchone()
    if has_children:
        for child in cancel_descendants(conn, rid, "cancelled with its parent", now):
            journal.drop_pending_work(conn, child)
            conn.execute(conn.q["delete_replay"], (child,))
    if parent_rid is None:
        return []
    if status == RunState.SUCCEEDED:
        # The parent's entry references the child's result (loaded from the child's row on a
        # replay); only this in-memory record carries a copy, for a live parent.
        o = Outcome(OutcomeKind.DONE, parent_rid, parent_pos)
    else:
        error = outcome_error(child_id, status, error)
        o = Outcome(OutcomeKind.DONE, parent_rid, parent_pos, status=StepState.FAILED, error=error)
    recorded = journal.record_one(conn, o, now)
    if recorded is None:
        return []
    return [recorded._replace(result=result) if status == RunState.SUCCEEDED else recorded]


def ended_by_operator(
    conn: Conn, rid: int, status: str, error: bytes, now: float
) -> list[Delivery]:
    """An operator's verb (cancel, fail, a cleared queue; one run or by filter) just ended the
    run: what run_left does, and its replay entry goes too, since nothing is left to replay.
    The parent's entry queues the parent's replay, which is how a live engine (in any process)
    learns of it."""
    out = run_left(conn, rid, status, None, error, now)
    conn.execute(conn.q["delete_replay"], (rid,))
    return out
