"""What is queued where: task, replay and timer queue depths per shard, runs by status, the live
engines and their limits, read from one snapshot (`executor stats`, Client.stats, the dashboard
and the metrics)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from executor.store import leases
from executor.store.conn import Conn
from executor.vocabulary import LIVE_ENGINE_STATES


def stats(conn: Conn, now: float | None = None) -> dict[str, Any]:
    """Queue depths per shard and runs by status, from one read snapshot."""
    now = time.time() if now is None else now
    conn.execute(conn.q["begin_read"])
    try:
        shards: dict[int, dict[str, Any]] = {}

        def shard(n: int) -> dict[str, Any]:
            return shards.setdefault(
                n,
                {
                    "queued": 0,
                    "waiting": 0,
                    "in_flight": 0,
                    "replay_backlog": 0,
                    "oldest_queued_age_s": None,
                    "timers": 0,
                    "timers_due": 0,
                    "parked": 0,
                },
            )

        for n, queued, waiting, in_flight, oldest_rid in conn.execute(
            conn.q["stats_tasks"], {"now": now}
        ):
            s = shard(n)
            s.update(queued=queued or 0, waiting=waiting or 0, in_flight=in_flight or 0)
            if oldest_rid is not None:
                created = conn.execute(conn.q["created_at_of_rid"], (oldest_rid,)).fetchone()
                if created is not None:
                    s["oldest_queued_age_s"] = round(now - created[0], 3)
        for n, count in conn.execute(conn.q["stats_replays"]):
            shard(n)["replay_backlog"] = count
        for n, count, due in conn.execute(conn.q["stats_timers"], {"now": now}):
            shard(n).update(timers=count, timers_due=due or 0)
        for n, _group, count in conn.execute(conn.q["stats_parked"]):
            shard(n)["parked"] += count
        limits = [
            {"engine": engine_id, "updated_at": at, **orjson.loads(snapshot)}
            for engine_id, snapshot, at in conn.execute(conn.q["live_limit_states"])
        ]
        runs = dict(conn.execute(conn.q["stats_runs"]).fetchall())
        epoch = conn.execute(conn.q["select_epoch"]).fetchone()[0]
        engines = [
            dict(
                zip(
                    ("id", "epoch", "pid", "host", "state", "started_at", "heartbeat_at"),
                    e,
                    strict=True,
                )
            )
            for e in conn.execute(conn.q["list_engines"])
            if e[4] in LIVE_ENGINE_STATES
        ]
        # Which engine owns which shard (store/leases.py); None: free.
        owners = {
            row.shard: None
            if row.owner is None
            else {"engine": row.owner, "epoch": row.epoch, "expires_at": row.expires_at}
            for row in leases.table(conn)
        }
    finally:
        conn.execute("COMMIT")
    for e in engines:
        e["shards"] = sum(1 for o in owners.values() if o is not None and o["engine"] == e["id"])
    return {
        "epoch": epoch,
        "shards": {n: shards[n] for n in sorted(shards)},
        "runs": runs,
        "engines": engines,
        "owners": owners,
        "limits": limits,
    }
