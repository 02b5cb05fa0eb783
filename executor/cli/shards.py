"""Verbs on the queues of each shard: `stats`, and the operator repairs `fail-pending`,
`clear-replay-queue` and `clear-task-queue`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any

from executor.cli import views
from executor.cli.common import UsageError, Verbs, shard_number, show, table, with_client
from executor.client import Client
from executor.exitcodes import ExitCode
from executor.runinfo import RUN_STATUSES
from executor.timetext import when

# `executor stats` columns first in this order; fields added to the stats later follow.
_SHARD_COLUMNS = (
    "queued",
    "waiting",
    "in_flight",
    "replay_backlog",
    "oldest_queued_age_s",
    "timers",
    "timers_due",
)
_SHARD_HEADERS = {"oldest_queued_age_s": "OLDEST_QUEUED_S"}

_REPAIRS: dict[str, tuple[str, str, str]] = {
    # verb: (Client method, what it does, for the --yes refusal; what the count means)
    "fail-pending": (
        "fail_pending_tasks",
        "force-fails every queued task (each workflow sees a failed step)",
        "failed {n} queued tasks",
    ),
    "clear-replay-queue": (
        "clear_replay_queue",
        "deletes replay entries and fails their runs",
        "cleared {n} replay entries (their runs failed)",
    ),
    "clear-task-queue": (
        "clear_task_queue",
        "deletes queued tasks and fails their runs",
        "cleared the queued tasks of {n} runs (those runs failed)",
    ),
}


def register(verbs: Verbs) -> None:
    verbs.add(
        "stats",
        cmd_stats,
        "queue depths per shard, runs by status, engines",
        "Per shard: queued, waiting (retry backoff), in flight, replay backlog, age of the"
        " oldest queued task, timers and timers due; then runs by status and the engines.",
        json_flag=True,
    )
    for name, (_, does, _) in _REPAIRS.items():
        p = verbs.add(name, cmd_repair, f"{does} (needs --yes)")
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--shard", type=shard_number, metavar="N", help="only shard N")
        which.add_argument("--all", action="store_true", help="every shard")
        p.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")


def cmd_stats(args: argparse.Namespace) -> int:
    async def go(client: Client) -> tuple[dict[str, Any], int]:
        return await client.stats(), client.shards

    stats, shards = with_client(args, go)
    show(args, stats, lambda: _render(stats, shards))
    return ExitCode.OK


def _render(stats: dict[str, Any], shards: int) -> str:
    per_shard: dict[int, dict[str, Any]] = stats["shards"]
    extra = {key for s in per_shard.values() for key in s} - set(_SHARD_COLUMNS)
    columns = [*_SHARD_COLUMNS, *sorted(extra)]
    # A shard with nothing queued, waiting or timed has no row in the stats: all zeros.
    empty = {key: None if key == "oldest_queued_age_s" else 0 for key in columns}
    owners: dict[int, dict[str, Any] | None] = stats.get("owners") or {}
    rows = [
        (n, *(per_shard.get(n, empty).get(key) for key in columns), _owner(owners.get(n)))
        for n in range(shards)
    ]
    headers = ["SHARD", *(_SHARD_HEADERS.get(key, key.upper()) for key in columns), "OWNER"]
    runs = stats["runs"]
    parts = [
        table(headers, rows),
        "",
        table(("STATUS", "RUNS"), [(k, runs.get(k, 0)) for k in RUN_STATUSES]),
        "",
    ]
    engines = [
        (
            e["id"],
            e["pid"],
            e["host"],
            e["state"],
            e["epoch"],
            e.get("shards", 0),
            when(e["heartbeat_at"]),
        )
        for e in stats["engines"]
    ]
    if engines:
        parts.append(f"epoch {stats['epoch']}; engines:")
        parts.append(
            table(("ENGINE", "PID", "HOST", "STATE", "EPOCH", "SHARDS", "HEARTBEAT"), engines)
        )
    else:
        parts.append(f"epoch {stats['epoch']}; no engine running")
    if stats.get("limits"):
        parts += ["", views.limits_text(stats["limits"])]
    return "\n".join(parts)


def _owner(lease: dict[str, Any] | None) -> str:
    """A shard's owner as `engine/epoch` (the lease epoch fences its writes), or `-`: free."""
    return "-" if lease is None else f"{lease['engine']}/{lease['epoch']}"


def cmd_repair(args: argparse.Namespace) -> int:
    method, does, done = _REPAIRS[args.verb]
    if not args.yes:
        raise UsageError(f"{args.verb} {does}; add --yes to confirm")

    async def go(client: Client) -> int:
        count = client.shards
        if not args.all and args.shard >= count:
            raise UsageError(f"--shard: shard must be from 0 to {count - 1}, got {args.shard}")
        fn: Callable[[int], Coroutine[Any, Any, int]] = getattr(client, method)
        for shard in range(count) if args.all else [args.shard]:
            n = await fn(shard)
            print(f"shard {shard}: " + done.format(n=n))
        return ExitCode.OK

    return with_client(args, go)
