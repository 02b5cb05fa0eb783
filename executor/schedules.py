"""Schedules: a workflow started on a cron expression, and what happens after downtime.

A leaf module: the schedule's definition (`ScheduleSpec`, from `[schedules.NAME]` or
`Client.schedule`), its validation, and the plan of which ticks to fire. The store keeps the
schedules and fires them (store/schedules.py); the engine's timers loop asks it to.

Cron expressions are parsed by cronsim (5 fields, or 6 with seconds first; `@daily` and friends):
it is small, pure Python, maintained, handles daylight-saving changes in a time zone, and is what
Healthchecks.io and Sentry use (croniter, the usual other choice, was declared unmaintained in
2025 before being adopted; DBOS vendors a copy of it).

A workflow run by a schedule receives the tick it was started for (UNIX seconds, a float) as its
first argument, then the schedule's `args`: replays see the same value, and a run knows which
night it is for even when it starts late.

After downtime, `catchup` decides which missed ticks run (a tick is missed when it is more than
GRACE_S old by the time it is fired): `skip` none of them, `once` the latest, `all` every one
(at most MAX_CATCHUP; the rest count as skipped). `overlap` decides what happens when a tick
comes while the schedule's previous run is still running: `skip` the tick, `allow` a second run,
`cancel` the previous run (with its children) and start the new one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from executor.errors import ConfigError

CATCHUP = ("skip", "once", "all")
OVERLAP = ("skip", "allow", "cancel")
GRACE_S = 60.0  # a tick fired later than this after its time counts as missed
MAX_CATCHUP = 100  # `catchup = "all"` starts at most this many missed ticks at once
_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A schedule: `[schedules.NAME]` in the config, or `Client.schedule(...)`."""

    name: str
    workflow: str
    cron: str
    timezone: str = "UTC"
    args: tuple[Any, ...] = ()  # after the tick time
    catchup: str = "skip"  # skip | once | all
    overlap: str = "skip"  # skip | allow | cancel

    def zone(self) -> dt.tzinfo:
        return dt.UTC if self.timezone == "UTC" else ZoneInfo(self.timezone)


def validate(spec: ScheduleSpec, where: str) -> ScheduleSpec:
    """Check every field; raise ConfigError naming `where` (a file and key, or the call)."""
    if not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name):
        raise ConfigError(f"{where}: a schedule name may only hold letters, digits, _ . and -")
    if not isinstance(spec.workflow, str) or not spec.workflow:
        raise ConfigError(f"{where}.workflow: expected a workflow name, got {spec.workflow!r}")
    if spec.catchup not in CATCHUP:
        raise ConfigError(
            f"{where}.catchup: expected one of {', '.join(CATCHUP)}, got {spec.catchup!r}"
        )
    if spec.overlap not in OVERLAP:
        raise ConfigError(
            f"{where}.overlap: expected one of {', '.join(OVERLAP)}, got {spec.overlap!r}"
        )
    try:
        zone = spec.zone()
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(
            f"{where}.timezone: unknown time zone {spec.timezone!r} (an IANA name such as"
            " Europe/Paris)"
        ) from None
    if not isinstance(spec.cron, str):
        raise ConfigError(f"{where}.cron: expected a cron expression, got {spec.cron!r}")
    try:
        next(CronSim(_expression(spec.cron), dt.datetime.now(zone)))
    except (CronSimError, StopIteration) as exc:
        raise ConfigError(f"{where}.cron: invalid cron expression {spec.cron!r}: {exc}") from None
    return spec


def from_table(name: str, table: Mapping[str, Any], where: str) -> ScheduleSpec:
    """A `[schedules.NAME]` table (already parsed TOML) as a validated spec."""
    known = {f.name for f in dataclasses.fields(ScheduleSpec)} - {"name"}
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (expected {', '.join(sorted(known))})")
    for key in ("workflow", "cron"):
        if key not in table:
            raise ConfigError(f"{where}.{key}: missing (a schedule needs workflow and cron)")
    args = table.get("args", [])
    if not isinstance(args, list):
        raise ConfigError(f"{where}.args: expected an array of arguments, got {args!r}")
    return validate(
        ScheduleSpec(
            name=name,
            workflow=table["workflow"],
            cron=table["cron"],
            timezone=table.get("timezone", "UTC"),
            args=tuple(args),
            catchup=table.get("catchup", "skip"),
            overlap=table.get("overlap", "skip"),
        ),
        where,
    )


def next_tick(cron: str, timezone: str, after: float) -> float:
    """The first tick strictly after `after` (UNIX seconds)."""
    return next(_ticks(cron, timezone, after))


def _ticks(cron: str, timezone: str, after: float) -> Iterator[float]:
    """The ticks strictly after `after`, in order, from one CronSim: making one parses the
    expression, so a catch-up over many ticks parses it once, not once a tick."""
    zone = dt.UTC if timezone == "UTC" else ZoneInfo(timezone)
    start = dt.datetime.fromtimestamp(after, zone)
    return (t.timestamp() for t in CronSim(_expression(cron), start))


def _expression(cron: str) -> str:
    """The cron expression, with the usual nicknames (`@daily`, ...) spelled out: cronsim
    (2.8) reads only fields."""
    return _NICKNAMES.get(cron.strip().lower(), cron)


@dataclass(frozen=True, slots=True)
class Plan:
    fire: list[float]  # ticks to start runs for, oldest first
    skipped: int  # due ticks not started (missed, or beyond MAX_CATCHUP)
    next_fire_at: float  # the first tick after now


def plan(cron: str, timezone: str, catchup: str, due_from: float, now: float) -> Plan:
    """Which ticks from `due_from` (the stored next tick) up to `now` to start."""
    ticks: list[float] = []
    tick, later = due_from, _ticks(cron, timezone, due_from)
    while tick <= now and len(ticks) <= MAX_CATCHUP:
        ticks.append(tick)
        tick = next(later)
    if tick <= now:  # more than we are willing to count: jump past now
        tick = next_tick(cron, timezone, now)
    on_time = [t for t in ticks if now - t <= GRACE_S]
    if catchup == "all":
        fire = ticks[-MAX_CATCHUP:]
    elif catchup == "once":
        fire = ticks[-1:]
    else:
        fire = on_time[-1:]
    return Plan(fire, len(ticks) - len(fire), tick)


def tick_id(name: str, tick: float) -> str:
    """The run id (and idempotency key) of a schedule's tick: the same in every process, so a
    tick starts at most one run, across restarts and with two engines on the file."""
    when = dt.datetime.fromtimestamp(tick, dt.UTC).isoformat(timespec="seconds")
    return f"{name}@{when}"
