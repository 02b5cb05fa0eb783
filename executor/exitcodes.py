"""Process exit codes, shared by the CLI verbs and the daemon, so scripts and systemd can tell
failures apart.

This is the one copy of the table: `executor --help` prints it, and a test keeps README.md's table
and docs/RELIABILITY.md in step with it. No other code returns a number of its own.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    NOT_CLEAN = 1
    USAGE = 2
    DATABASE = 3
    NOT_FOUND = 4
    TIMEOUT = 5
    INTERNAL = 70  # EX_SOFTWARE from sysexits.h
    FORCED = 130  # 128 + SIGINT, what a shell reports for a process killed by Ctrl-C


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success; for the daemon: stopped cleanly after a drain",
    ExitCode.NOT_CLEAN: "the run failed, was cancelled, is parked or unfinished; or nothing to do",
    ExitCode.USAGE: "bad usage or configuration, or a workflow module failed to import",
    ExitCode.DATABASE: "the database cannot be opened, read or written",
    ExitCode.NOT_FOUND: "no run with that id (or no schedule with that name)",
    ExitCode.TIMEOUT: "--timeout passed before the run finished",
    ExitCode.INTERNAL: "internal error (a bug), or the daemon's engine crashed",
    ExitCode.FORCED: "interrupted; for the daemon: a second SIGINT skipped the drain",
}


def table() -> str:
    """The exit codes as aligned text lines, for --help and docs."""
    return "\n".join(f"  {int(code):>3}  {MEANINGS[code]}" for code in ExitCode)
