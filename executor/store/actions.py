"""Repairing runs: retry in place, fork, purge, and actions on runs by filter, as transactions.

Every function here is one transaction (or one read) on the database thread, like
store/repository.py. What keeps the invariants:

- a retry bumps the run's generation, drops the journal from the retry point on (with every task,
  timer and replay entry of the run) and queues a replay of the kept prefix, in one transaction.
  A late result of the old attempt finds no task with its claim and is dropped (invariant 1); a
  replay built from the old journal is dropped at commit (repository.commit_replays);
- an action by filter works in short batches in rid order; each batch's transaction changes its
  runs and moves the action's cursor together, so after a crash the action continues after the
  last committed batch and never acts on a run twice; runs created after the action began
  (rid > cutoff) never match.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from executor import errors
from executor.errors import error_blob
from executor.runfilter import RunFilter
from executor.store import children, payloads
from executor.store.conn import Conn
from executor.store.database import transaction
from executor.vocabulary import ActionKind, ActionPhase, RunRow, RunState

if TYPE_CHECKING:
    import sqlite3

CANCEL = ActionKind.CANCEL
RETRY = ActionKind.RETRY
RESUME = ActionKind.RESUME
FAIL = ActionKind.FAIL
PURGE = ActionKind.PURGE
ACTIONS = tuple(ActionKind)
RETRIABLE = (RunState.FAILED, RunState.CANCELLED, RunState.PARKED)
# Pages given back to the file system per incremental vacuum step: about 4 MB at 4 KB pages, a
# few milliseconds of writing, so a running engine's commits are not held up.
VACUUM_STEP_PAGES = 1024


# --- retry in place ------------------------------------------------------------------------------


def _retry(conn: Conn, rids: Sequence[int], from_step: int | None, now: float) -> dict[int, int]:
    """Retry those of `rids` that are failed, cancelled or parked; {rid: restart position}."""
    conn.execute(conn.q["retry_in_create"])
    conn.execute(conn.q["retry_in_clear"])
    conn.execute(conn.q["retry_in_fill"], {"rids": json.dumps(list(rids)), "from_step": from_step})
    conn.execute(conn.q["retry_children_create"])
    conn.execute(conn.q["retry_children_clear"])
    conn.execute(conn.q["retry_children_fill"])
    conn.execute(
        conn.q["retry_cancel_children"],
        {"now": now, "error": error_blob("Cancelled", "its parent was retried from before it")},
    )
    for name in (
        "retry_children_queued_tasks",
        "retry_children_timers",
        "retry_children_waits",
        "retry_children_replays",
        "retry_detach_children",
        "retry_drop_steps",
        "retry_drop_tasks",
        "retry_drop_timers",
        "retry_drop_replays",
        "retry_drop_waits",
        "retry_unread_messages",
        "retry_drop_events",
        "retry_renumber",
    ):
        conn.execute(conn.q[name])
    conn.execute(conn.q["retry_runs"], {"now": now})
    conn.execute(conn.q["retry_queue_replays"], {"now": now})
    done = {rid: point for rid, point in conn.execute(conn.q["retry_done"])}
    conn.execute(conn.q["retry_in_clear"])
    conn.execute(conn.q["retry_children_clear"])
    return done


@transaction
def retry_run(conn: Conn, run_id: str, from_step: int | None, now: float) -> int:
    """Retry one run in place; return the position it restarts from.

    RunNotFound for an unknown id; RunStateError if the run is running or succeeded, or
    `from_step` is past its journal.
    """
    rid, status, positions = _run_for_repair(conn, run_id)
    if status not in RETRIABLE:
        hint = " (fork it to run it again from a step)" if status == RunState.SUCCEEDED else ""
        raise errors.RunStateError(
            f"run {run_id} is {status}; only failed, cancelled or parked runs can be retried{hint}"
        )
    _check_point(run_id, from_step, positions)
    return _retry(conn, [rid], from_step, now)[rid]


def _run_for_repair(conn: Conn, run_id: str) -> tuple[int, str, int]:
    row = conn.execute(conn.q["run_for_repair"], (run_id,)).fetchone()
    if row is None:
        raise errors.RunNotFound(f"no run with id {run_id!r}")
    return row[0], row[1], row[2]


def _check_point(run_id: str, from_step: int | None, positions: int) -> None:
    if from_step is not None and not 0 <= from_step <= positions:
        raise errors.RunStateError(
            f"run {run_id}: --from-step {from_step} is outside its journal (positions 0 to"
            f" {positions - 1}; {positions} keeps it whole)"
            if positions
            else f"run {run_id}: its journal is empty, so the only position is 0"
        )


# --- fork ----------------------------------------------------------------------------------------


class Forked(NamedTuple):
    id: str
    rid: int
    point: int  # positions 0..point-1 were copied


@transaction
def fork_run(
    conn: Conn,
    run_id: str,
    from_step: int,
    new_id: str,
    shard: int,
    labels: str | None,
    now: float,
    copy_labels: bool = True,
) -> Forked:
    """A new run of the same workflow and arguments whose journal is `run_id`'s up to
    `from_step` (lowered to the first position still waiting for a result), with the source's
    seed and clock origin, so the kept prefix replays exactly. The source is not changed."""
    src = conn.execute(conn.q["fork_source"], (run_id,)).fetchone()
    if src is None:
        raise errors.RunNotFound(f"no run with id {run_id!r}")
    (old_rid, _, workflow, version, args, ckey, old_labels, seed, origin, positions, pending) = src
    _check_point(run_id, from_step, positions)
    point = from_step if pending is None else min(from_step, pending)
    new_rid = conn.execute(
        conn.q["fork_insert_run"],
        {
            "id": new_id,
            "workflow": workflow,
            "version": version,
            "shard": shard,
            "args": args,
            "now": now,
            "concurrency_key": ckey,
            "labels": old_labels if copy_labels and labels is None else labels,
            "seed": seed,
            "clock_origin": origin,
            "forked_from": run_id,
            "forked_at": point,
        },
    ).fetchone()[0]
    conn.execute(
        conn.q["fork_copy_steps"], {"new_rid": new_rid, "old_rid": old_rid, "point": point}
    )
    shard_, last_seq = conn.execute(conn.q["fork_finish"], {"rid": new_rid}).fetchone()
    conn.execute(
        conn.q["queue_replay"], {"rid": new_rid, "shard": shard_, "seq": last_seq, "now": now}
    )
    return Forked(new_id, new_rid, point)


# --- the other per-run actions, by rid -----------------------------------------------------------


def _end(
    conn: Conn, rids: Sequence[int], query: str, state: RunState, error: bytes, now: float
) -> int:
    # Each run as the one-run verb (repository.cancel_in, fail_parked_run) ends it: its children
    # are cancelled and its parent, if any, records ChildCancelled or ChildFailed. A child whose
    # parent came first in the batch is already cancelled with it, and counts as skipped.
    acted = 0
    for rid in rids:
        if conn.execute(conn.q[query], {"rid": rid, "now": now, "error": error}).fetchone():
            children.ended_by_operator(conn, rid, state, error, now)
            acted += 1
    return acted


def _resume(conn: Conn, rids: Sequence[int], now: float) -> int:
    acted = 0
    for rid in rids:
        row = conn.execute(conn.q["resume_run_by_rid"], {"rid": rid, "now": now}).fetchone()
        if row is not None:
            requeue_resumed(conn, row[0], row[1], row[2], now)
            acted += 1
    return acted


def requeue_resumed(conn: Conn, rid: int, shard: int, seq: int, now: float) -> None:
    """The run was just put back from parked to running (one run or by filter): queue its
    replay, against the deployed code, and let its steps held back for an unregistered name
    be claimed again."""
    conn.execute(conn.q["queue_replay"], {"rid": rid, "shard": shard, "seq": seq, "now": now})
    conn.execute(conn.q["unpark_unregistered_tasks"], (rid,))


def _purge(conn: Conn, rids: Sequence[int]) -> int:
    conn.execute(conn.q["purge_in_create"])
    conn.execute(conn.q["purge_in_clear"])
    conn.execute(conn.q["purge_in_fill"], {"rids": json.dumps(list(rids))})
    for name in (
        "purge_steps",
        "purge_tasks",
        "purge_timers",
        "purge_replays",
        "purge_mailbox",
        "purge_waits",
        "purge_events",
    ):
        conn.execute(conn.q[name])
    acted: int = conn.execute(conn.q["purge_runs"]).rowcount
    conn.execute(conn.q["purge_in_clear"])
    return acted


def _apply(
    conn: Conn,
    action: str,
    rids: Sequence[int],
    params: dict[str, Any],
    now: float,
) -> int:
    if action == RETRY:
        return len(_retry(conn, rids, params.get("from_step"), now))
    if action == CANCEL:
        error = error_blob("Cancelled", "cancelled by request")
        return _end(conn, rids, "cancel_run_by_rid", RunState.CANCELLED, error, now)
    if action == RESUME:
        return _resume(conn, rids, now)
    if action == FAIL:
        error = error_blob("FailedByOperator", str(params.get("reason") or "failed by an operator"))
        return _end(conn, rids, "fail_parked_run_by_rid", RunState.FAILED, error, now)
    if action == PURGE:
        return _purge(conn, rids)
    raise ValueError(f"unknown action {action!r}")


# --- reading runs by filter ----------------------------------------------------------------------

_NO_CUTOFF = 1 << 62


def count_runs(conn: Conn, f: RunFilter, upto: int | None = None) -> int:
    params = {**f.params(), "upto": _NO_CUTOFF if upto is None else upto}
    return int(conn.execute(conn.q["count_runs_filtered"], params).fetchone()[0])


def page_runs(conn: Conn, f: RunFilter, before: int | None, limit: int) -> list[RunRow]:
    """Up to `limit` runs, newest first, older than rid `before` (keyset paging)."""
    params = {**f.params(), "before": _NO_CUTOFF if before is None else before, "limit": limit}
    return [RunRow(*row) for row in conn.execute(conn.q["page_runs_filtered"], params)]


# --- actions by filter ---------------------------------------------------------------------------


def spec_of(spec: str, params: dict[str, Any]) -> str:
    """What identifies an action to continue: the filter as the operator gave it, and the
    parameters (a retry from another position is another action)."""
    return json.dumps({"spec": spec, "params": params}, sort_keys=True)


class ActionState(NamedTuple):
    id: int
    cutoff: int  # runs with a higher rid were created after the action began
    cursor: int  # runs up to this rid are done
    filter: RunFilter  # with its relative times as resolved when the action began
    acted: int
    skipped: int
    resumed: bool  # an unfinished action with the same action, filter and parameters


@transaction
def begin_action(conn: Conn, action: str, spec: str, f: RunFilter, now: float) -> ActionState:
    """Continue the unfinished action with the same `spec` (what the operator gave: action,
    filter as typed, parameters), or begin a new one that will not go past today's last run."""
    if conn.dialect == "postgres":
        conn.execute(conn.q["lock_action"], (action, spec))
    row = conn.execute(conn.q["open_action"], (action, spec)).fetchone()
    if row is not None:
        op_id, cutoff, cursor, filter_json, acted, skipped = row
        return ActionState(
            op_id, cutoff, cursor, RunFilter.from_json(filter_json), acted, skipped, True
        )
    op_id, cutoff = conn.execute(
        conn.q["insert_action"], {"action": action, "spec": spec, "filter": f.to_json(), "now": now}
    ).fetchone()
    return ActionState(op_id, cutoff, 0, f, 0, 0, False)


class Batch(NamedTuple):
    cursor: int
    acted: int
    skipped: int
    done: bool


@transaction
def action_batch(
    conn: Conn,
    state: ActionState,
    action: str,
    params: dict[str, Any],
    cursor: int,
    limit: int,
    now: float,
) -> Batch:
    """Act on the next `limit` matching runs after `cursor`, and move the action's cursor past
    them, in one transaction."""
    rids = [
        rid
        for (rid,) in conn.execute(
            conn.q["batch_runs_filtered"],
            {**state.filter.params(), "after": cursor, "upto": state.cutoff, "limit": limit},
        )
    ]
    acted = _apply(conn, action, rids, params, now) if rids else 0
    done = len(rids) < limit
    new_cursor = rids[-1] if rids else cursor
    conn.execute(
        conn.q["advance_action"],
        {
            "id": state.id,
            "cursor": new_cursor,
            "acted": acted,
            "skipped": len(rids) - acted,
            "phase": ActionPhase.DONE if done else ActionPhase.OPEN,
            "now": now,
        },
    )
    return Batch(new_cursor, acted, len(rids) - acted, done)


@transaction
def forget_actions(conn: Conn, before: float) -> int:
    """Delete the records of actions that finished before `before`."""
    return int(conn.execute(conn.q["forget_done_actions"], (before,)).rowcount)


def select_action(conn: Conn, op_id: int) -> dict[str, Any] | None:
    row = conn.execute(conn.q["select_action"], (op_id,)).fetchone()
    if row is None:
        return None
    keys = (
        "id",
        "action",
        "spec",
        "filter",
        "phase",
        "cutoff_rid",
        "cursor_rid",
        "acted",
        "skipped",
        "created_at",
        "updated_at",
    )
    return dict(zip(keys, row, strict=True))


# --- giving space back ---------------------------------------------------------------------------


def collect_payloads(conn: Conn) -> None:
    """Delete the payloads no row refers to any more (after a purge), and their files."""
    payloads.collect(conn)


def vacuum_step(conn: Conn, pages: int = VACUUM_STEP_PAGES) -> int:
    """Give up to `pages` free pages back to the file system (one short write); return how
    many it gave back, so a caller repeats while that is `pages`.

    Only files with auto_vacuum = INCREMENTAL (every file created by this version) can; in older
    files the free pages are reused by new rows instead, and the file keeps its size until a
    VACUUM (`executor vacuum`): 0 there.
    """
    if conn.dialect != "sqlite":
        # PostgreSQL's autovacuum makes the purged rows' space reusable on its own (and a plain
        # VACUUM would give back only empty pages at the end of a table): nothing to step.
        return 0
    if conn.execute(conn.q["auto_vacuum_mode"]).fetchone()[0] != 2:
        return 0
    free = int(conn.execute(conn.q["freelist_count"]).fetchone()[0])
    if free == 0:
        return 0
    # executescript steps the pragma to its end: execute() frees one page per step only.
    sqlite = cast("sqlite3.Connection", conn)
    sqlite.executescript(conn.q["incremental_vacuum"].format(pages=int(pages)))
    return free - int(conn.execute(conn.q["freelist_count"]).fetchone()[0])


def vacuum_file(conn: Conn) -> tuple[int, int]:
    """Rewrite the whole file (VACUUM) in incremental auto-vacuum mode; (bytes before, after).

    Holds the write lock for as long as it takes: for an offline maintenance window.

    PostgreSQL: VACUUM (FULL, ANALYZE) of the database, which rewrites each table to its
    smallest size and gives the rest back to the file system, each table locked (reads too)
    while it is copied; the sizes are the database's. It must not run inside a transaction: it
    runs on the client's connection between transactions (autocommit), and waits for each
    table's lock at most database.busy_timeout_s (a StoreBusy error while a daemon works).
    """
    before = database_bytes(conn)
    if conn.dialect == "sqlite":
        conn.execute(conn.q["set_auto_vacuum_incremental"])
    conn.execute(conn.q["vacuum"])
    return before, database_bytes(conn)


def database_bytes(conn: Conn) -> int:
    """The size of the database: the SQLite file's pages, or the PostgreSQL database's."""
    pages, size = conn.execute(conn.q["page_stats"]).fetchone()
    return int(pages) * int(size)
