"""Every error this package raises derives from ExecutorError.

The class docstring is the default message, so `raise RunNotFound()` still says something useful.
Driver errors (sqlite3, orjson) never escape on their own: they are wrapped and kept on __cause__.
This is also the one place an exception becomes a stored error (`describe`, `error_blob`).
"""

from __future__ import annotations

import traceback
from typing import Any

import orjson

_TRACEBACK_LIMIT_CHARS = 8192


class ExecutorError(Exception):
    """An executor error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(ExecutorError):
    """The configuration is invalid."""


class StoreError(ExecutorError):
    """The database could not be read or written."""

    # time.monotonic() when the operation that failed began (set by Database.run), so an outage
    # is timed from its first failed attempt, not from when that attempt gave up waiting.
    started_at: float | None = None


class StoreBusy(StoreError):
    """Another process held the database's write lock for longer than busy_timeout."""


class StoreWriteError(StoreError):
    """The database cannot be written (read-only file, full disk, I/O error)."""


class SchemaError(StoreError):
    """The database file cannot be used by this version of executor."""


class StoreCorrupt(StoreError):
    """The database file is damaged (SQLite reports corruption); nothing more is written to it."""


class InvalidArgument(ExecutorError, ValueError):
    """An argument is not acceptable (wrong type, out of range, or text that is not valid UTF-8)."""


class PayloadError(ExecutorError):
    """A payload could not be serialized, or is larger than the configured limit."""


class RegistryError(ExecutorError):
    """A workflow or step is unknown, or registered twice."""


class RunNotFound(ExecutorError):
    """No run with that id."""


class ScheduleNotFound(ExecutorError):
    """No schedule with that name."""


class WorkflowFailed(ExecutorError):
    """The run ended in failure."""

    def __init__(self, run_id: str, error: dict[str, object]) -> None:
        self.run_id = run_id
        self.error = error
        super().__init__(f"run {run_id} failed: {error.get('type')}: {error.get('message')}")


class RunCancelled(ExecutorError):
    """The run was cancelled."""


class RunParked(ExecutorError):
    """The run is parked: its code no longer matches its journal (see the run's error)."""


class ResultTimeout(ExecutorError, TimeoutError):
    """The run did not finish within the timeout."""


class StepFailed(ExecutorError):
    """A step failed for good (retries exhausted or a non-retryable error).

    Raised inside the workflow at the step's await, so the workflow can catch it.
    """

    def __init__(self, step: str, error: dict[str, object]) -> None:
        self.step = step
        self.error = error
        self.error_type = str(error.get("type", "Exception"))
        super().__init__(f"step {step} failed: {self.error_type}: {error.get('message')}")


class NonDeterminismError(ExecutorError):
    """The workflow code no longer matches the run's journal."""

    def __init__(self, run_id: str, position: int, journal: str, code: str) -> None:
        self.run_id = run_id
        self.position = position
        self.journal = journal
        self.code = code
        super().__init__(
            f"run {run_id}: nondeterminism at position {position}: "
            f"the journal holds {journal}, the code asked for {code}"
        )


class WaitTimeout(ExecutorError, TimeoutError):
    """No signal arrived before the wait's timeout (raised at `await ctx.wait_for(...)`).

    Give `default=` to get a value instead. Catchable: the workflow may carry on.
    """

    def __init__(self, topics: list[str], timeout_s: float | None, position: int) -> None:
        self.topics = topics
        self.timeout_s = timeout_s
        self.position = position
        which = topics[0] if len(topics) == 1 else f"any of {topics}"
        after = "" if timeout_s is None else f" within {timeout_s:g}s"
        super().__init__(f"no signal on {which}{after} (wait at position {position})")


class ChildFailed(ExecutorError):
    """A child workflow failed (raised at the parent's `await ctx.child(...)`; catchable)."""

    def __init__(self, child_id: str, error: dict[str, object]) -> None:
        self.child_id = child_id
        self.error = error  # the child's own error: {type, message, ...}
        super().__init__(
            f"child run {child_id} failed: {error.get('type')}: {error.get('message')}"
        )


class ChildCancelled(ExecutorError):
    """A child workflow was cancelled (raised at the parent's `await ctx.child(...)`)."""

    def __init__(self, child_id: str) -> None:
        self.child_id = child_id
        super().__init__(f"child run {child_id} was cancelled")


class WorkflowUsageError(ExecutorError):
    """A workflow did something that cannot be replayed (asyncio.sleep, not ctx.sleep, ...)."""


class RateLimited(ExecutorError):
    """The remote API asked us to slow down; the step is retried after `retry_after` seconds."""

    def __init__(self, retry_after: float | None = None, message: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message or f"rate limited; retry after {retry_after}s")


def error_blob(kind: str, message: str, **extra: Any) -> bytes:
    """An error as stored in the journal and on runs: JSON {type, message, ...}."""
    return orjson.dumps({"type": kind, "message": message, **extra})


def describe(exc: BaseException) -> bytes:
    """`exc` as a stored error: its type, message and traceback (truncated)."""
    tb = "".join(traceback.format_exception(exc))
    if len(tb) > _TRACEBACK_LIMIT_CHARS:
        tb = "...\n" + tb[-_TRACEBACK_LIMIT_CHARS:]
    extra: dict[str, Any] = {"traceback": tb}
    if isinstance(exc, StepFailed):
        extra["step"] = exc.step
    return error_blob(type(exc).__name__, str(exc), **extra)


class IdempotencyConflict(ExecutorError):
    """The idempotency key belongs to a run of another workflow, or with other arguments."""


class RunStateError(ExecutorError):
    """The run is not in a state that allows this (e.g. retrying a run that is still running)."""


class EngineHeld(ExecutorError):
    """Another live engine works on this database file."""


def unregistered(kind: str, name: str) -> bytes:
    """The error of a run parked because its workflow or a step's name is not registered in the
    engine that met it (a deploy mistake): resumable once the module is deployed."""
    return error_blob(
        "Unregistered",
        f"{kind} {name!r} is not registered in this daemon: deploy the module that defines it"
        " (daemon.workflows), then `executor resume` the run",
        **{kind: name},
    )
