"""Signals and published state in the file: the mailbox, pending waits and published values.

These are pieces of transactions, not transactions: store/repository.py calls them inside its own
(the replay commit, the timers, Client.signal), next to the journal record they go with. The rules
they keep:

- a message is consumed by at most one wait, and only in the transaction that records that wait
  (so a signal racing its wait's timeout is either the wait's result or still unread, never lost
  nor taken twice);
- a topic's messages are taken in arrival order (mailbox.id), by waits in position order;
- a message sent before its wait stays unread until a wait of its topic takes it.
"""

from __future__ import annotations

import sqlite3

import orjson

from executor.store.sql import Q
from executor.vocabulary import StepKind


def wait_result(topic: str, payload: bytes) -> bytes:
    """The journal result of a wait that took a message: [topic, payload] (payload is JSON)."""
    return b"[" + orjson.dumps(topic) + b"," + payload + b"]"


def run_for_signal(conn: sqlite3.Connection, run_id: str) -> tuple[int, str] | None:
    """(rid, status) of the run, or None if there is no such run."""
    row = conn.execute(Q["run_for_signal"], (run_id,)).fetchone()
    return None if row is None else (row[0], row[1])


def insert_message(
    conn: sqlite3.Connection, rid: int, topic: str, payload: bytes, key: str | None, now: float
) -> int | None:
    """Put a message in the run's mailbox; None if its key was sent to this run before."""
    if key is not None and conn.execute(Q["message_with_key"], (rid, key)).fetchone():
        return None
    row = conn.execute(
        Q["insert_message"],
        {"rid": rid, "topic": topic, "payload": payload, "key": key, "now": now},
    ).fetchone()
    return int(row[0])


def oldest_wait(conn: sqlite3.Connection, rid: int, topic: str) -> int | None:
    """Position of the run's earliest pending wait on `topic`, if any."""
    row = conn.execute(Q["oldest_wait_of_topic"], (rid, topic)).fetchone()
    return None if row is None else int(row[0])


def open_wait(
    conn: sqlite3.Connection,
    rid: int,
    pos: int,
    shard: int,
    topics: list[str],
    fire_at: float | None,
) -> tuple[int, str, bytes] | None:
    """A new wait at `pos`: return the oldest unread message of its topics (id, topic, payload)
    for the caller to record; if there is none, register the wait (and its timeout) instead."""
    row = conn.execute(
        Q["oldest_unread_of_topics"], {"rid": rid, "topics": orjson.dumps(topics).decode()}
    ).fetchone()
    if row is not None:
        return int(row[0]), str(row[1]), bytes(row[2])
    conn.executemany(Q["insert_wait"], [(rid, topic, pos) for topic in topics])
    if fire_at is not None:
        conn.execute(Q["insert_wait_timer"], (rid, pos, shard, fire_at))
    return None


def settle_wait(conn: sqlite3.Connection, rid: int, pos: int, message_id: int | None) -> None:
    """The wait at `pos` was just recorded (with message `message_id`, or its timeout)."""
    if message_id is not None:
        conn.execute(Q["consume_message"], (pos, message_id))
    conn.execute(Q["delete_waits_at"], (rid, pos))
    conn.execute(Q["delete_timer"], (rid, pos))


def drop_waits(conn: sqlite3.Connection, rid: int) -> None:
    """The run finished or was cancelled: nothing waits any more (its messages stay readable)."""
    conn.execute(Q["delete_waits_of_run"], (rid,))


def publish(
    conn: sqlite3.Connection,
    rid: int,
    pos: int,
    name: str,
    fingerprint: str,
    value: bytes,
    now: float,
) -> None:
    """ctx.set_event at `pos`: a settled journal entry and the key's latest value, once."""
    inserted = conn.execute(
        Q["insert_settled_step"], (rid, pos, StepKind.EVENT, name, fingerprint, value, now, now)
    ).rowcount
    if inserted:
        conn.execute(
            Q["upsert_event"], {"rid": rid, "key": name, "value": value, "pos": pos, "now": now}
        )


def read_event(
    conn: sqlite3.Connection, run_id: str, key: str
) -> tuple[str, bytes | None, float | None] | None:
    """(run status, the key's latest value or None, when it was set), or None: no such run."""
    row = conn.execute(Q["select_event"], {"id": run_id, "key": key}).fetchone()
    return None if row is None else (row[0], row[1], row[2])
