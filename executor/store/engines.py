"""Engines on the file: registering (a new epoch), heartbeats and leases, reclaiming the claims of
dead engines, stopping; and the limiter's rows (parked tasks, the limits snapshot).

Each public function is one transaction (or one read), run on the database thread through
`Database.run`, like those of store/repository.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from executor import errors
from executor.store import leases
from executor.store.conn import Conn
from executor.store.database import transaction
from executor.vocabulary import LIVE_ENGINE_STATES, EngineState, Heartbeat


class LiveCheck(NamedTuple):
    """How register_engine tells a live engine from a dead one."""

    lease_s: float  # a heartbeat older than this is dead
    pid_alive: Callable[[int], bool]  # for engines on this host


@transaction
def register_engine(
    conn: Conn, pid: int, host: str, now: float, refuse: LiveCheck | None = None
) -> tuple[int, int]:
    """Take a new epoch (so older engines drain) and register; return (engine id, epoch).

    With `refuse`, raise EngineHeld instead while another engine of the current epoch is alive:
    a fresh heartbeat, and, on this host, a live pid (an engine of an older epoch is already
    draining: `executor bump-epoch`, then start). The check and the registration are one
    transaction, so two engines starting at once cannot both pass it.

    On PostgreSQL several daemons share the database, each owning shards by lease: a newcomer
    registers under the current epoch (taking a new one would drain its peers), and only
    `executor bump-epoch` moves it (research scale-out.md 4.6).
    """
    if conn.dialect == "postgres":
        epoch = int(conn.execute(conn.q["select_epoch"]).fetchone()[0])
        row = conn.execute(conn.q["insert_engine"], (epoch, pid, host, now, now)).fetchone()
        return int(row[0]), epoch
    if refuse is not None:
        current = conn.execute(conn.q["select_epoch"]).fetchone()[0]
        for _id, other_epoch, other_pid, other_host, state, _started, beat in conn.execute(
            conn.q["list_engines"]
        ).fetchall():
            if state not in LIVE_ENGINE_STATES or beat < now - refuse.lease_s:
                continue
            if other_epoch < current:
                continue  # superseded: it stops claiming and drains
            if other_host == host and not refuse.pid_alive(other_pid):
                continue
            raise errors.EngineHeld(
                f"another engine works on this database: pid {other_pid} on host {other_host}"
                f" ({state}, heartbeat {max(0.0, now - beat):.1f}s ago); stop it, or hand over"
                " with `executor run --takeover` (or `executor bump-epoch`: it drains and exits,"
                " and this one may start at once)"
            )
    epoch = conn.execute(conn.q["bump_epoch"]).fetchone()[0]
    engine_id = conn.execute(conn.q["insert_engine"], (epoch, pid, host, now, now)).fetchone()[0]
    return int(engine_id), epoch


def live_elsewhere(conn: Conn, pid: int, host: str, now: float, lease_s: float) -> bool:
    """Whether an engine of another process works on this database (its heartbeat is fresh)."""
    return any(
        state in LIVE_ENGINE_STATES
        and beat >= now - lease_s
        and (other_pid, other_host) != (pid, host)
        for _id, _epoch, other_pid, other_host, state, _started, beat in conn.execute(
            conn.q["list_engines"]
        )
    )


def engines_on_host(conn: Conn, host: str) -> list[tuple[int, int]]:
    """(engine id, pid) of engines on this host that the table says are alive."""
    return [(i, p) for i, p in conn.execute(conn.q["live_engines_on_host"], (host,))]


@transaction
def reclaim_from(conn: Conn, engine_ids: Sequence[int]) -> int:
    """Mark engines dead and put their in-flight tasks back in the queue; return tasks released."""
    released = 0
    for engine_id in engine_ids:
        if conn.execute(conn.q["mark_engine_dead"], (engine_id,)).rowcount:
            released += conn.execute(conn.q["release_engine_claims"], (engine_id,)).rowcount
            leases.release_all(conn, engine_id)  # taken at once, not after their expiry
    return released


@transaction
def bump_epoch(conn: Conn) -> int:
    return int(conn.execute(conn.q["bump_epoch"]).fetchone()[0])


@transaction
def heartbeat(
    conn: Conn, engine_id: int, state: EngineState, now: float, lease_s: float
) -> Heartbeat:
    conn.execute(conn.q["heartbeat"], (now, state, engine_id))
    epoch = conn.execute(conn.q["select_epoch"]).fetchone()[0]
    dead = [row[0] for row in conn.execute(conn.q["expire_engines"], (now - lease_s, engine_id))]
    reclaimed = 0
    for other in dead:
        reclaimed += conn.execute(conn.q["release_engine_claims"], (other,)).rowcount
    orphaned = [(r, p) for r, p in conn.execute(conn.q["orphaned_claims"], (engine_id,))]
    return Heartbeat(epoch, reclaimed, orphaned)


@transaction
def stop_engine(conn: Conn, engine_id: int, now: float) -> int:
    """Release whatever the engine still holds (claims, shard leases) and mark it stopped;
    return tasks released."""
    released = conn.execute(conn.q["release_engine_claims"], (engine_id,)).rowcount
    leases.release_all(conn, engine_id)
    conn.execute(conn.q["stop_engine"], (now, engine_id))
    return released


# --- the limiter's rows (engine/limits/) ---------------------------------------------------------


@transaction
def unpark_all(conn: Conn) -> int:
    """Make every parked task claimable (a new engine starts with empty limit counts)."""
    return conn.execute(conn.q["unpark_all"]).rowcount


@transaction
def sync_limits(conn: Conn, engine_id: int, snapshot: bytes, now: float) -> dict[str, int]:
    """Store the engine's limits snapshot for `stats`; return parked task counts by group."""
    conn.execute(
        conn.q["upsert_limit_state"], {"engine": engine_id, "snapshot": snapshot, "now": now}
    )
    return {group: count for group, count in conn.execute(conn.q["parked_by_group"])}
