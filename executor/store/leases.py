"""Shard leases: which engine owns which shard, and the epoch that fences that ownership.

A shard is owned through its row in `shard_leases` (owner, epoch, expiry). An engine's tick
(`tick`, one transaction) renews what it holds by shard and epoch, hands back shards it has
drained, and takes the free or expired shards that rendezvous hashing with bounded loads
(sharding.assign) gives it, with epoch + 1, putting the previous owner's claims back in the
queue in the same transaction. Every claim,
record, replay commit and timer transaction asks `owned` which of the engine's shards it still
holds at the epoch it believes, in the same transaction, and writes nothing for the others: a
paused old owner cannot write after losing a shard (research scale-out.md 4.3-4.4).

Expiry is on the database's clock: SQLite is on the daemon's machine (its `now` is ours), the
PostgreSQL statements use the server's `now()` and ignore the `now` they are given. Liveness of
engines (who should own what) reads their heartbeats, written with the daemons' clocks; it only
decides who should work, never who may write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import orjson

from executor.store.conn import Conn
from executor.store.database import transaction
from executor.store.sharding import assign
from executor.vocabulary import EngineState


class Fence(NamedTuple):
    """What an engine believes it owns: shard -> epoch. Writes go only to shards whose row still
    says this engine at this epoch."""

    engine: int
    epochs: Mapping[int, int]


class Tick(NamedTuple):
    """What one lease tick found and did."""

    kept: dict[int, int]  # shard -> epoch: held and renewed
    acquired: dict[int, int]  # shard -> epoch: taken now (free or expired)
    mine: frozenset[int]  # shards sharding.assign gives this engine
    requeued: int  # claims of previous owners put back in the queue
    peers: int  # engines sharing the shards (running, current epoch), this one included
    shards: int  # the database's shard count


class LeaseRow(NamedTuple):
    """One shard's lease, with its owner's process (for `executor stats` and the dashboard)."""

    shard: int
    owner: int | None
    epoch: int
    expires_at: float | None
    pid: int | None
    host: str | None
    state: str | None


def _shards(shards: Iterable[int]) -> str:
    return orjson.dumps(sorted(shards)).decode()


@transaction
def ensure(conn: Conn, shards: int) -> None:
    """Create the lease rows of shards 0..shards-1 that do not exist yet (free, epoch 0)."""
    conn.executemany(conn.q["lease_ensure"], [(s,) for s in range(shards)])


@transaction
def tick(
    conn: Conn,
    me: int,
    held: Mapping[int, int],
    release: Mapping[int, int],
    state: EngineState,
    now: float,
    lease_s: float,
) -> Tick:
    """Renew `held`, hand back `release` (drained shards, a subset of held), then take the free
    or expired shards whose target owner is `me`.

    A draining engine (`state`) is nobody's target: it keeps what it holds until it releases it.
    """
    conn.execute(conn.q["lease_beat"], {"me": me, "state": state.value, "now": now})
    pairs = orjson.dumps([[s, e] for s, e in held.items()]).decode()
    kept = {
        int(s): int(e)
        for s, e in conn.execute(
            conn.q["lease_renew"], {"me": me, "held": pairs, "now": now, "lease_s": lease_s}
        ).fetchall()
    }
    handed = {s: e for s, e in release.items() if kept.get(s) == e}
    if handed:
        conn.executemany(
            conn.q["lease_release"],
            [{"shard": s, "epoch": e, "me": me} for s, e in handed.items()],
        )
        for s in handed:
            del kept[s]
    peers = [
        int(row[0])
        for row in conn.execute(conn.q["lease_candidates"], {"now": now, "lease_s": lease_s})
    ]
    shards = tuple(int(row[0]) for row in conn.execute(conn.q["lease_shards"]))
    mine = frozenset(s for s, owner in assign(shards, tuple(peers)).items() if owner == me)
    want = mine - kept.keys() - handed.keys()
    acquired: dict[int, int] = {}
    requeued = 0
    if want:
        acquired = {
            int(s): int(e)
            for s, e in conn.execute(
                conn.q["lease_acquire"],
                {"me": me, "shards": _shards(want), "now": now, "lease_s": lease_s},
            ).fetchall()
        }
        if acquired:
            requeued = conn.execute(
                conn.q["lease_requeue_claims"], {"shards": _shards(acquired)}
            ).rowcount
    return Tick(kept, acquired, mine, requeued, len(peers), len(shards))


def owned(conn: Conn, fence: Fence | None) -> frozenset[int] | None:
    """Inside a write transaction: the fence's shards still owned at its epochs (PostgreSQL
    locks their rows until the commit, so a thief's epoch bump waits for us). None: unfenced (a
    tool or a test writing without an engine), every shard."""
    if fence is None:
        return None
    epochs = fence.epochs
    return frozenset(
        int(s)
        for s, e in conn.execute(conn.q["lease_fence"], (fence.engine,)).fetchall()
        if epochs.get(int(s)) == e
    )


def release_all(conn: Conn, engine_id: int) -> int:
    """Inside a transaction: free every shard `engine_id` owns (it stopped, or it is dead)."""
    return conn.execute(conn.q["lease_release_all"], {"me": engine_id}).rowcount


def table(conn: Conn) -> list[LeaseRow]:
    """Every shard's lease and its owner's process, by shard."""
    return [LeaseRow(*row) for row in conn.execute(conn.q["lease_table"])]
