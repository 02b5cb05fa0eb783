"""The PostgreSQL server under a benchmark (`--database postgresql://...`): refusing a database
that already holds runs, and the server's CPU time.

The server's CPU is read from /proc, so it is measured only when the server runs on this machine
(a Unix socket or localhost): the postmaster's own time, the time of the processes it has reaped
(backends that ended: their time moves into its cutime/cstime), and that of every live child
(backends, WAL writer, checkpointer, autovacuum).
"""

from __future__ import annotations

import os
from pathlib import Path

from executor import errors

_TICK = os.sysconf("SC_CLK_TCK")


def check_fresh(url: str) -> None:
    """Refuse a database that holds runs already: the numbers would not be this run's."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        has_runs = conn.execute("SELECT to_regclass('runs') IS NOT NULL").fetchone()
        if has_runs and has_runs[0]:
            row = conn.execute("SELECT EXISTS (SELECT 1 FROM runs)").fetchone()
            if row and row[0]:
                raise errors.ExecutorError(
                    "the database of --database holds runs already; the benchmark needs an empty"
                    " one (CREATE DATABASE ...)"
                )


def postmaster_pid(url: str) -> int | None:
    """The server's postmaster, when it runs here and we may read its data folder's pid file."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        if row is None:
            return None
        return int((Path(row[0]) / "postmaster.pid").read_text().split()[0])
    except (psycopg.Error, OSError, ValueError):
        return None  # another machine, or not a superuser: no server CPU in the report


def _times(stat: str) -> tuple[int, int, int]:
    """(ppid, own ticks, reaped children's ticks) from a /proc/<pid>/stat line."""
    fields = stat[stat.rindex(")") + 2 :].split()
    # After the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based here
    # from the state field.
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def server_cpu_s(pid: int) -> float:
    """CPU seconds used by the postmaster `pid` and everything under it so far."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid, own, reaped = _times(Path(entry.path, "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if int(entry.name) == pid:
            total += own + reaped
        elif ppid == pid:
            total += own
    return total / _TICK


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by the live process `pid`."""
    return _times(Path(f"/proc/{pid}/stat").read_text())[1] / _TICK
