"""Prometheus metrics of one database, built fresh at every scrape.

A prometheus_client custom collector: the queues, runs and limits come from the database (one read
snapshot), the engines' counters and histograms from the snapshot each engine stores every
heartbeat (executor/telemetry.py). So the same numbers come out of the daemon's optional endpoint
([metrics] port) and of `executor serve`, which works with no daemon running.

Labels are bounded by code and config: workflow, step and limit names, shard numbers, statuses.
Never a run id, an idempotency key, a limit key or a concurrency key (tenants are unbounded).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from executor import config
from executor.store import actions, history, queues, samples
from executor.store.reader import database_config, reading
from executor.vocabulary import FINISHED as FINISHED_STATES

_TASK_STATES = ("queued", "waiting", "in_flight", "parked")


class Exporter(Collector):
    """Collects executor_* metrics from `database` (read-only)."""

    def __init__(self, database: config.DatabaseConfig | Path, busy_timeout_s: float = 5.0) -> None:
        self.database = database_config(database, busy_timeout_s)

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        with reading(self.database, "metrics") as conn:
            stats = queues.stats(conn, now)
            runs = history.runs_by_workflow(conn)
            engines = samples.engine_metrics(conn)
            # A server's database has no file of its own to stat: its size as the server counts it.
            size = actions.database_bytes(conn) if self.database.url else None
        yield from _runs(runs)
        yield from _queues(stats)
        yield from _engines(engines, stats, now)
        yield from _limits(stats.get("limits") or [])
        yield from self._files(size)

    def _files(self, server_size: int | None) -> Iterator[Metric]:
        size = GaugeMetricFamily("executor_db_size_bytes", "Size of the database file.")
        if server_size is not None:
            # PostgreSQL: the database's size; its write-ahead log is the server's, shared by
            # every database of the cluster, so there is no executor_db_wal_bytes.
            size.add_metric([], server_size)
            yield size
            return
        path = self.database.path
        size.add_metric([], _size(path))
        wal = GaugeMetricFamily("executor_db_wal_bytes", "Size of the write-ahead log.")
        wal.add_metric([], _size(path.with_name(path.name + "-wal")))
        yield size
        yield wal


def registry_for(
    database: config.DatabaseConfig | Path, busy_timeout_s: float = 5.0
) -> CollectorRegistry:
    """A registry holding only the executor collector (no process or Python metrics: those
    would describe `executor serve`, not the daemon)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Exporter(database, busy_timeout_s))
    return registry


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _runs(rows: list[tuple[str, str, int]]) -> Iterator[Metric]:
    by_status = GaugeMetricFamily(
        "executor_runs",
        "Runs in the database by workflow and status.",
        labels=["workflow", "status"],
    )
    started = CounterMetricFamily(
        "executor_runs_started",
        "Runs started, by workflow (runs purged from the file no longer count).",
        labels=["workflow"],
    )
    finished = CounterMetricFamily(
        "executor_runs_finished",
        "Runs finished, by workflow and status (succeeded, failed, cancelled).",
        labels=["workflow", "status"],
    )
    totals: dict[str, int] = {}
    for workflow, status, count in rows:
        by_status.add_metric([workflow, status], count)
        totals[workflow] = totals.get(workflow, 0) + count
        if status in FINISHED_STATES:
            finished.add_metric([workflow, status], count)
    for workflow, count in totals.items():
        started.add_metric([workflow], count)
    yield by_status
    yield started
    yield finished


def _queues(stats: dict[str, Any]) -> Iterator[Metric]:
    tasks = GaugeMetricFamily(
        "executor_tasks",
        "Tasks by shard and state: queued (claimable), waiting (retry backoff or quota wait),"
        " in_flight, parked (until a limit has room).",
        labels=["shard", "state"],
    )
    oldest = GaugeMetricFamily(
        "executor_oldest_queued_task_age_seconds",
        "Age of the run of the oldest queued task, by shard.",
        labels=["shard"],
    )
    backlog = GaugeMetricFamily(
        "executor_replay_backlog", "Runs with results to replay, by shard.", labels=["shard"]
    )
    timers = GaugeMetricFamily("executor_timers", "Durable sleeps, by shard.", labels=["shard"])
    due = GaugeMetricFamily(
        "executor_timers_due", "Durable sleeps past their time, by shard.", labels=["shard"]
    )
    for shard, s in stats["shards"].items():
        label = str(shard)
        for state in _TASK_STATES:
            tasks.add_metric([label, state], s.get(state, 0))
        oldest.add_metric([label], s.get("oldest_queued_age_s") or 0.0)
        backlog.add_metric([label], s.get("replay_backlog", 0))
        timers.add_metric([label], s.get("timers", 0))
        due.add_metric([label], s.get("timers_due", 0))
    epoch = GaugeMetricFamily("executor_epoch", "The database's epoch (bump-epoch, new daemons).")
    epoch.add_metric([], stats["epoch"])
    yield from (tasks, oldest, backlog, timers, due, epoch)


def _engines(
    engines: list[samples.EngineMetrics], stats: dict[str, Any], now: float
) -> Iterator[Metric]:
    live = {e["id"]: e for e in stats["engines"]}
    heartbeat = GaugeMetricFamily(
        "executor_engine_heartbeat_age_seconds",
        "Seconds since each live engine's last heartbeat.",
        labels=["engine"],
    )
    start = GaugeMetricFamily(
        "executor_engine_start_time_seconds",
        "When each live engine started (UNIX time): its counters count from here.",
        labels=["engine"],
    )
    owned = GaugeMetricFamily(
        "executor_engine_shards",
        "Shards each live engine owns by lease (several daemons on PostgreSQL share them).",
        labels=["engine"],
    )
    for engine_id, e in live.items():
        heartbeat.add_metric([str(engine_id)], max(0.0, now - e["heartbeat_at"]))
        start.add_metric([str(engine_id)], e["started_at"])
        owned.add_metric([str(engine_id)], e.get("shards", 0))
    slots = GaugeMetricFamily(
        "executor_slots", "Step slots of the live engines: busy and total.", labels=["state"]
    )
    busy = total = 0
    steps: dict[tuple[str, str, str], int] = {}
    durations: dict[str, list[Any]] = {}
    replays = {"live": 0, "full": 0}
    args_changed = 0
    refused = 0
    flush: list[Any] = [None, 0.0]
    commit: list[Any] = [None, 0.0]
    for m in engines:
        snap = m.snapshot
        load = snap.get("load") or {}
        if m.engine_id in live:
            busy += load.get("in_flight", 0)
            total += load.get("slots", 0)
        for workflow, step, outcome, n in snap.get("steps", ()):
            key = (workflow, step, outcome)
            steps[key] = steps.get(key, 0) + n
        for step, h in (snap.get("step_seconds") or {}).items():
            _add_hist(durations.setdefault(step, [None, 0.0]), h)
        _add_hist(flush, snap.get("flush_size"))
        _add_hist(commit, snap.get("commit_seconds"))
        full = load.get("full_replays", 0)
        replays["full"] += full
        replays["live"] += max(0, load.get("replays", 0) - full)
        args_changed += load.get("replay_args_changed", 0)
        refused += load.get("results_refused", 0)
    slots.add_metric(["busy"], busy)
    slots.add_metric(["total"], total)
    yield from (heartbeat, start, owned, slots)

    steps_total = CounterMetricFamily(
        "executor_steps",
        "Step attempts by workflow, step and outcome: succeeded, failed (for good), retried,"
        " rate_limited (a 429). Summed over every engine that ran on the file.",
        labels=["workflow", "step", "outcome"],
    )
    for (workflow, step, outcome), n in sorted(steps.items()):
        steps_total.add_metric([workflow, step, outcome], n)
    yield steps_total
    step_seconds = HistogramMetricFamily(
        "executor_step_duration_seconds", "Duration of step attempts, by step.", labels=["step"]
    )
    for step, (buckets, total_s) in sorted(durations.items()):
        step_seconds.add_metric([step], buckets, total_s)
    yield step_seconds
    replayed = CounterMetricFamily(
        "executor_replays",
        "Replays: live (results fed to a workflow in memory) or full (rebuilt from its journal).",
        labels=["kind"],
    )
    for kind, n in replays.items():
        replayed.add_metric([kind], n)
    yield replayed
    changed = CounterMetricFamily(
        "executor_replay_args_changed",
        "Recorded steps a replay found called with other arguments (an edited prompt); their"
        " recorded results stood (engine.replay_args = log).",
    )
    changed.add_metric([], args_changed)
    yield changed
    late = CounterMetricFamily(
        "executor_results_refused",
        "Step results an engine sent after its shard's lease had gone to another engine (a"
        " pause past engine.lease_s): refused by the lease fence, the step runs again there.",
    )
    late.add_metric([], refused)
    yield late
    for name, doc, (buckets, total_s) in (
        ("executor_flush_batch_size", "Step outcomes recorded per transaction.", flush),
        ("executor_flush_commit_seconds", "Time to record one batch of outcomes.", commit),
    ):
        family = HistogramMetricFamily(name, doc)
        if buckets is not None:
            family.add_metric([], buckets, total_s)
        yield family


def _add_hist(acc: list[Any], h: dict[str, Any] | None) -> None:
    """Add one engine's histogram into acc = [cumulative buckets or None, sum]."""
    if not h:
        return
    running, buckets = 0, []
    for bound, count in zip([*h["bounds"], float("inf")], h["counts"], strict=True):
        running += count
        buckets.append((_le(bound), running))
    if acc[0] is None:
        acc[0] = buckets
    elif [b for b, _ in acc[0]] == [b for b, _ in buckets]:
        acc[0] = [(b, x + y) for (b, x), (_, y) in zip(acc[0], buckets, strict=True)]
    else:
        return  # another release's buckets: leave it out rather than mix them
    acc[1] += h["sum"]


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _limits(snapshots: list[dict[str, Any]]) -> Iterator[Metric]:
    ratio = GaugeMetricFamily(
        "executor_limit_effective_rate_ratio",
        "Effective rate over configured rate, per limit (below 1 after 429s); the lowest of its"
        " keys.",
        labels=["limit"],
    )
    in_flight = GaugeMetricFamily(
        "executor_limit_in_flight", "Steps in flight under each limit.", labels=["limit"]
    )
    waiting = GaugeMetricFamily(
        "executor_limit_waiting", "Steps waiting for each limit in memory.", labels=["limit"]
    )
    parked = GaugeMetricFamily(
        "executor_limit_parked", "Tasks parked until each limit has room.", labels=["limit"]
    )
    admitted = CounterMetricFamily(
        "executor_limit_admitted", "Steps admitted by each limit.", labels=["limit"]
    )
    limited = CounterMetricFamily(
        "executor_limit_rate_limited",
        "429s (RateLimited) seen by the steps of each limit.",
        labels=["limit"],
    )
    per: dict[str, dict[str, float]] = {}
    for snap in snapshots:
        for entry in snap.get("limits") or ():
            name = entry.get("limit")
            if not name or entry.get("idle"):
                continue
            agg = per.setdefault(
                name,
                {"ratio": 1.0, "in_flight": 0, "waiting": 0, "parked": 0, "admitted": 0, "429": 0},
            )
            agg["ratio"] = min(agg["ratio"], float(entry.get("factor", 1.0)))
            agg["in_flight"] += entry.get("in_flight", 0)
            agg["waiting"] += entry.get("waiting", 0)
            agg["parked"] += entry.get("parked", 0)
            agg["admitted"] += entry.get("admitted", 0)
            agg["429"] += entry.get("rate_limited", 0)
    for name, agg in sorted(per.items()):
        ratio.add_metric([name], agg["ratio"])
        in_flight.add_metric([name], agg["in_flight"])
        waiting.add_metric([name], agg["waiting"])
        parked.add_metric([name], agg["parked"])
        admitted.add_metric([name], agg["admitted"])
        limited.add_metric([name], agg["429"])
    yield from (ratio, in_flight, waiting, parked, admitted, limited)
