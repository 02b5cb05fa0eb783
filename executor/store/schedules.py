"""Schedules in the file: defining them, pausing them, and firing their due ticks.

Firing is one transaction per batch of due schedules: plan the ticks from the stored next tick
and the real clock (never from an iterator kept in memory, so a suspended machine does not fire
a burst it should have skipped), start a run per tick with the tick's own run id (so a tick
starts at most one run, whatever the restarts and however many engines share the file), apply
the overlap policy against the schedule's previous run, and move the next tick on with a
compare-and-set.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

from executor import schedules
from executor.store import repository, sharding
from executor.store.conn import Conn
from executor.store.database import transaction
from executor.vocabulary import RunState

CONFIG = "config"  # defined by [schedules.NAME]: reconciled with the config at start and reload
CLIENT = "client"  # defined by Client.schedule: left alone by reloads


class ScheduleRow(NamedTuple):
    name: str
    workflow: str
    cron: str
    timezone: str
    args: bytes
    catchup: str
    overlap: str
    source: str
    paused: int
    next_fire_at: float
    last_fire_at: float | None
    last_run_id: str | None
    fired: int
    skipped: int


def _put(conn: Conn, spec: schedules.ScheduleSpec, source: str, now: float) -> None:
    conn.execute(
        conn.q["upsert_schedule"],
        {
            "name": spec.name,
            "workflow": spec.workflow,
            "cron": spec.cron,
            "timezone": spec.timezone,
            "args": orjson.dumps(list(spec.args)),
            "catchup": spec.catchup,
            "overlap": spec.overlap,
            "source": source,
            "next": schedules.next_tick(spec.cron, spec.timezone, now),
            "now": now,
        },
    )


@transaction
def put(conn: Conn, spec: schedules.ScheduleSpec, now: float) -> None:
    """Create or update a schedule from Client.schedule."""
    _put(conn, spec, CLIENT, now)


@transaction
def reconcile(conn: Conn, specs: Sequence[schedules.ScheduleSpec], now: float) -> list[str]:
    """Make the config's schedules the file's: create or update each, delete those that left the
    config (schedules made by Client.schedule stay). Returns the names deleted."""
    for spec in specs:
        _put(conn, spec, CONFIG, now)
    keep = {s.name for s in specs}
    names = conn.execute(conn.q["config_schedule_names"], (CONFIG,)).fetchall()
    gone = [n for (n,) in names if n not in keep]
    for name in gone:
        conn.execute(conn.q["delete_schedule"], (name,))
    return gone


@transaction
def delete(conn: Conn, name: str) -> bool:
    return bool(conn.execute(conn.q["delete_schedule"], (name,)).rowcount)


@transaction
def set_paused(conn: Conn, name: str, paused: bool, now: float) -> bool | None:
    """Pause or resume; None: no such schedule; False: it already was."""
    row = get(conn, name)
    if row is None:
        return None
    if paused:
        return bool(
            conn.execute(conn.q["pause_schedule"], {"name": name, "now": now}).rowcount
        ) and (not row.paused)
    nxt = schedules.next_tick(row.cron, row.timezone, now)
    return bool(
        conn.execute(conn.q["resume_schedule"], {"name": name, "next": nxt, "now": now}).rowcount
    )


def get(conn: Conn, name: str) -> ScheduleRow | None:
    row = conn.execute(conn.q["select_schedule"], (name,)).fetchone()
    return None if row is None else ScheduleRow(*row)


def list_all(conn: Conn) -> list[ScheduleRow]:
    return [ScheduleRow(*r) for r in conn.execute(conn.q["list_schedules"])]


def fire_due(conn: Conn, now: float, limit: int = 100) -> list[str]:
    """Start the runs of every due tick (up to `limit` schedules); return their run ids."""
    # Look before taking the write lock: most polls find nothing due.
    if not conn.execute(conn.q["due_schedules"], (now, 1)).fetchone():
        return []
    return _fire_due(conn, now, limit)


@transaction
def _fire_due(conn: Conn, now: float, limit: int) -> list[str]:
    started: list[str] = []
    for (name,) in conn.execute(conn.q["due_schedules"], (now, limit)).fetchall():
        row = get(conn, name)
        assert row is not None
        started.extend(_fire(conn, row, now))
    return started


def _fire(conn: Conn, row: ScheduleRow, now: float) -> list[str]:
    p = schedules.plan(row.cron, row.timezone, row.catchup, row.next_fire_at, now)
    fire = p.fire
    skipped = p.skipped
    previous_running = row.last_run_id is not None and _is_running(conn, row.last_run_id)
    if fire and row.overlap == "skip" and previous_running:
        skipped += len(fire)
        fire = []
    elif fire and row.overlap == "skip":
        skipped += len(fire) - 1  # the first tick's run would still be running at the second
        fire = fire[:1]
    elif fire and row.overlap == "cancel":
        skipped += len(fire) - 1  # each would cancel the one before: start the latest only
        fire = fire[-1:]
        if previous_running and row.last_run_id is not None:
            repository.cancel_in(
                conn, row.last_run_id, f"cancelled by schedule {row.name}: a newer tick", now
            )
    started = [rid for tick in fire if (rid := _start(conn, row, tick, now)) is not None]
    conn.execute(
        conn.q["advance_schedule"],
        {
            "name": row.name,
            "due": row.next_fire_at,
            "next": p.next_fire_at,
            "now": now,
            "skipped": skipped,
            "fired": len(started),
            "last_fire_at": fire[-1] if fire else None,
            "last_run": started[-1] if started else None,
        },
    )
    return started


def _is_running(conn: Conn, run_id: str) -> bool:
    found = repository.get_run(conn, run_id)
    return found is not None and found.status in (RunState.RUNNING, RunState.PARKED)


def _start(
    conn: Conn, row: ScheduleRow, tick: float, now: float, run_id: str | None = None
) -> str | None:
    """Start the run of one tick; None if it was started before (its id is the tick's)."""
    run_id = run_id or schedules.tick_id(row.name, tick)
    args: list[Any] = [tick, *orjson.loads(row.args)]
    shards = int(conn.execute(conn.q["select_shards"]).fetchone()[0])
    shard = sharding.shard_of(run_id, shards)
    inserted = conn.execute(
        conn.q["insert_scheduled_run"],
        {
            "id": run_id,
            "workflow": row.workflow,
            "shard": shard,
            "args": orjson.dumps(args),
            "now": now,
        },
    ).fetchone()
    if inserted is None:
        return None
    conn.execute(conn.q["insert_first_replay"], (inserted[0], shard, now))
    return run_id


@transaction
def trigger(conn: Conn, name: str, now: float) -> str | None:
    """Start a run of the schedule now, whatever its cron and pause (the overlap policy does not
    apply: an operator asked); None: no such schedule."""
    row = get(conn, name)
    if row is None:
        return None
    # Not a tick: its own id, so it never takes (or is refused by) the id of a cron tick.
    run_id = _start(conn, row, now, now, f"{name}@manual-{uuid.uuid4().hex[:12]}")
    if run_id is not None:
        conn.execute(conn.q["note_schedule_run"], {"name": name, "run": run_id, "now": now})
    return run_id
