"""`executor check`: read a database and report every broken invariant, with the runs concerned.

It needs no daemon and changes nothing: the file is opened read-only and every query reads one
snapshot (a single read transaction), so it is safe while a daemon runs. The invariants are the
ones the store's transactions keep (see store/repository.py):

    stuck_run               a running run has a task, a timer or a replay entry to progress with,
                            or waits for a signal (legitimately idle, even with no timeout)
    lost_step               a pending step of a running (or parked) run has its task (or its
                            timer, a sleep; its wait rows, a wait for a signal)
    task_of_recorded_step   a step's task is deleted by the transaction recording its result
    timer_of_recorded_step  ... and so is a sleep's timer
    wait_of_recorded_step   ... and so are a wait's rows
    lost_message            no unread message sits on the topic of a pending wait (the wait
                            would never see it)
    child_done_parent_pending  a finished child's end is in its parent's journal
    orphan_child            a finished run has no running (or parked) child
    leftover_of_finished_run  finishing a run deletes its queued tasks and timers
    seq_mismatch            a step has a seq exactly when its result is recorded
    duplicate_seq           no two results of a run share a seq (a result is recorded once)
    seq_gap                 the results of a run carry seqs 1..last_seq
    position_gap            a run's journal holds positions 0..n-1
    stale_claim             an in-flight claim belongs to a live engine (heartbeat within the lease)
    bad_replay              a finished run has no replay entry; none is ahead of its journal
    dangling_row            every task, timer, step and replay entry belongs to an existing row
    missing_payload         every payload a row refers to exists, and so does its file
    refcount_mismatch       a stored payload's reference count matches the rows that refer to it
    held_task_of_running_run  a step held back because its name was not registered (the run is
                            parked) belongs to a parked run: resume and retry release it
    bad_action              an action by filter is open or done, and its cursor never passes
                            the last run that existed when it began
    orphan_payload_file     every file in <database>.payloads/ belongs to a stored payload (a
                            crash between writing a file and committing it leaves one: harmless,
                            removed by retention after an hour)

Before those, SQLite's quick_check reads the whole file: damage (a torn page, bytes overwritten)
is reported as corrupt_file, and the invariants are not checked on a damaged file. On PostgreSQL
the invariants are checked the same way, in one REPEATABLE READ snapshot of a read-only session;
the server checks its own pages (there is no quick_check to run), and large payloads have no files.

A claim of an engine that died is reported until a live engine takes it back: at once when the
dead engine ran on the same host, else once its heartbeat is older than the lease. Right after a
crash, stale claims are expected; any other kind of problem is a bug.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from executor import config, errors, vocabulary
from executor.store import database as database_file
from executor.store import payloads
from executor.store.conn import Conn, SqliteConn
from executor.store.database import APPLICATION_ID, SCHEMA_VERSION
from executor.store.reader import database_config, reading

STUCK_RUN = "stuck_run"
LOST_STEP = "lost_step"
TASK_OF_RECORDED_STEP = "task_of_recorded_step"
TIMER_OF_RECORDED_STEP = "timer_of_recorded_step"
WAIT_OF_RECORDED_STEP = "wait_of_recorded_step"
LOST_MESSAGE = "lost_message"
CHILD_DONE_PARENT_PENDING = "child_done_parent_pending"
ORPHAN_CHILD = "orphan_child"
LEFTOVER_OF_FINISHED_RUN = "leftover_of_finished_run"
SEQ_MISMATCH = "seq_mismatch"
DUPLICATE_SEQ = "duplicate_seq"
SEQ_GAP = "seq_gap"
POSITION_GAP = "position_gap"
STALE_CLAIM = "stale_claim"
BAD_REPLAY = "bad_replay"
DANGLING_ROW = "dangling_row"
CORRUPT_FILE = "corrupt_file"
MISSING_PAYLOAD = "missing_payload"
REFCOUNT_MISMATCH = "refcount_mismatch"
ORPHAN_PAYLOAD_FILE = "orphan_payload_file"
HELD_TASK_OF_RUNNING_RUN = "held_task_of_running_run"
BAD_ACTION = "bad_action"

KINDS = (
    CORRUPT_FILE,
    STUCK_RUN,
    LOST_STEP,
    TASK_OF_RECORDED_STEP,
    TIMER_OF_RECORDED_STEP,
    WAIT_OF_RECORDED_STEP,
    LOST_MESSAGE,
    CHILD_DONE_PARENT_PENDING,
    ORPHAN_CHILD,
    LEFTOVER_OF_FINISHED_RUN,
    SEQ_MISMATCH,
    DUPLICATE_SEQ,
    SEQ_GAP,
    POSITION_GAP,
    STALE_CLAIM,
    BAD_REPLAY,
    DANGLING_ROW,
    HELD_TASK_OF_RUNNING_RUN,
    BAD_ACTION,
    MISSING_PAYLOAD,
    REFCOUNT_MISMATCH,
    ORPHAN_PAYLOAD_FILE,
)

# The text summary lists this many problems of each kind; --json lists them all.
SUMMARY_PER_KIND = 20
INTEGRITY_MAX_ERRORS = 20
_INTEGRITY_DETAIL_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken invariant: its kind (one of KINDS), the run (None if it has none) and what."""

    kind: str
    run_id: str | None
    detail: str

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "run_id": self.run_id, "detail": self.detail}


@dataclass(slots=True)
class Report:
    """What `check` found in one snapshot of one database file."""

    path: Path | str  # the file, or the PostgreSQL URL without its password
    checked_at: float  # UNIX seconds
    lease_s: float
    runs: int  # runs in the snapshot
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        """Problems per kind, in KINDS order."""
        found = Counter(p.kind for p in self.problems)
        return {kind: found[kind] for kind in KINDS if found[kind]}

    def run_ids(self) -> set[str]:
        return {p.run_id for p in self.problems if p.run_id is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "checked_at": self.checked_at,
            "lease_s": self.lease_s,
            "runs": self.runs,
            "ok": self.ok,
            "counts": self.counts(),
            "problems": [p.to_dict() for p in self.problems],
        }

    def summary(self, per_kind: int = SUMMARY_PER_KIND) -> str:
        """Human-readable lines: a verdict, then the problems of each kind (the first few)."""
        if self.ok:
            return f"{self.path}: ok: {self.runs} runs, no broken invariant"
        counts = self.counts()
        total = ", ".join(f"{n} {kind}" for kind, n in counts.items())
        ids = self.run_ids()
        where = f" in {len(ids)} runs (of {self.runs})" if ids else ""
        lines = [f"{self.path}: {len(self.problems)} problems{where}: {total}"]
        for kind in counts:
            shown = [p for p in self.problems if p.kind == kind]
            lines.extend(f"  {kind}: run {p.run_id or '-'}: {p.detail}" for p in shown[:per_kind])
            if len(shown) > per_kind:
                lines.append(f"  {kind}: ... and {len(shown) - per_kind} more (use --json)")
        return "\n".join(lines)


def check(
    database: config.DatabaseConfig | Path | str,
    *,
    lease_s: float | None = None,
    now: float | None = None,
) -> Report:
    """Check the database and return a Report (never modifies it).

    `database`: a DatabaseConfig, a file's path or a PostgreSQL URL. `lease_s` (default:
    engine.lease_s's default) is how old an engine's heartbeat may be before its claims count as
    stale. Raises StoreError (SchemaError for a database that is not a current executor
    database), naming the database.
    """
    cfg = database_config(database)
    lease_s = config.EngineConfig().lease_s if lease_s is None else lease_s
    now = time.time() if now is None else now
    if cfg.url:
        # A read-only session (the reader checked it is an executor database of this version).
        # The server checks its own pages: there is no file check to run first.
        with reading(cfg, "check") as conn:
            conn.execute(conn.q["begin_read"])  # one snapshot; closing the session ends it
            return _invariants(conn, cfg.where, lease_s, now)
    path = cfg.path
    database_file.require_file(path)
    try:
        # mode=ro: never creates, migrates or writes the file, whatever happens below.
        sqlite = database_file.connect_read_only(path, cfg.busy_timeout_s)
    except sqlite3.Error as exc:
        raise errors.StoreError(
            f"{path}: cannot open the database read-only: {exc}"
            + (f" ({cause})" if (cause := database_file.read_blocker(path)) else "")
        ) from exc
    try:
        return _check(sqlite, path, lease_s, now)
    except sqlite3.Error as exc:
        raise database_file.classify(path, "check", exc, "opened read-only") from exc
    finally:
        sqlite.close()


def _check(conn: SqliteConn, path: Path, lease_s: float, now: float) -> Report:
    app_id, version = conn.execute(conn.q["check_header"]).fetchone()
    if app_id != APPLICATION_ID:
        raise errors.SchemaError(f"{path}: not an executor database (application_id={app_id:#x})")
    if version != SCHEMA_VERSION:
        raise errors.SchemaError(
            f"{path}: schema version {version}, but this executor checks version"
            f" {SCHEMA_VERSION}"
            + ("; upgrade executor" if version > SCHEMA_VERSION else "; run `executor migrate`")
        )
    # One read transaction: every query below sees the same snapshot, and writers (a daemon)
    # go on meanwhile, since WAL readers never block them.
    conn.execute(conn.q["begin_read"])
    try:
        try:
            damage = [
                row[0]
                for row in conn.execute(
                    conn.q["check_integrity"], {"max_errors": INTEGRITY_MAX_ERRORS}
                )
                if row[0] != "ok"
            ]
        except sqlite3.DatabaseError as exc:  # damage bad enough to stop the check itself
            damage = [str(exc)]
        if damage:
            # The invariant queries would fail or mislead on a damaged file: report the damage.
            report = Report(path, now, lease_s, 0)
            for text in damage:
                report.problems.append(
                    Problem(CORRUPT_FILE, None, " ".join(text.split())[:_INTEGRITY_DETAIL_CHARS])
                )
            return report
        return _invariants(conn, path, lease_s, now)
    finally:
        # A read transaction has nothing to commit; after damage even ROLLBACK may complain.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _invariants(conn: Conn, where: Path | str, lease_s: float, now: float) -> Report:
    """Every invariant query, in the read transaction `conn` is in."""
    report = Report(where, now, lease_s, conn.execute(conn.q["check_count_runs"]).fetchone()[0])
    for kind, query, describe, params in _CHECKS:
        for row in conn.execute(conn.q[query], params(now, lease_s)):
            run_id, detail = describe(row)
            report.problems.append(Problem(kind, run_id, detail))
    _check_payloads(conn, where, report)
    return report


def _no_params(now: float, lease_s: float) -> dict[str, float]:
    return {}


def _stale_before(now: float, lease_s: float) -> dict[str, float]:
    return {"stale_before": now - lease_s}


def _stuck(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, last_seq, pending = row
    return run_id, (
        f"running with no queued or in-flight task, no timer and no replay entry"
        f" ({last_seq} results recorded, {pending} steps pending)"
    )


def _lost(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, pos, kind, name, status = row
    what = {"sleep": "timer", "wait": "wait rows", "child": "child run"}.get(kind, "task")
    parked = " (the run is parked: resuming it would wait forever)" if status == "parked" else ""
    return run_id, f"{kind} {name} at position {pos} is pending but has no {what}{parked}"


def _task_of_recorded(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, pos, name, status, claimed = row
    state = "in-flight" if claimed else "queued"
    return run_id, f"{state} task for step {name} at position {pos}, whose result is {status}"


def _timer_of_recorded(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, pos, status = row
    return run_id, f"timer for the sleep at position {pos}, which is already {status}"


def _wait_of_recorded(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, pos, topic, status = row
    return run_id, f"wait on {topic} at position {pos}, which is already {status}"


def _lost_message(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, pos, topic, message_id = row
    return run_id, (
        f"message {message_id} on {topic} is unread while the wait at position {pos} waits for it"
    )


def _child_done(row: Iterable[Any]) -> tuple[str | None, str]:
    parent_id, pos, child_id, status = row
    return parent_id, f"child run {child_id} is {status}, but position {pos} still waits for it"


def _orphan(row: Iterable[Any]) -> tuple[str | None, str]:
    child_id, parent_id, parent_status, status = row
    return child_id, f"{status}, but its parent {parent_id} is {parent_status}"


def _leftover(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, status, what, pos = row
    return run_id, f"{what} at position {pos} of a run that is {status}"


def _seq_mismatch(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, pos, name, status, seq = row
    if status not in set(vocabulary.StepState):
        return run_id, f"step {name} at position {pos} has an unknown status {status!r}"
    if seq is None:
        return run_id, f"step {name} at position {pos} is {status} but has no seq"
    return run_id, f"step {name} at position {pos} is pending but has seq {seq}"


def _duplicate_seq(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, seq, count, positions = row
    return run_id, f"seq {seq} is held by {count} results (positions {positions})"


def _seq_gap(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, last_seq, distinct, low, high = row
    return run_id, (
        f"recorded results carry {distinct} distinct seqs from {low} to {high},"
        f" expected 1..{last_seq} (runs.last_seq)"
    )


def _position_gap(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, count, low, high = row
    return run_id, f"{count} journal entries at positions {low}..{high}, expected 0..{count - 1}"


def _stale_claim(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, pos, engine, state, heartbeat_at = row
    if state is None:
        holder = f"engine {engine}, which is not registered"
    elif state in vocabulary.LIVE_ENGINE_STATES:
        holder = f"engine {engine} ({state}), whose last heartbeat is past the lease"
        holder += f" (at {heartbeat_at:.3f})"
    else:
        holder = f"engine {engine}, which is {state} (its claims should have been released)"
    return run_id, f"the task at position {pos} is claimed by {holder}"


def _bad_replay(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, status, seq, last_seq = row
    if status in vocabulary.FINISHED:
        return run_id, f"replay entry (seq {seq}) for a run that is {status}"
    return run_id, f"replay entry at seq {seq}, ahead of the journal (last_seq {last_seq})"


def _dangling(row: Iterable[Any]) -> tuple[str | None, str]:
    what, rid, pos = row
    if what == "message":
        return None, f"message {pos} to run rid {rid}, which does not exist"
    where = f"run rid {rid}" + ("" if pos is None else f", position {pos}")
    parent = "run" if what in ("step", "replay entry") else "step"
    return None, f"{what} ({where}) whose {parent} does not exist"


def _check_payloads(conn: Conn, where: Path | str, report: Report) -> None:
    # Large payloads live in files beside a SQLite file; on PostgreSQL they stay in the table.
    path = where if conn.dialect == "sqlite" else None
    for run_id, what, pos, pid in conn.execute(conn.q["check_missing_payloads"]):
        column = what if pos is None else f"{what} at position {pos}"
        report.problems.append(
            Problem(MISSING_PAYLOAD, run_id, f"{column} refers to payload {pid}, which is missing")
        )
    for name in payloads.missing_files(conn, path):
        report.problems.append(
            Problem(MISSING_PAYLOAD, None, f"the file {name} of a stored payload is missing")
        )
    for pid, stored, counted in conn.execute(conn.q["check_payload_refcounts"]):
        report.problems.append(
            Problem(
                REFCOUNT_MISMATCH,
                None,
                f"payload {pid} counts {stored} references, but {counted} rows refer to it",
            )
        )
    for name in payloads.orphan_files(conn, path):
        report.problems.append(
            Problem(
                ORPHAN_PAYLOAD_FILE, None, f"{payloads.folder(where) / name} has no payload row"
            )
        )


def _held_task(row: Iterable[Any]) -> tuple[str | None, str]:
    run_id, pos, name = row
    return run_id, (
        f"the task of step {name} at position {pos} is held back as unregistered, but the run"
        " is running: no engine will claim it"
    )


def _bad_action(row: Iterable[Any]) -> tuple[str | None, str]:
    op_id, action, phase, cursor, cutoff = row
    return None, (
        f"action {op_id} ({action}, {phase}): cursor at run rid {cursor}, cutoff {cutoff}"
        if cursor > cutoff
        else f"action {op_id} has an unknown action or phase ({action}, {phase})"
    )


_Describe = Callable[[Iterable[Any]], tuple[str | None, str]]
_Params = Callable[[float, float], dict[str, float]]

_CHECKS: tuple[tuple[str, str, _Describe, _Params], ...] = (
    (STUCK_RUN, "check_stuck_runs", _stuck, _no_params),
    (LOST_STEP, "check_lost_steps", _lost, _no_params),
    (TASK_OF_RECORDED_STEP, "check_tasks_of_recorded_steps", _task_of_recorded, _no_params),
    (TIMER_OF_RECORDED_STEP, "check_timers_of_recorded_steps", _timer_of_recorded, _no_params),
    (WAIT_OF_RECORDED_STEP, "check_waits_of_recorded_steps", _wait_of_recorded, _no_params),
    (LOST_MESSAGE, "check_unread_messages_of_waits", _lost_message, _no_params),
    (CHILD_DONE_PARENT_PENDING, "check_children_done_parent_pending", _child_done, _no_params),
    (ORPHAN_CHILD, "check_orphan_children", _orphan, _no_params),
    (LEFTOVER_OF_FINISHED_RUN, "check_leftovers_of_finished_runs", _leftover, _no_params),
    (SEQ_MISMATCH, "check_seq_mismatches", _seq_mismatch, _no_params),
    (DUPLICATE_SEQ, "check_duplicate_seqs", _duplicate_seq, _no_params),
    (SEQ_GAP, "check_seq_gaps", _seq_gap, _no_params),
    (POSITION_GAP, "check_position_gaps", _position_gap, _no_params),
    (STALE_CLAIM, "check_stale_claims", _stale_claim, _stale_before),
    (BAD_REPLAY, "check_bad_replays", _bad_replay, _no_params),
    (DANGLING_ROW, "check_dangling_rows", _dangling, _no_params),
    (HELD_TASK_OF_RUNNING_RUN, "check_held_tasks_of_running_runs", _held_task, _no_params),
    (BAD_ACTION, "check_bad_actions", _bad_action, _no_params),
)
