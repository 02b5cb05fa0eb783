"""The `executor` command (also `python -m executor`): the daemon, and verbs to manage runs.

    executor run                         the daemon (foreground; systemd runs it as Type=notify)
    executor start NAME [--args JSON]    start a run, print its id (--wait: print its result)
    executor status|result|cancel RUN    watch or cancel one run
    executor show RUN                    one run whole: its journal and what it waits on
    executor list, executor stats        runs, and queue depths per shard
    executor resume|fail RUN             decide what happens to a parked run
    executor signal RUN TOPIC            send a signal to a run (--payload JSON, --key K)
    executor event RUN KEY               print a value the run published (--wait S)
    executor schedules list|pause|resume|trigger [NAME]
    executor bump-epoch                  make running daemons drain and exit
    executor fail-pending|clear-replay-queue|clear-task-queue --shard N|--all --yes
    executor check                       check the database's invariants (read-only)
    executor check-config, executor migrate

Every verb reads the configuration with load_config (`--config PATH`, else $EXECUTOR_CONFIG, else
/etc/executor/executor.toml if it exists, else the defaults; then EXECUTOR_* variables). Errors are
one line on stderr, `executor: error: ...`, and an exit code from `executor.exitcodes` (the one
table; `executor --help` prints it).

The package, by noun:

    app.py       main(): the parser built from VERB_MODULES, errors -> one line + exit code
    common.py    the verb skeleton (`with_client`), output (`show`, `table`), argument types
    daemon.py    run, bump-epoch
    runs.py      start, status, result, cancel, list, resume, fail
    signals.py   signal, event
    schedules.py schedules
    observe.py   show (views.py renders it for a terminal)
    shards.py    stats, fail-pending, clear-replay-queue, clear-task-queue
    database.py  migrate, check
    settings.py  check-config

Adding a verb (say `executor frob RUN`) is one small module, `executor/cli/frob.py`, plus its name
in `app.VERB_MODULES`:

    def register(verbs: Verbs) -> None:
        p = verbs.add("frob", cmd_frob, "frob a run", json_flag=True)  # one line in --help
        p.add_argument("run", metavar="RUN", help=RUN_ARG_HELP)

    def cmd_frob(args: argparse.Namespace) -> int:
        async def go(client: Client) -> dict[str, Any]:
            return await client.frob(args.run)      # the store only through Client

        value = with_client(args, go)               # config, open client, run, close
        show(args, value, lambda: table(("KEY", "VALUE"), sorted(value.items())))
        return ExitCode.OK

Raise an `ExecutorError` subclass for anything that goes wrong (`UsageError` for bad arguments,
`NotClean` for "nothing to do"): `main` prints the one line and picks the exit code, so a verb
never prints errors or calls sys.exit itself. Argument types for numbers (`positive_int`,
`shard_number`, `seconds`) refuse out-of-range values at parse time (exit 2).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence

from executor.daemon import startsignals

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the verb, and return the exit code."""
    as_process = argv is None  # the console script or `python -m executor`, not a caller's test
    argv = sys.argv[1:] if argv is None else list(argv)
    if as_process and _verb(argv) == "run":
        # The daemon: a stop from now on is a clean stop, even before the heavy imports below.
        startsignals.install()
    if as_process:
        _never_fail_to_print()
    from executor.cli import app  # the parser, every verb, and what they import

    return app.main(argv)


def build_parser() -> argparse.ArgumentParser:
    from executor.cli import app

    return app.build_parser()


def _never_fail_to_print() -> None:
    """A path that is not valid UTF-8 is printed as its own bytes on stdout (so it can be copied
    back), and escaped on stderr (so an error line stays text); neither raises."""
    for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=errors)


def _verb(argv: Sequence[str]) -> str | None:
    """The verb, found without the parser (which needs every verb module imported)."""
    rest = iter(argv)
    for arg in rest:
        if arg == "--config":
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None
