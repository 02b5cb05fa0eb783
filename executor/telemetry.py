"""What the engine counts for metrics and the dashboard, in plain Python.

The engine bumps these in memory (a dict increment and a bisect per step) and writes a snapshot
to the database every heartbeat (store/samples.py). Prometheus families are built from that
snapshot by another thread or process (executor/exporter.py), so the engine never formats
metrics and the numbers survive in the file for `executor serve` while no daemon runs.
"""

from __future__ import annotations

import bisect
from typing import Any

import orjson

from executor.store.samples import Sample
from executor.vocabulary import Claimed, Outcome, OutcomeKind, StepState

# Seconds. Steps wait on remote APIs (LLM calls 0.5-30 s) or run in microseconds (noop).
STEP_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
FLUSH_SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

# Step outcomes, the `outcome` label of executor_steps_total.
SUCCEEDED = "succeeded"
FAILED = "failed"  # for good: no attempt left, or not retryable
RETRIED = "retried"  # this attempt failed; another one follows
RATE_LIMITED = "rate_limited"  # a 429 (RateLimited): the step goes back to the queue


class Histogram:
    """Cumulative-at-export bucket counts, a sum and a count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": self.counts, "sum": self.sum}


class Telemetry:
    """Counters and histograms of one engine since it started."""

    def __init__(self) -> None:
        # (workflow, step, outcome) -> count
        self.steps: dict[tuple[str, str, str], int] = {}
        self.step_seconds: dict[str, Histogram] = {}
        self.flush_size = Histogram(FLUSH_SIZE_BUCKETS)
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        self.steps_done = 0  # succeeded or failed for good
        self.step_failures = 0  # failed attempts, retried or not
        self.rate_limited = 0

    def step(self, workflow: str, name: str, outcome: str, seconds: float) -> None:
        key = (workflow, name, outcome)
        self.steps[key] = self.steps.get(key, 0) + 1
        if outcome in (SUCCEEDED, FAILED):
            self.steps_done += 1
        if outcome in (FAILED, RETRIED):
            self.step_failures += 1
        elif outcome == RATE_LIMITED:
            self.rate_limited += 1
        hist = self.step_seconds.get(name)
        if hist is None:
            hist = self.step_seconds[name] = Histogram(STEP_BUCKETS)
        hist.observe(seconds)

    def outcome(self, c: Claimed, o: Outcome, seconds: float) -> None:
        """Count one attempt of a step by how it ended."""
        if o.kind == OutcomeKind.DONE:
            self.step(
                c.workflow,
                c.name,
                SUCCEEDED if o.status == StepState.SUCCEEDED else FAILED,
                seconds,
            )
        elif o.kind == OutcomeKind.RETRY:
            self.step(c.workflow, c.name, RETRIED, seconds)
        elif o.kind == OutcomeKind.RELEASE and o.error is not None:  # a 429; else a quota wait
            self.step(c.workflow, c.name, RATE_LIMITED, seconds)

    def flushed(self, size: int, seconds: float) -> None:
        self.flush_size.observe(size)
        self.commit_seconds.observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        return {
            "steps": [[w, s, o, n] for (w, s, o), n in self.steps.items()],
            "step_seconds": {name: h.snapshot() for name, h in self.step_seconds.items()},
            "flush_size": self.flush_size.snapshot(),
            "commit_seconds": self.commit_seconds.snapshot(),
        }

    def sample(
        self,
        engine_id: int,
        now: float,
        load: dict[str, int],
        limits: dict[str, Any] | None,
    ) -> tuple[Sample, bytes]:
        """The sample row and the metrics snapshot to store at this heartbeat; `load` is
        Engine.load() (slots, in flight, counters)."""
        summary = limit_summary(limits) if limits is not None else None
        sample = Sample(
            engine_id,
            now,
            self.steps_done,
            self.step_failures,
            load.get("finished", 0),
            load.get("in_flight", 0),
            load.get("slots", 0),
            self.rate_limited,
            summary,
        )
        snapshot = {
            **self.snapshot(),
            "load": load,
            "limits": summary or {},
        }
        return sample, orjson.dumps(snapshot)


def limit_summary(snapshot: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per limit name (never per key: keys may be tenants): how full it is, 0..1 (the busiest of
    its rates and concurrency, over its keys), and the 429s it has seen."""
    out: dict[str, dict[str, float]] = {}
    for entry in snapshot.get("limits") or ():
        name = entry.get("limit")
        if not name or entry.get("idle"):
            continue
        fill = 0.0
        for rate in (entry.get("rates") or {}).values():
            if rate.get("effective"):
                fill = max(fill, rate.get("used", 0) / rate["effective"])
        concurrent = entry.get("concurrent")
        if concurrent and concurrent.get("effective"):
            fill = max(fill, entry.get("in_flight", 0) / concurrent["effective"])
        agg = out.setdefault(name, {"saturation": 0.0, "rate_limited": 0})
        agg["saturation"] = round(max(agg["saturation"], min(fill, 1.0)), 4)
        agg["rate_limited"] += entry.get("rate_limited", 0)
    return out
