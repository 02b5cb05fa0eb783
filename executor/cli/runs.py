"""Verbs on one run or a list of runs: start, status, result, cancel, list, resume, fail."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from executor.cli import repair
from executor.cli.common import (
    RUN_ARG_HELP,
    TIMEOUT_HELP,
    Handler,
    NotClean,
    UsageError,
    Verbs,
    load,
    parse_json,
    print_json,
    seconds,
    show,
    with_client,
)
from executor.client import Client
from executor.daemon.workflows import import_workflows
from executor.exitcodes import ExitCode
from executor.runfilter import parse_label
from executor.runinfo import RunPage, RunStatus, error_line
from executor.timetext import when
from executor.vocabulary import RunState


def register(verbs: Verbs) -> None:
    p = verbs.add(
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
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label, shown by status and list and usable in filters; repeat for more",
    )
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    p.add_argument("--timeout", type=seconds, metavar="S", help=TIMEOUT_HELP)

    p = verbs.add(
        "status", cmd_status, "show a run's status, current step and its last error", json_flag=True
    )
    p.add_argument("run", metavar="RUN", help=RUN_ARG_HELP)

    p = verbs.add(
        "result",
        cmd_result,
        "print a finished run's result as JSON",
        "Print a run's result as JSON. A failed, cancelled or parked run exits 1 with its"
        " error; an unfinished one exits 1 unless --wait.",
    )
    p.add_argument("run", metavar="RUN", help=RUN_ARG_HELP)
    p.add_argument("--wait", action="store_true", help="wait until the run finishes")
    p.add_argument("--timeout", type=seconds, metavar="S", help=TIMEOUT_HELP)

    p = verbs.add("cancel", cmd_cancel, "cancel a run (it stops at its next step)")
    p.add_argument("run", metavar="RUN", help=RUN_ARG_HELP)

    p = verbs.add(
        "list",
        cmd_list,
        "list runs, newest first (by filter, a page at a time)",
        "List runs, newest first, that match the filters (the same as `executor runs`). When"
        " there are more, the last line on stderr gives the --cursor of the next page.",
        json_flag=True,
    )
    repair.add_filter_args(p)
    repair.add_page_args(p)

    p = verbs.add("resume", cmd_resume, "replay a parked run against the deployed code")
    p.add_argument("run", metavar="RUN", help=RUN_ARG_HELP)

    p = verbs.add("fail", cmd_fail, "fail a parked run for good")
    p.add_argument("run", metavar="RUN", help=RUN_ARG_HELP)
    p.add_argument(
        "--reason",
        default="failed by an operator",
        metavar="R",
        help="recorded as the run's error message",
    )


def parse_args_json(args: argparse.Namespace) -> list[Any]:
    """The workflow's arguments from --args or --args-file: a JSON array, nothing else."""
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
    value = parse_json(option, text)
    if not isinstance(value, list):
        raise UsageError(
            f"{option}: expected a JSON array of the workflow's arguments, got"
            f" {type(value).__name__} (for one argument x, pass [x])"
        )
    return value


async def _print_result(client: Client, run_id: str, wait: bool, timeout: float | None) -> int:
    if not wait:
        st = await client.status(run_id)
        if not st.finished and st.status != RunState.PARKED:
            raise NotClean(f"run {run_id} has not finished (status {st.status}); use --wait")
    value = await client.result(run_id, timeout=timeout if wait else 0.0)
    print_json(value)
    return ExitCode.OK


def cmd_start(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout needs --wait")
    workflow_args = parse_args_json(args)
    labels = dict(parse_label(text) for text in args.label) or None
    loaded = load(args)
    modules = loaded.config.daemon.workflows
    import_workflows(modules, f"{loaded.sources['daemon.workflows']}: daemon.workflows")

    async def go(client: Client) -> int:
        run_id = await client.start(
            args.name,
            *workflow_args,
            idempotency_key=args.key,
            shard_key=args.shard_key,
            concurrency_key=args.concurrency_key,
            labels=labels,
        )
        if not args.wait:
            print(run_id)
            return ExitCode.OK
        return await _print_result(client, run_id, True, args.timeout)

    # With modules configured, a wrong name or argument count is refused here, not in the daemon;
    # without, the name is passed on as given.
    return with_client(args, go, loaded=loaded, create=True, strict=bool(modules))


def cmd_status(args: argparse.Namespace) -> int:
    async def go(client: Client) -> RunStatus:
        return await client.status(args.run)

    st = with_client(args, go)
    show(args, st.to_dict(), lambda: "\n".join(f"{k + ':':<12} {v}" for k, v in _human(st).items()))
    return ExitCode.OK


def _human(st: RunStatus) -> dict[str, object]:
    out: dict[str, object] = {
        "id": st.id,
        "workflow": st.workflow + (f" (version {st.version})" if st.version else ""),
        "status": st.status,
        "shard": st.shard,
        "created": when(st.created_at),
        "updated": when(st.updated_at),
        "finished": when(st.finished_at),
        "events": st.events,
    }
    step = st.current_step
    if step is not None:
        attempts = step["attempts"]
        out["step"] = (
            f"{step['kind']} {step['name']} (position {step['pos']}), {step['status']},"
            f" {attempts} attempt{'' if attempts == 1 else 's'}"
        )
        if step["error"] is not None:
            out["step error"] = error_line(step["error"])
    if st.labels:
        out["labels"] = ", ".join(f"{k}={v}" for k, v in st.labels.items())
    if st.generation:
        out["retries"] = st.generation
    if st.forked_from:
        out["forked from"] = st.forked_from
    if st.error is not None:
        out["error"] = error_line(st.error)
    return out


def cmd_result(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout needs --wait")
    return with_client(
        args, lambda client: _print_result(client, args.run, args.wait, args.timeout)
    )


def cmd_cancel(args: argparse.Namespace) -> int:
    async def go(client: Client) -> int:
        if not await client.cancel(args.run):
            st = await client.status(args.run)
            raise NotClean(f"run {args.run} had already finished ({st.status})")
        print(f"cancelled run {args.run}")
        return ExitCode.OK

    return with_client(args, go)


def cmd_list(args: argparse.Namespace) -> int:
    where = repair.filter_from(args)

    async def go(client: Client) -> RunPage:
        return await client.runs(where, limit=args.limit, cursor=args.cursor)

    # One JSON object per line with --json, so a reader can stream them.
    repair.print_page(args, with_client(args, go))
    return ExitCode.OK


def _on_parked(action: str, done: str) -> Handler:
    """`resume` and `fail`: act on a parked run; NotClean (exit 1) if it is not parked."""

    def handler(args: argparse.Namespace) -> int:
        async def go(client: Client) -> int:
            ok = await (
                client.resume(args.run)
                if action == "resume"
                else client.fail(args.run, args.reason)
            )
            if not ok:
                st = await client.status(args.run)  # RunNotFound for an unknown id
                raise NotClean(f"run {args.run} is not parked (status {st.status})")
            print(done.format(run=args.run))
            return ExitCode.OK

        return with_client(args, go)

    return handler


cmd_resume = _on_parked("resume", "resumed run {run}: it replays against the deployed code")
cmd_fail = _on_parked("fail", "failed run {run}")
