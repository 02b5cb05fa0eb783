"""What the Client answers: a run's status, a page of runs, an action's report, a schedule.

The CLI and the dashboard render these; the store's own row types stay behind the Client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from executor import codec, vocabulary
from executor.runfilter import RunFilter
from executor.store import history
from executor.store import schedules as stored_schedules
from executor.store.history import RunHistory, Waiting, error_line
from executor.store.overview import BatchProgress

__all__ = [
    "RUN_STATUSES",
    "ActionReport",
    "BatchProgress",
    "RunHistory",
    "RunPage",
    "RunStatus",
    "ScheduleInfo",
    "Waiting",
    "error_line",
    "status_of",
]

# Every run status, the unfinished ones first (for `executor list --status` and the stats table).
RUN_STATUSES: tuple[str, ...] = (
    vocabulary.RunState.RUNNING,
    vocabulary.RunState.PARKED,
    *sorted(vocabulary.FINISHED),
)


@dataclass(frozen=True, slots=True)
class RunStatus:
    id: str
    workflow: str
    version: str | None
    status: str  # running | parked | succeeded | failed | cancelled
    shard: int
    created_at: float
    updated_at: float
    finished_at: float | None
    events: int  # journal results recorded so far
    error: dict[str, Any] | None
    # Client.status only: the pending step with the highest position, else the last one
    # ({pos, kind, name, status, attempts, error}); None in lists and for a run with no steps.
    current_step: dict[str, Any] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    generation: int = 0  # retries in place so far
    forked_from: str | None = None  # the run this one was forked from

    @property
    def finished(self) -> bool:
        return self.status in vocabulary.FINISHED

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


def status_of(row: vocabulary.RunRow, step: history.CurrentStep | None = None) -> RunStatus:
    return RunStatus(
        id=row.id,
        workflow=row.workflow,
        version=row.version,
        status=row.status,
        shard=row.shard,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        events=row.last_seq,
        error=None if row.error is None else codec.decode(row.error),
        current_step=None if step is None else step._asdict(),
        labels={} if row.labels is None else codec.decode(row.labels),
        generation=row.generation,
        forked_from=row.forked_from,
    )


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    name: str
    workflow: str
    cron: str
    timezone: str
    args: list[Any]
    catchup: str
    overlap: str
    source: str  # config | client
    paused: bool
    next_fire_at: float
    last_fire_at: float | None
    last_run_id: str | None
    fired: int  # runs started
    skipped: int  # ticks not started (catch-up or overlap policy)

    @classmethod
    def of(cls, row: stored_schedules.ScheduleRow) -> ScheduleInfo:
        return cls(**{**row._asdict(), "args": codec.decode(row.args), "paused": bool(row.paused)})

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


@dataclass(frozen=True, slots=True)
class RunPage:
    """A page of runs, newest first; `cursor` fetches the next one (None: this was the last)."""

    runs: list[RunStatus]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class ActionReport:
    """What an action on runs by filter did (over every attempt, if it was resumed)."""

    id: int
    action: str
    acted: int  # runs changed
    skipped: int  # runs that matched but were no longer in a state to act on
    resumed: bool  # it continued an unfinished action with the same action, filter, parameters
    done: bool
    filter: RunFilter

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            "acted": self.acted,
            "skipped": self.skipped,
            "resumed": self.resumed,
            "done": self.done,
            "filter": self.filter.describe(),
        }
