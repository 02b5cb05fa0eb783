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

import orjson

from executor.errors import error_blob
from executor.store import journal
from executor.store.conn import Conn
from executor.store.database import transaction
from executor.vocabulary import (
    FINISHED,
    Delivery,
    NewStep,
    Outcome,
    OutcomeKind,
    StepKind,
    StepState,
)

_WAIT_TIMEOUT = error_blob("WaitTimeout", "no signal arrived before the wait's timeout")


def wait_result(topic: str, payload: bytes) -> bytes:
    """The journal result of a wait that took a message: [topic, payload] (payload is JSON)."""
    return b"[" + orjson.dumps(topic) + b"," + payload + b"]"


def run_for_signal(conn: Conn, run_id: str) -> tuple[int, str] | None:
    """(rid, status) of the run, or None if there is no such run."""
    row = conn.execute(conn.q["run_for_signal"], (run_id,)).fetchone()
    return None if row is None else (row[0], row[1])


def insert_message(
    conn: Conn, rid: int, topic: str, payload: bytes, key: str | None, now: float
) -> int | None:
    """Put a message in the run's mailbox; None if its key was sent to this run before."""
    if key is not None and conn.execute(conn.q["message_with_key"], (rid, key)).fetchone():
        return None
    row = conn.execute(
        conn.q["insert_message"],
        {"rid": rid, "topic": topic, "payload": payload, "key": key, "now": now},
    ).fetchone()
    return int(row[0])


def oldest_wait(conn: Conn, rid: int, topic: str) -> int | None:
    """Position of the run's earliest pending wait on `topic`, if any."""
    row = conn.execute(conn.q["oldest_wait_of_topic"], (rid, topic)).fetchone()
    return None if row is None else int(row[0])


def open_wait(conn: Conn, rid: int, shard: int, s: NewStep, now: float) -> Delivery | None:
    """A new wait (the replay commit): it takes the oldest unread message of its topics at
    once, in the transaction that creates it, and returns that record; if there is none, the
    wait is registered (with its timeout) for a signal to find."""
    topics: list[str] = orjson.loads(s.args or b"[[]]")[0]
    row = conn.execute(
        conn.q["oldest_unread_of_topics"], {"rid": rid, "topics": orjson.dumps(topics).decode()}
    ).fetchone()
    if row is None:
        conn.executemany(conn.q["insert_wait"], [(rid, topic, s.pos) for topic in topics])
        if s.fire_at is not None:
            conn.execute(conn.q["insert_wait_timer"], (rid, s.pos, shard, s.fire_at))
        return None
    message_id, topic, payload = int(row[0]), str(row[1]), bytes(row[2])
    took = Outcome(OutcomeKind.DONE, rid, s.pos, result=wait_result(topic, payload))
    return _settle(conn, took, message_id, now)


def time_out(conn: Conn, rid: int, pos: int, now: float) -> Delivery | None:
    """A wait's timer is due: record WaitTimeout. The timeout and a signal race through the same
    fence: whichever records first wins, and a message that loses stays unread."""
    timeout = Outcome(OutcomeKind.DONE, rid, pos, status=StepState.FAILED, error=_WAIT_TIMEOUT)
    return _settle(conn, timeout, None, now)


@transaction
def send_signal(
    conn: Conn, run_id: str, topic: str, payload: bytes, key: str | None, now: float
) -> bool | None:
    """Client.signal: keep the message for the run, and hand it to the run's earliest pending
    wait on its topic if there is one. False: the run has finished; None: no such run."""
    found = run_for_signal(conn, run_id)
    if found is None:
        return None
    rid, status = found
    if status in FINISHED:
        return False
    message_id = insert_message(conn, rid, topic, payload, key, now)
    if message_id is None:
        return True  # this key was sent before: a no-op
    pos = oldest_wait(conn, rid, topic)
    if pos is not None:
        took = Outcome(OutcomeKind.DONE, rid, pos, result=wait_result(topic, payload))
        _settle(conn, took, message_id, now)
    return True


def _settle(conn: Conn, o: Outcome, message_id: int | None, now: float) -> Delivery | None:
    """Record the wait's outcome `o` (message `message_id`, or its timeout) through the
    journal's fence; only if that recorded it, the message is consumed and the wait's rows and
    timer go, in the same transaction. A wait that lost the race changes nothing."""
    recorded = journal.record_one(conn, o, now)
    if recorded is not None:
        if message_id is not None:
            conn.execute(conn.q["consume_message"], (o.pos, message_id))
        conn.execute(conn.q["delete_waits_at"], (o.run_rid, o.pos))
        conn.execute(conn.q["delete_timer"], (o.run_rid, o.pos))
    return recorded


def publish(
    conn: Conn,
    rid: int,
    pos: int,
    name: str,
    fingerprint: str,
    value: bytes,
    now: float,
) -> None:
    """ctx.set_event at `pos`: a settled journal entry and the key's latest value, once."""
    inserted = conn.execute(
        conn.q["insert_settled_step"],
        (rid, pos, StepKind.EVENT, name, fingerprint, value, now, now),
    ).rowcount
    if inserted:
        conn.execute(
            conn.q["upsert_event"],
            {"rid": rid, "key": name, "value": value, "pos": pos, "now": now},
        )


def read_event(conn: Conn, run_id: str, key: str) -> tuple[str, bytes | None, float | None] | None:
    """(run status, the key's latest value or None, when it was set), or None: no such run."""
    row = conn.execute(conn.q["select_event"], {"id": run_id, "key": key}).fetchone()
    return None if row is None else (row[0], row[1], row[2])
