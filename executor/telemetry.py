"""What the engine counts for metrics and the dashboard, in plain Python.

The engine bumps these in memory (a dict lookup, an increment and a bisect per step) and
writes a snapshot to the database every heartbeat (store/samples.py). Prometheus families are
built from that snapshot by another thread or process (executor/exporter.py), so the engine
never formats metrics, and the numbers survive in the file for `executor serve` while no
daemon runs.
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

# Step outcomes, the `outcome` label of executor_steps_total, in the order of StepStats.counts.
SUCCEEDED = "succeeded"
FAILED = "failed"  # for good: no attempt left, or not retryable
RETRIED = "retried"  # this attempt failed; another one follows
RATE_LIMITED = "rate_limited"  # a 429 (RateLimited): the step goes back to the queue
OUTCOMES = (SUCCEEDED, FAILED, RETRIED, RATE_LIMITED)

# Members bound once: an enum attribute lookup costs more than the counting itself.
_DONE, _RETRY, _RELEASE = OutcomeKind.DONE, OutcomeKind.RETRY, OutcomeKind.RELEASE
_SUCCEEDED = StepState.SUCCEEDED


class Histogram:
    """Bucket counts (cumulated at export) and a sum; the count is the counts' total."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": self.counts, "sum": self.sum}


class StepStats:
    """One step of one workflow: attempts by outcome (OUTCOMES order) and their durations."""

    __slots__ = ("counts", "seconds")

    def __init__(self) -> None:
        self.counts = [0, 0, 0, 0]
        self.seconds = Histogram(STEP_BUCKETS)


class Telemetry:
    """Counters and histograms of one engine since it started.

    The per-step path is one dict lookup, an index increment and a bisect: totals are summed
    when a snapshot is taken (every heartbeat), not counted per step.
    """

    def __init__(self) -> None:
        self.steps: dict[tuple[str, str], StepStats] = {}  # (workflow, step) ->
        self.flush_size = Histogram(FLUSH_SIZE_BUCKETS)
        self.commit_seconds = Histogram(COMMIT_BUCKETS)

    def outcome(self, c: Claimed, o: Outcome, seconds: float) -> None:
        """Count one attempt of a step by how it ended."""
        kind = o.kind
        if kind is _DONE:
            i = 0 if o.status == _SUCCEEDED else 1
        elif kind is _RETRY:
            i = 2
        elif kind is _RELEASE and o.error is not None:  # a 429; without an error, a quota wait
            i = 3
        else:
            return
        key = (c.workflow, c.name)
        stats = self.steps.get(key)
        if stats is None:
            stats = self.steps[key] = StepStats()
        stats.counts[i] += 1
        hist = stats.seconds
        hist.counts[bisect.bisect_left(hist.bounds, seconds)] += 1
        hist.sum += seconds

    def flushed(self, size: int, seconds: float) -> None:
        self.flush_size.observe(size)
        self.commit_seconds.observe(seconds)

    def totals(self) -> tuple[int, int, int]:
        """(steps finished: succeeded or failed for good, failed attempts, 429s)."""
        done = failures = limited = 0
        for stats in self.steps.values():
            ok, failed, retried, rate_limited = stats.counts
            done += ok + failed
            failures += failed + retried
            limited += rate_limited
        return done, failures, limited

    def snapshot(self) -> dict[str, Any]:
        by_step: dict[str, Histogram] = {}
        for (_, name), stats in self.steps.items():
            hist = by_step.get(name)
            if hist is None:
                hist = by_step[name] = Histogram(STEP_BUCKETS)
            hist.add(stats.seconds)
        return {
            "steps": [
                [w, s, outcome, n]
                for (w, s), stats in self.steps.items()
                for outcome, n in zip(OUTCOMES, stats.counts, strict=True)
                if n
            ],
            "step_seconds": {name: h.snapshot() for name, h in by_step.items()},
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
        done, failures, limited = self.totals()
        sample = Sample(
            engine_id,
            now,
            done,
            failures,
            load.get("finished", 0),
            load.get("in_flight", 0),
            load.get("slots", 0),
            limited,
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
