"""What every verb shares: the verb skeleton (`with_client`), output, argument types, and the two
errors that belong to the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from executor import config, errors, registry
from executor.client import Client

PROG = "executor"
T = TypeVar("T")
# A verb's entry point: the parsed command line in, the exit code out.
Handler = Callable[[argparse.Namespace], int]


class UsageError(errors.ExecutorError):
    """The command line is not valid."""


class NotClean(errors.ExecutorError):
    """The verb did not do what was asked (nothing to cancel, run not parked, not finished)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (ours) instead of the usage text plus a line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> Any:
        # `--shard=--`: argparse drops the "--" and hands the verb an empty list, unconverted.
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected a value, got '--'")
        return super()._get_values(action, arg_strings)


# --- the verb skeleton ----------------------------------------------------------------------------


def load(args: argparse.Namespace) -> config.LoadedConfig:
    """The configuration for this command: --config, else $EXECUTOR_CONFIG, else /etc, else
    defaults; then EXECUTOR_* variables."""
    path: Path | None = args.config
    return config.load_config(path)


def open_client(
    loaded: config.LoadedConfig, *, create: bool = False, strict: bool = False
) -> Client:
    """A client on the configured database. Only `create` verbs may make a new file."""
    cfg = loaded.config
    key = "database.url" if cfg.database.url else "database.path"
    return Client(
        cfg.database,
        reg=registry.default_registry,
        strict=strict,
        payload_limit_bytes=cfg.engine.payload_limit_bytes,
        # A new file must get the daemon's shard count; an existing one keeps its own.
        shards=cfg.engine.shards if create else None,
        must_exist=False if create else f"{key} from {loaded.sources[key]}",
    )


def with_client(
    args: argparse.Namespace,
    fn: Callable[[Client], Awaitable[T]],
    *,
    loaded: config.LoadedConfig | None = None,
    create: bool = False,
    strict: bool = False,
) -> T:
    """Load the config (unless given), open a client, run `fn(client)` on a fresh event loop,
    close the client, and return what `fn` returned. Errors propagate as ExecutorError; `main`
    maps them to exit codes and one line on stderr."""
    cfg = load(args) if loaded is None else loaded

    async def go() -> T:
        async with open_client(cfg, create=create, strict=strict) as client:
            return await fn(client)

    return asyncio.run(go())


def parse_json(option: str, text: str) -> Any:
    """JSON from the command line, or UsageError naming the option: invalid JSON, an integer of
    over 4,300 digits, or nesting deeper than Python's parser goes."""
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or the integer-digits limit
        raise UsageError(f"{option}: invalid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"{option}: the JSON is nested too deeply") from None


# --- output ---------------------------------------------------------------------------------------


def wants_json(args: argparse.Namespace) -> bool:
    """JSON with --json, or whenever stdout is not a terminal (a pipe, a file, a script)."""
    return bool(getattr(args, "json", False)) or not sys.stdout.isatty()


def print_json(value: Any, *, pretty: bool = False) -> None:
    print(json.dumps(value, indent=2 if pretty else None, ensure_ascii=False))


def show(args: argparse.Namespace, value: Any, human: Callable[[], str]) -> None:
    """Print `value` as JSON when JSON is wanted, else the text `human()` renders."""
    if wants_json(args):
        print_json(value, pretty=True)
    else:
        print(human())


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


# --- argument types -------------------------------------------------------------------------------


def _number(
    kind: str, parse: Callable[[str], T], ok: Callable[[T], bool], low: str
) -> Callable[[str], T]:
    def convert(text: str) -> T:
        try:
            value = parse(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {kind} {low}, got {text}")
        return value

    return convert


# The upper bounds keep every number inside SQLite's 64-bit integers.
_INT_MAX = 2**63 - 1
positive_int = _number("a whole number", int, lambda v: 1 <= v <= _INT_MAX, f"from 1 to {_INT_MAX}")
shard_number = _number("a shard number", int, lambda v: 0 <= v <= _INT_MAX, ">= 0")
position = _number("a journal position", int, lambda v: 0 <= v <= _INT_MAX, ">= 0")
seconds = _number("seconds", float, lambda v: 0 <= v < float("inf"), ">= 0")


# --- declaring verbs ------------------------------------------------------------------------------


class Verbs:
    """The sub-command table that each verb module's `register(verbs)` adds its verbs to."""

    def __init__(self, sub: Any, common: argparse.ArgumentParser) -> None:
        self._sub = sub  # argparse's _SubParsersAction (private type)
        self._common = common

    def add(
        self,
        name: str,
        handler: Handler,
        text: str,
        description: str | None = None,
        *,
        json_flag: bool = False,
    ) -> argparse.ArgumentParser:
        """Add verb `name`, run by `handler`; `text` is its line in `executor --help`. Returns
        its parser, for the verb's own arguments. `json_flag` adds --json (see `wants_json`)."""
        p: argparse.ArgumentParser = self._sub.add_parser(
            name,
            parents=[self._common],
            help=text,
            description=description or text,
            epilog="exit codes: see `executor --help`",
        )
        p.set_defaults(handler=handler)
        if json_flag:
            p.add_argument(
                "--json",
                action="store_true",
                help="print JSON (the default when stdout is not a terminal)",
            )
        return p


RUN_ARG_HELP = "the run id"
TIMEOUT_HELP = "with --wait: give up after S seconds (exit 5)"
