"""The `executor` command (also `python -m executor`): the daemon, and verbs to manage runs.

    executor run                         the daemon (foreground; systemd runs it as Type=notify)
    executor start NAME [--args JSON]    start a run, print its id (--wait: print its result)
    executor status|result|cancel RUN    watch or cancel one run
    executor list, executor stats        runs, and queue depths per shard
    executor resume|fail RUN             decide what happens to a parked run
    executor bump-epoch                  make running daemons drain and exit
    executor fail-pending|clear-replay-queue|clear-task-queue --shard N|--all --yes
    executor check                       check the database's invariants (read-only)
    executor check-config, executor migrate
    executor bench ...                   benchmark the engine in-process (executor.bench)

Every verb reads the configuration with load_config (`--config PATH`, else $EXECUTOR_CONFIG, else
/etc/executor/executor.toml if it exists, else the defaults; then EXECUTOR_* variables). Errors are
one line on stderr, `executor: error: ...`, and a non-zero exit code:

      0  success; for the daemon: stopped cleanly after a drain
      1  the run failed, was cancelled, is parked or unfinished; or nothing to do (e.g. cancel of
         a finished run, resume of a run that is not parked)
      2  bad usage or configuration, or a workflow module failed to import
      3  the database cannot be opened, read or written
      4  no run with that id
      5  --timeout passed before the run finished
     70  internal error (a bug), or the daemon's engine crashed
    130  interrupted; for the daemon: a second SIGINT skipped the drain

`--args` is a JSON array of the workflow's arguments after ctx (`--args '[1, "a"]'`); anything
else is refused, so a lone value is never silently taken as one argument or as a list of them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn

from executor import check, config, errors, registry
from executor.client import Client, RunStatus
from executor.daemon import exitcodes
from executor.daemon.exitcodes import ExitCode
from executor.daemon.lifecycle import Daemon
from executor.daemon.workflows import WorkflowImportError, import_workflows
from executor.store import database
from executor.store import repository as repo

PROG = "executor"
BENCH = "bench"
_EXIT_EPILOG = "exit codes:\n"
RUN_STATUSES = (repo.RUNNING, repo.PARKED, *sorted(repo.FINISHED))
# `executor stats` columns first in this order; fields added to the stats later follow.
_SHARD_COLUMNS = (
    "queued",
    "waiting",
    "in_flight",
    "replay_backlog",
    "oldest_queued_age_s",
    "timers",
    "timers_due",
)
_SHARD_HEADERS = {"oldest_queued_age_s": "OLDEST_QUEUED_S"}


class UsageError(errors.ExecutorError):
    """The command line is not valid."""


class NotClean(errors.ExecutorError):
    """The verb did not do what was asked (nothing to cancel, run not parked, not finished)."""


class _Formatter(argparse.HelpFormatter):
    """Wrap descriptions as usual, but keep the exit code table's layout."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(_EXIT_EPILOG):
            return text
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (ours) instead of the usage text plus a line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --- helpers ------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> config.LoadedConfig:
    path: Path | None = args.config
    return config.load_config(path)


def _client(loaded: config.LoadedConfig, *, create: bool = False, strict: bool = False) -> Client:
    """A client on the configured database. Only `create` verbs may make a new file."""
    cfg = loaded.config
    path = cfg.database.path
    if not create and not path.exists():
        raise errors.StoreError(
            f"{path}: no database here (database.path from {loaded.sources['database.path']});"
            " start the daemon or run `executor migrate` first"
        )
    return Client(
        cfg.database,
        reg=registry.default_registry,
        strict=strict,
        payload_limit_bytes=cfg.engine.payload_limit_bytes,
        # A new file must get the daemon's shard count; an existing one keeps its own.
        shards=cfg.engine.shards if create else None,
    )


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


def _wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False)) or not sys.stdout.isatty()


def _print_json(value: Any, *, pretty: bool = False) -> None:
    print(json.dumps(value, indent=2 if pretty else None, ensure_ascii=False))


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _parse_args_json(args: argparse.Namespace) -> list[Any]:
    if args.args_file is not None:
        option = "--args-file"
        try:
            text = sys.stdin.read() if args.args_file == "-" else Path(args.args_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--args-file: cannot read {args.args_file}: {exc}") from None
    elif args.args is not None:
        option, text = "--args", args.args
    else:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option}: invalid JSON: {exc}") from None
    if not isinstance(value, list):
        raise UsageError(
            f"{option}: expected a JSON array of the workflow's arguments, got"
            f" {type(value).__name__} (for one argument x, pass [x])"
        )
    return value


async def _result(client: Client, run_id: str, wait: bool, timeout: float | None) -> int:
    if not wait:
        st = await client.status(run_id)
        if not st.finished and st.status != repo.PARKED:
            raise NotClean(f"run {run_id} has not finished (status {st.status}); use --wait")
    value = await client.result(run_id, timeout=timeout if wait else 0.0)
    _print_json(value)
    return ExitCode.OK


# --- verbs --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    loaded = _load(args)
    return Daemon(loaded, config_path=args.config).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    sys.stdout.write(config.render_config(_load(args)))
    return ExitCode.OK


def cmd_migrate(args: argparse.Namespace) -> int:
    loaded = _load(args)

    async def go() -> int:
        async with _client(loaded, create=True) as client:
            print(
                f"{client.db.path}: schema version {database.SCHEMA_VERSION},"
                f" {client.db.shards} shards"
            )
        return ExitCode.OK

    return _run(go())


def cmd_start(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout needs --wait")
    workflow_args = _parse_args_json(args)
    loaded = _load(args)
    modules = loaded.config.daemon.workflows
    import_workflows(modules, f"{loaded.sources['daemon.workflows']}: daemon.workflows")

    async def go() -> int:
        # With modules configured, a wrong name or argument count is refused here, not in the
        # daemon; without, the name is passed on as given.
        async with _client(loaded, create=True, strict=bool(modules)) as client:
            run_id = await client.start(
                args.name,
                *workflow_args,
                idempotency_key=args.key,
                shard_key=args.shard_key,
                concurrency_key=args.concurrency_key,
            )
            if not args.wait:
                print(run_id)
                return ExitCode.OK
            return await _result(client, run_id, True, args.timeout)

    return _run(go())


def cmd_status(args: argparse.Namespace) -> int:
    loaded = _load(args)

    async def go() -> int:
        async with _client(loaded) as client:
            st = await client.status(args.run)
        if _wants_json(args):
            _print_json(st.to_dict(), pretty=True)
        else:
            for key, value in _human_status(st).items():
                print(f"{key + ':':<12} {value}")
        return ExitCode.OK

    return _run(go())


def _human_status(st: RunStatus) -> dict[str, object]:
    out: dict[str, object] = {
        "id": st.id,
        "workflow": st.workflow + (f" (version {st.version})" if st.version else ""),
        "status": st.status,
        "shard": st.shard,
        "created": _when(st.created_at),
        "updated": _when(st.updated_at),
        "finished": _when(st.finished_at),
        "events": st.events,
    }
    if st.error is not None:
        out["error"] = f"{st.error.get('type')}: {st.error.get('message')}"
    return out


def cmd_result(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout needs --wait")
    loaded = _load(args)

    async def go() -> int:
        async with _client(loaded) as client:
            return await _result(client, args.run, args.wait, args.timeout)

    return _run(go())


def cmd_cancel(args: argparse.Namespace) -> int:
    loaded = _load(args)

    async def go() -> int:
        async with _client(loaded) as client:
            if not await client.cancel(args.run):
                st = await client.status(args.run)
                raise NotClean(f"run {args.run} had already finished ({st.status})")
        print(f"cancelled run {args.run}")
        return ExitCode.OK

    return _run(go())


def cmd_list(args: argparse.Namespace) -> int:
    loaded = _load(args)

    async def go() -> int:
        async with _client(loaded) as client:
            runs = await client.list(args.status, args.limit)
        if _wants_json(args):
            for st in runs:
                _print_json(st.to_dict())
        else:
            rows = [
                (st.id, st.workflow, st.status, st.shard, _when(st.created_at), st.events)
                for st in runs
            ]
            print(_table(("ID", "WORKFLOW", "STATUS", "SHARD", "CREATED", "EVENTS"), rows))
        return ExitCode.OK

    return _run(go())


def cmd_stats(args: argparse.Namespace) -> int:
    loaded = _load(args)

    async def go() -> int:
        async with _client(loaded) as client:
            stats = await client.stats()
            shards = client.db.shards
        if _wants_json(args):
            _print_json(stats, pretty=True)
            return ExitCode.OK
        per_shard: dict[int, dict[str, Any]] = stats["shards"]
        extra = {key for s in per_shard.values() for key in s} - set(_SHARD_COLUMNS)
        columns = [*_SHARD_COLUMNS, *sorted(extra)]
        # A shard with nothing queued, waiting or timed has no row in the stats: all zeros.
        empty = {key: None if key == "oldest_queued_age_s" else 0 for key in columns}
        rows = [(n, *(per_shard.get(n, empty).get(key) for key in columns)) for n in range(shards)]
        headers = ["SHARD", *(_SHARD_HEADERS.get(key, key.upper()) for key in columns)]
        print(_table(headers, rows))
        print()
        runs = stats["runs"]
        print(_table(("STATUS", "RUNS"), [(k, runs.get(k, 0)) for k in RUN_STATUSES]))
        print()
        engines = [
            (e["id"], e["pid"], e["host"], e["state"], e["epoch"], _when(e["heartbeat_at"]))
            for e in stats["engines"]
        ]
        print(
            f"epoch {stats['epoch']}; engines:"
            if engines
            else f"epoch {stats['epoch']}; no engine running"
        )
        if engines:
            print(_table(("ENGINE", "PID", "HOST", "STATE", "EPOCH", "HEARTBEAT"), engines))
        for snapshot in stats.get("limits", ()):
            print(f"limits of engine {snapshot.get('engine')}: {json.dumps(snapshot)}")
        return ExitCode.OK

    return _run(go())


def cmd_resume(args: argparse.Namespace) -> int:
    loaded = _load(args)

    async def go() -> int:
        async with _client(loaded) as client:
            if not await client.resume(args.run):
                st = await client.status(args.run)  # RunNotFound for an unknown id
                raise NotClean(f"run {args.run} is not parked (status {st.status})")
        print(f"resumed run {args.run}: it replays against the deployed code")
        return ExitCode.OK

    return _run(go())


def cmd_fail(args: argparse.Namespace) -> int:
    loaded = _load(args)

    async def go() -> int:
        async with _client(loaded) as client:
            if not await client.fail(args.run, args.reason):
                st = await client.status(args.run)
                raise NotClean(f"run {args.run} is not parked (status {st.status})")
        print(f"failed run {args.run}")
        return ExitCode.OK

    return _run(go())


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load(args)
    cfg = loaded.config
    lease_s = cfg.engine.lease_s if args.lease is None else args.lease
    report = check.check(cfg.database, lease_s=lease_s)
    if _wants_json(args):
        _print_json(report.to_dict(), pretty=True)
    else:
        print(report.summary())
    return ExitCode.OK if report.ok else ExitCode.NOT_CLEAN


def cmd_bench(args: argparse.Namespace) -> int:
    # Imported here: the harness is large and only this verb needs it.
    from executor import bench

    rest = list(args.bench_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        return bench.main(rest)
    except SystemExit as exc:  # its parser's --help and usage errors
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE


def cmd_bump_epoch(args: argparse.Namespace) -> int:
    loaded = _load(args)

    async def go() -> int:
        async with _client(loaded) as client:
            epoch = await client.bump_epoch()
        print(f"epoch is now {epoch}: running daemons stop claiming, drain and exit")
        return ExitCode.OK

    return _run(go())


_SHARD_VERBS: dict[str, tuple[str, str, str]] = {
    # verb: (Client method, what it does, for the --yes refusal; what the count means)
    "fail-pending": (
        "fail_pending_tasks",
        "force-fails every queued task (each workflow sees a failed step)",
        "failed {n} queued tasks",
    ),
    "clear-replay-queue": (
        "clear_replay_queue",
        "deletes replay entries and fails their runs",
        "cleared {n} replay entries (their runs failed)",
    ),
    "clear-task-queue": (
        "clear_task_queue",
        "deletes queued tasks and fails their runs",
        "cleared the queued tasks of {n} runs (those runs failed)",
    ),
}


def cmd_shard_op(args: argparse.Namespace) -> int:
    method, does, done = _SHARD_VERBS[args.verb]
    if not args.yes:
        raise UsageError(f"{args.verb} {does}; add --yes to confirm")
    loaded = _load(args)

    async def go() -> int:
        async with _client(loaded) as client:
            count = client.db.shards
            if not args.all and args.shard >= count:
                raise UsageError(f"--shard: shard must be from 0 to {count - 1}, got {args.shard}")
            shards = range(count) if args.all else [args.shard]
            fn: Callable[[int], Coroutine[Any, Any, int]] = getattr(client, method)
            for shard in shards:
                n = await fn(shard)
                print(f"shard {shard}: " + done.format(n=n))
        return ExitCode.OK

    return _run(go())


# --- the parser ---------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _shard(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shard number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a shard number >= 0, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    common = _Parser(add_help=False)
    common.add_argument(
        "--config", type=Path, metavar="PATH", default=argparse.SUPPRESS, help=config_help
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(
        name: str,
        handler: Callable[[argparse.Namespace], int],
        text: str,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name,
            parents=[common],
            help=text,
            description=description or text,
            epilog="exit codes: see `executor --help`",
            formatter_class=_Formatter,
        )
        p.set_defaults(handler=handler)
        return p

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--json",
            action="store_true",
            help="print JSON (the default when stdout is not a terminal)",
        )

    verb(
        "run",
        cmd_run,
        "run the daemon in the foreground",
        "Run the daemon: import the daemon.workflows modules, open the database (migrating it),"
        " and work until SIGTERM/SIGINT (graceful drain; a second SIGINT exits at once)."
        " SIGHUP reloads the config: log.level, log.format, engine.concurrency and"
        " engine.poll_interval_s apply live. With no config at all it uses ./executor.sqlite.",
    )

    p = verb(
        "start",
        cmd_start,
        "start a run and print its id",
        "Start a run of workflow NAME and print its id; with --wait, print its result as"
        " JSON instead. The workflow modules in daemon.workflows are imported, so unknown"
        " names and wrong argument counts are refused here.",
    )
    p.add_argument("name", metavar="NAME", help="the workflow's registered name")
    given = p.add_mutually_exclusive_group()
    given.add_argument(
        "--args", metavar="JSON", help="the arguments after ctx, as a JSON array, e.g. '[1, \"a\"]'"
    )
    given.add_argument(
        "--args-file",
        metavar="FILE",
        help="read the JSON array of arguments from FILE ('-' for stdin)",
    )
    p.add_argument(
        "--key",
        metavar="KEY",
        help="idempotency key: starting again with the same key returns the same run",
    )
    p.add_argument(
        "--shard-key", metavar="K", help="runs with the same shard key go to the same shard"
    )
    p.add_argument(
        "--concurrency-key",
        metavar="K",
        help="runs with the same key share a cap on steps in flight (engine.concurrency_key_cap,"
        " [concurrency_keys])",
    )
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="with --wait: give up after S seconds (exit 5)",
    )

    p = verb("status", cmd_status, "show a run's status")
    p.add_argument("run", metavar="RUN", help="the run id")
    json_flag(p)

    p = verb(
        "result",
        cmd_result,
        "print a finished run's result as JSON",
        "Print a run's result as JSON. A failed, cancelled or parked run exits 1 with its"
        " error; an unfinished one exits 1 unless --wait.",
    )
    p.add_argument("run", metavar="RUN", help="the run id")
    p.add_argument("--wait", action="store_true", help="wait until the run finishes")
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="with --wait: give up after S seconds (exit 5)",
    )

    p = verb("cancel", cmd_cancel, "cancel a run (it stops at its next step)")
    p.add_argument("run", metavar="RUN", help="the run id")

    p = verb("list", cmd_list, "list runs, newest first")
    p.add_argument("--status", choices=RUN_STATUSES, help="only runs with this status")
    p.add_argument(
        "--limit", type=_positive_int, default=100, metavar="N", help="at most N runs (default 100)"
    )
    json_flag(p)

    p = verb(
        "stats",
        cmd_stats,
        "queue depths per shard, runs by status, engines",
        "Per shard: queued, waiting (retry backoff), in flight, replay backlog, age of the"
        " oldest queued task, timers and timers due; then runs by status and the engines.",
    )
    json_flag(p)

    verb(
        "bump-epoch",
        cmd_bump_epoch,
        "make every running daemon drain and exit",
        "Take a new epoch: running daemons notice it at their next claim or heartbeat, stop"
        " claiming, drain and exit 0. Use it to stop daemons you cannot signal.",
    )

    for name, (_, does, _) in _SHARD_VERBS.items():
        p = verb(name, cmd_shard_op, f"{does} (needs --yes)")
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--shard", type=_shard, metavar="N", help="only shard N")
        which.add_argument("--all", action="store_true", help="every shard")
        p.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")

    p = verb("resume", cmd_resume, "replay a parked run against the deployed code")
    p.add_argument("run", metavar="RUN", help="the run id")

    p = verb("fail", cmd_fail, "fail a parked run for good")
    p.add_argument("run", metavar="RUN", help="the run id")
    p.add_argument(
        "--reason",
        default="failed by an operator",
        metavar="R",
        help="recorded as the run's error message",
    )

    p = verb(
        "check",
        cmd_check,
        "check the database's invariants (read-only, safe while running)",
        "Read one snapshot of the database and report every broken invariant with the runs"
        " concerned; exit 1 if there is any. Claims of a daemon that died count as stale"
        " only once its heartbeat is older than the lease.",
    )
    p.add_argument(
        "--lease",
        type=_seconds,
        metavar="S",
        help="heartbeat age after which a claim is stale (default: engine.lease_s)",
    )
    json_flag(p)

    # Everything after `bench` is the harness's own (`executor bench --help`); see main().
    p = sub.add_parser(
        BENCH,
        help="benchmark the engine on a fresh temporary database (`executor bench --help`)",
        add_help=False,
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_bench)

    verb("check-config", cmd_check_config, "print the effective config and where each key was set")
    verb("migrate", cmd_migrate, "create or migrate the database; print its schema version")
    return parser


# --- main ---------------------------------------------------------------------------------------

_EXIT_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    # Order matters: the first match wins, so subclasses come before their bases.
    (UsageError, ExitCode.USAGE),
    (errors.ConfigError, ExitCode.USAGE),
    (errors.RegistryError, ExitCode.USAGE),
    (errors.PayloadError, ExitCode.USAGE),
    (errors.StoreError, ExitCode.DATABASE),
    (errors.RunNotFound, ExitCode.NOT_FOUND),
    (errors.ResultTimeout, ExitCode.TIMEOUT),
    (errors.ExecutorError, ExitCode.NOT_CLEAN),
)


def _error(message: str) -> None:
    # One line, whatever the message holds: scripts and journals read errors line by line.
    print(f"{PROG}: error: {' '.join(message.splitlines())}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the verb, and return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [BENCH]:
        # argparse cannot pass options through to another parser untouched: bypass it.
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
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
        return next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))
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
