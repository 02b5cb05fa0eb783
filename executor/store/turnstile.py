"""The write turnstile: one per SQLite file per process, taken around every write transaction of
every connection this process has open on that file, and handed to the waiters in turn.

Why: SQLite lets one connection write at a time, and a connection that finds the write lock taken
waits in SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between tries and
never queues. Two connections of one process (an engine and a Client starting runs beside it, or
the daemon's retention client) then do not take turns: the one that just committed takes the
lock again at once, while the other sleeps through the gap (the engine's database thread spent
13-16% of its wall time in BEGIN IMMEDIATE while a client started runs in batches back to back;
docs/PERFORMANCE.md, issue 15, fifth round). Here a waiting writer of this process blocks on a
lock of its own and gets the turnstile the moment the writer before it commits: first come,
first served, with no sleep. Writers of other processes still meet SQLite's busy handler, as
before.

The wait here counts against database.busy_timeout_s: a transaction waits at most that long in
all (the turnstile, then SQLite's lock), then fails as the busy handler would ("database is
locked", StoreBusy).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from pathlib import Path

_HANDED = -1  # the owner between a hand-over and the new holder naming itself
_registry: weakref.WeakValueDictionary[tuple[int, int], Turnstile] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


class Turnstile:
    """A first-come-first-served lock over the write transactions of one file in this process."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._owner: int | None = None  # thread ident of the holder
        self._depth = 0
        self._waiters: deque[threading.Lock] = deque()
        # Counters (read by tests and diagnostics): transactions through here, and how many of
        # them had to wait for another connection of this process.
        self.entered = 0
        self.waited = 0

    def acquire(self, timeout_s: float) -> float:
        """Take the turnstile (re-entrant per thread); return the seconds waited. Raise
        sqlite3.OperationalError("database is locked") after `timeout_s`."""
        me = threading.get_ident()
        with self._mutex:
            self.entered += 1
            if self._owner is None:
                self._owner = me
                self._depth = 1
                return 0.0
            if self._owner == me:
                self._depth += 1
                return 0.0
            self.waited += 1
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        began = time.monotonic()
        if turn.acquire(timeout=max(0.0, timeout_s)):
            return self._handed(me, began)
        with self._mutex:
            try:
                self._waiters.remove(turn)
            except ValueError:
                pass  # handed to us between the timeout and here: we hold it
            else:
                raise sqlite3.OperationalError("database is locked")
        return self._handed(me, began)

    def _handed(self, me: int, began: float) -> float:
        with self._mutex:  # release() handed it over with no owner named: we name ourselves
            self._owner = me
            self._depth = 1
        return time.monotonic() - began

    def release(self) -> None:
        with self._mutex:
            self._depth -= 1
            if self._depth:
                return
            if self._waiters:
                # Hand over directly: the turnstile stays taken, so a writer that comes back at
                # once queues behind the one that was waiting.
                self._owner = _HANDED
                self._waiters.popleft().release()
            else:
                self._owner = None


def for_file(path: Path) -> Turnstile | None:
    """The turnstile of the file at `path` in this process (shared by every connection to it),
    or None if the file cannot be stat'ed (it is then no file we write)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_dev, st.st_ino)
    with _registry_lock:
        gate = _registry.get(key)
        if gate is None:
            gate = _registry[key] = Turnstile()
        return gate


def _forget_after_fork() -> None:
    # A child process shares none of its parent's connections, so none of their turnstiles.
    global _registry, _registry_lock
    _registry = weakref.WeakValueDictionary()
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
