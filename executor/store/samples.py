"""The engine's sample row per heartbeat (for the dashboard's plots) and its metrics snapshot (for
Prometheus), and reading them back.

Counters in both are cumulative since their engine started; a reader takes differences per engine,
so a restart (a new engine id, counting from 0) is never a negative rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from executor.store.conn import Conn
from executor.store.database import transaction

KEEP_S = 24 * 3600.0  # samples older than this are deleted when the next one is written


@dataclass(slots=True)
class Sample:
    """One engine's numbers at one heartbeat; the queue numbers are filled in from the file."""

    engine_id: int
    at: float
    steps: int
    step_failures: int
    runs_finished: int
    in_flight: int
    slots: int
    rate_limited: int
    limits: dict[str, dict[str, float]] | None = None  # limit -> {saturation, rate_limited}
    queued: int = 0
    oldest_queued_s: float | None = None
    replay_backlog: int = 0


class QueueCounts(NamedTuple):
    """The queue numbers of a sample, counted from the file."""

    queued: int
    oldest_created_at: float | None  # creation time of the oldest queued task's run
    replay_backlog: int
    cost_s: float  # what counting them took: these are scans, long with a large backlog


def count_queues(conn: Conn, shards: int) -> QueueCounts:
    """Count the queues (reads, outside the write lock)."""
    began = time.perf_counter()
    queued = conn.execute(conn.q["sample_queued"]).fetchone()[0]
    oldest = [
        conn.execute(conn.q["sample_oldest_queued_rid"], (s,)).fetchone()[0] for s in range(shards)
    ]
    rids = [rid for rid in oldest if rid is not None]
    created_at = None
    if rids:
        created = conn.execute(conn.q["created_at_of_rid"], (min(rids),)).fetchone()
        if created is not None:
            created_at = created[0]
    backlog = conn.execute(conn.q["sample_replay_backlog"]).fetchone()[0]
    return QueueCounts(queued, created_at, backlog, time.perf_counter() - began)


def record(
    conn: Conn,
    sample: Sample,
    shards: int,
    snapshot: bytes,
    counts: QueueCounts | None = None,
) -> QueueCounts:
    """Store the sample and snapshot, with the queue numbers `counts` (counted now if None:
    the caller may reuse earlier counts to keep their cost down). Returns the counts used."""
    if counts is None:
        counts = count_queues(conn, shards)
    sample.queued = counts.queued
    if counts.oldest_created_at is not None:
        sample.oldest_queued_s = max(0.0, sample.at - counts.oldest_created_at)
    sample.replay_backlog = counts.replay_backlog
    _write(conn, sample, snapshot)
    return counts


@transaction
def _write(conn: Conn, sample: Sample, snapshot: bytes) -> None:
    row = {
        "engine_id": sample.engine_id,
        "at": sample.at,
        "steps": sample.steps,
        "step_failures": sample.step_failures,
        "runs_finished": sample.runs_finished,
        "queued": sample.queued,
        "oldest_queued_s": sample.oldest_queued_s,
        "in_flight": sample.in_flight,
        "slots": sample.slots,
        "replay_backlog": sample.replay_backlog,
        "rate_limited": sample.rate_limited,
        "limits": None if sample.limits is None else orjson.dumps(sample.limits),
    }
    conn.execute(conn.q["insert_sample"], row)
    conn.execute(conn.q["upsert_engine_metrics"], (sample.engine_id, snapshot, sample.at))
    conn.execute(conn.q["delete_old_samples"], (sample.at - KEEP_S,))


def read(conn: Conn, since: float) -> list[Sample]:
    out = []
    for row in conn.execute(conn.q["select_samples"], (since,)):
        (engine_id, at, steps, failures, finished, queued, oldest, in_flight, slots) = row[:9]
        backlog, rate_limited, limits = row[9:]
        out.append(
            Sample(
                engine_id,
                at,
                steps,
                failures,
                finished,
                in_flight,
                slots,
                rate_limited,
                None if limits is None else orjson.loads(limits),
                queued,
                oldest,
                backlog,
            )
        )
    return out


class EngineMetrics(NamedTuple):
    engine_id: int
    snapshot: dict[str, Any]
    updated_at: float
    state: str
    started_at: float


def engine_metrics(conn: Conn) -> list[EngineMetrics]:
    """Each engine's last metrics snapshot (engines that stopped keep their final one)."""
    return [
        EngineMetrics(engine_id, orjson.loads(blob), at, state, started)
        for engine_id, blob, at, state, started in conn.execute(conn.q["select_engine_metrics"])
    ]
