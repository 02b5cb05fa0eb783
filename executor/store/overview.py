"""Reads for the dashboard and `executor watch`: failures grouped by what went wrong, and a
batch's progress (runs by filter are store/actions.py's).

Read-only; each function is one query on a read-only connection (store/reader.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from executor.runfilter import RunFilter
from executor.store.conn import Conn
from executor.vocabulary import FINISHED, RunState


@dataclass(frozen=True, slots=True)
class FailureGroup:
    workflow: str
    status: str  # failed | parked
    step: str | None
    error_type: str | None
    runs: int
    first_at: float
    last_at: float
    sample_run: str
    sample_message: str | None


def failure_groups(conn: Conn, since: float, limit: int = 200) -> list[FailureGroup]:
    """Failed and parked runs started since `since`, by (workflow, status, step, error type)."""
    return [
        FailureGroup(*row)
        for row in conn.execute(conn.q["failure_groups"], {"since": since, "limit": limit})
    ]


def workflow_names(conn: Conn) -> list[str]:
    return [name for (name,) in conn.execute(conn.q["workflow_names"])]


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """Runs of a batch by status, and the journal events they recorded (steps finished)."""

    runs: dict[str, int]
    events: int

    @property
    def total(self) -> int:
        return sum(self.runs.values())

    @property
    def finished(self) -> int:
        return sum(n for status, n in self.runs.items() if status in FINISHED)

    @property
    def running(self) -> int:
        return self.runs.get(RunState.RUNNING, 0)


def batch_progress(conn: Conn, where: RunFilter) -> BatchProgress:
    runs: dict[str, int] = {}
    events = 0
    for status, count, recorded in conn.execute(conn.q["batch_progress"], where.params()):
        runs[status] = count
        events += recorded
    return BatchProgress(runs, events)
