"""Which runs: the filter shared by `executor list`, `executor runs ...`, `Client` and the views.

A leaf module: the CLI, the client, the dashboard and the store all speak `RunFilter`. The SQL that
applies it is one named statement per use in store/runfilter.sql; `params()` is what they bind.

Times are UNIX seconds. `RunFilter.parse` reads what an operator types: `--since 2h` (relative to
now), `--since 2026-11-27T14:00` (ISO 8601; without a zone it is UTC) or plain UNIX seconds.
Relative times are resolved once, when the filter is made, so an action that runs for minutes (or
is resumed after a crash) keeps the same window.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from executor.errors import ExecutorError

STATUSES = ("running", "parked", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")

MAX_LABELS = 16
MAX_LABEL_VALUE_CHARS = 256
_LABEL_KEY = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class FilterError(ExecutorError):
    """A run filter (or a label) is not valid."""


def check_labels(labels: Mapping[str, str] | None) -> str | None:
    """Labels as stored (JSON, keys sorted), or None; FilterError naming the bad one."""
    if labels is None or not labels:
        return None
    if not isinstance(labels, Mapping):
        raise FilterError(f"labels must be a dict of strings, got {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise FilterError(f"at most {MAX_LABELS} labels, got {len(labels)}")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise FilterError(
                f"label key {key!r}: expected 1 to 64 characters of letters, digits and _.:/-"
            )
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE_CHARS:
            raise FilterError(
                f"label {key}: the value must be a string of at most {MAX_LABEL_VALUE_CHARS}"
                f" characters, got {value!r:.80}"
            )
    return json.dumps(dict(sorted(labels.items())), ensure_ascii=False, separators=(",", ":"))


def parse_label(text: str) -> tuple[str, str]:
    """KEY=VALUE, as given to --label."""
    key, sep, value = text.partition("=")
    if not sep:
        raise FilterError(f"--label {text!r}: expected KEY=VALUE")
    check_labels({key: value})
    return key, value


def parse_time(text: str, now: float, what: str = "time") -> float:
    """A relative age (`2h`, `30m`, `7d`: that long before now), an ISO 8601 time (UTC when it
    names no zone) or UNIX seconds."""
    text = text.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(
            f"{what}: {text!r} is neither an age like 2h, 30m or 7d, nor an ISO 8601 time like"
            " 2026-11-27T14:00 (UTC unless it names a zone), nor UNIX seconds"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@dataclass(frozen=True, slots=True)
class RunFilter:
    """Runs that match every given field (an empty filter matches every run).

    workflow: the workflow's registered name; statuses: any of these; since/until: the run was
    started at or after `since` and before `until`; error: a substring (any case) of the error's
    type or message; step: the step whose failure ended the run (its full name, or the last dotted
    part of it); labels: every KEY=VALUE pair; finished_before: finished before this time.
    """

    workflow: str | None = None
    statuses: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    error: str | None = None
    step: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    finished_before: float | None = None

    def __post_init__(self) -> None:
        for status in self.statuses:
            if status not in STATUSES:
                raise FilterError(f"unknown status {status!r}; expected one of {STATUSES}")
        if self.labels:
            check_labels(dict(self.labels))

    @classmethod
    def parse(
        cls,
        *,
        workflow: str | None = None,
        status: Sequence[str] = (),
        since: str | None = None,
        until: str | None = None,
        error: str | None = None,
        step: str | None = None,
        label: Iterable[str] = (),
        now: float | None = None,
    ) -> RunFilter:
        """From command-line text (relative times resolved against `now`)."""
        now = time.time() if now is None else now
        statuses: list[str] = []
        for text in status:
            for part in text.split(","):
                if part.strip() and part.strip() not in statuses:
                    statuses.append(part.strip())
        return cls(
            workflow=workflow or None,
            statuses=tuple(statuses),
            since=None if since is None else parse_time(since, now, "--since"),
            until=None if until is None else parse_time(until, now, "--until"),
            error=error or None,
            step=step or None,
            labels=tuple(sorted(dict(parse_label(t) for t in label).items())),
        )

    @property
    def empty(self) -> bool:
        return self == RunFilter()

    def params(self) -> dict[str, Any]:
        """The named parameters of the filter clause in store/runfilter.sql."""
        return {
            "f_workflow": self.workflow,
            "f_statuses": json.dumps(list(self.statuses)) if self.statuses else None,
            "f_since": self.since,
            "f_until": self.until,
            "f_error": self.error.lower() if self.error else None,
            "f_step": self.step,
            "f_step_suffix": None if self.step is None else "." + self.step,
            "f_labels": json.dumps(dict(self.labels)) if self.labels else None,
            "f_finished_before": self.finished_before,
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "workflow": self.workflow,
                "statuses": list(self.statuses),
                "since": self.since,
                "until": self.until,
                "error": self.error,
                "step": self.step,
                "labels": dict(self.labels),
                "finished_before": self.finished_before,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> RunFilter:
        raw = json.loads(text)
        return cls(
            workflow=raw["workflow"],
            statuses=tuple(raw["statuses"]),
            since=raw["since"],
            until=raw["until"],
            error=raw["error"],
            step=raw["step"],
            labels=tuple(sorted(raw["labels"].items())),
            finished_before=raw["finished_before"],
        )

    def describe(self) -> str:
        """One line for logs and confirmations, e.g. `workflow=w status=failed label batch=7`."""
        parts = []
        if self.workflow:
            parts.append(f"workflow={self.workflow}")
        if self.statuses:
            parts.append("status=" + ",".join(self.statuses))
        for name, value in (("since", self.since), ("until", self.until)):
            if value is not None:
                parts.append(f"{name}={_iso(value)}")
        if self.error:
            parts.append(f"error~{self.error!r}")
        if self.step:
            parts.append(f"step={self.step}")
        parts.extend(f"label {k}={v}" for k, v in self.labels)
        if self.finished_before is not None:
            parts.append(f"finished before {_iso(self.finished_before)}")
        return " ".join(parts) or "every run"


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
