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

import sqlite3
from typing import Any

import orjson

from executor.errors import error_blob
from executor.store import payloads, sharding
from executor.store.sql import Q
from executor.vocabulary import RunState


def start(
    conn: sqlite3.Connection,
    *,
    parent_rid: int,
    pos: int,
    run_id: str,
    workflow: str,
    args: bytes,
    shards: int,
    attached: bool,
    now: float,
) -> None:
    """Insert the child run (attached: cancelled with its parent, its result goes back to the
    parent's entry at `pos`) or a detached run, with its first replay entry."""
    row = conn.execute(
        Q["insert_child_run"],
        {
            "id": run_id,
            "workflow": workflow,
            # A child's own id picks its shard, so a fan-out spreads over every shard's slots.
            "shard": sharding.shard_of(run_id, shards),
            "args": payloads.put_args(conn, args, now),
            "now": now,
            "parent": parent_rid,
            "pos": pos,
            "attached": attached,
        },
    ).fetchone()
    if row is not None:
        conn.execute(Q["insert_first_replay"], (row[0], row[1], now))


def parent_entry(conn: sqlite3.Connection, rid: int) -> tuple[str, int, int] | None:
    """(child id, parent rid, parent position) if the run is an attached child."""
    row = conn.execute(Q["parent_of_run"], (rid,)).fetchone()
    if row is None or row[1] is None:
        return None
    return row[0], row[1], row[2]


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


def cancel_descendants(conn: sqlite3.Connection, rid: int, reason: str, now: float) -> list[int]:
    """Cancel every running or parked run below `rid`; return their rids."""
    error = error_blob("Cancelled", reason)
    rows = conn.execute(Q["cancel_descendants"], {"rid": rid, "now": now, "error": error})
    return [r[0] for r in rows.fetchall()]
