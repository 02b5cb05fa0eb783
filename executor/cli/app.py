"""The command line's entry point: build the parser from the verb modules, run the verb, and turn
whatever it raised into one line on stderr and an exit code from `executor.exitcodes`."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from executor import errors, exitcodes
from executor.cli import (
    common,
    daemon,
    database,
    observe,
    repair,
    replay,
    runs,
    schedules,
    settings,
    shards,
    signals,
)
from executor.cli.common import PROG, UsageError
from executor.daemon.workflows import WorkflowImportError
from executor.exitcodes import ExitCode
from executor.runfilter import FilterError

# Every module with verbs, in the order their verbs appear in `executor --help`. A new verb module
# goes here (see the package docstring).
VERB_MODULES: tuple[ModuleType, ...] = (
    daemon,
    runs,
    repair,
    observe,
    signals,
    schedules,
    shards,
    database,
    replay,
    settings,
)

_EXIT_EPILOG = "exit codes:\n"
_EXIT_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    # Order matters: the first match wins, so subclasses come before their bases.
    (UsageError, ExitCode.USAGE),
    (errors.ConfigError, ExitCode.USAGE),
    (errors.InvalidArgument, ExitCode.USAGE),
    (errors.RegistryError, ExitCode.USAGE),
    (errors.PayloadError, ExitCode.USAGE),
    (errors.IdempotencyConflict, ExitCode.USAGE),
    (errors.EngineHeld, ExitCode.USAGE),
    (FilterError, ExitCode.USAGE),
    (errors.StoreError, ExitCode.DATABASE),
    (errors.RunNotFound, ExitCode.NOT_FOUND),
    (errors.ScheduleNotFound, ExitCode.NOT_FOUND),
    (errors.ResultTimeout, ExitCode.TIMEOUT),
    (errors.ExecutorError, ExitCode.NOT_CLEAN),
)


def exit_code_of(exc: errors.ExecutorError) -> ExitCode:
    """The exit code for an error that reached the top of a verb."""
    return next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))


class _Formatter(argparse.HelpFormatter):
    """Wrap descriptions as usual, but keep the exit code table's layout."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(_EXIT_EPILOG):
            return text
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = common.Parser(
        prog=PROG,
        description="Durable async workflows on one machine, with one SQLite file.",
        epilog=_EXIT_EPILOG + exitcodes.table(),
        formatter_class=_Formatter,
    )
    config_help = (
        "the config file (default: $EXECUTOR_CONFIG, else /etc/executor/executor.toml if it"
        " exists, else built-in defaults); its executor.d/*.toml drop-ins are read too"
    )
    parser.add_argument("--config", type=Path, metavar="PATH", default=None, help=config_help)
    # Also accepted after the verb; SUPPRESS keeps a subparser from resetting a value given before.
    after_verb = common.Parser(add_help=False)
    after_verb.add_argument(
        "--config", type=Path, metavar="PATH", default=argparse.SUPPRESS, help=config_help
    )
    verbs = common.Verbs(
        parser.add_subparsers(dest="verb", metavar="VERB", required=True), after_verb
    )
    for module in VERB_MODULES:
        module.register(verbs)
    return parser


def _error(message: str) -> None:
    # One line, whatever the message holds: scripts and journals read errors line by line.
    print(f"{PROG}: error: {' '.join(message.splitlines())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the verb, and return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        _error(exc.message)
        return ExitCode.USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    try:
        code: int = args.handler(args)
        return code
    except WorkflowImportError as exc:
        # The operator needs the traceback to fix their module; the last line still sums it up.
        sys.stderr.write(exc.details)
        _error(exc.message)
        return ExitCode.USAGE
    except errors.ExecutorError as exc:
        _error(exc.message)
        return exit_code_of(exc)
    except KeyboardInterrupt:
        _error("interrupted")
        return ExitCode.FORCED
    except BrokenPipeError:
        # e.g. `executor list | head`: the reader left. Point stdout at /dev/null so the flush
        # at interpreter exit does not fail again with a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return ExitCode.OK
    except Exception as exc:  # a bug: show it, and exit with a code that says so
        traceback.print_exc()
        _error(f"internal error: {type(exc).__name__}: {exc}")
        return ExitCode.INTERNAL
