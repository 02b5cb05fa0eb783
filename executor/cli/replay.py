"""`executor replay-check`: before a deploy, replay the runs in flight against the new code."""

from __future__ import annotations

import argparse

from executor import registry, replaycheck
from executor.cli.common import UsageError, Verbs, load, show
from executor.daemon.workflows import import_workflows
from executor.exitcodes import ExitCode
from executor.vocabulary import RunState


def register(verbs: Verbs) -> None:
    p = verbs.add(
        "replay-check",
        cmd_replay_check,
        "replay runs in flight against the code the config names (read-only); exit 1 if any"
        " would be parked",
        "Import the modules of daemon.workflows (the code you are about to deploy), rebuild"
        " each selected run from its journal without writing anything or running a step, and"
        " list every run the new code would park: the position, what the journal holds and what"
        " the code asks for. Runs whose recorded steps are now called with other arguments are"
        " listed apart: their recorded results stand under engine.replay_args = log. Use it"
        " against the live file or a copy (sqlite3 .backup), e.g. as a CI step before a deploy.",
        json_flag=True,
    )
    p.add_argument(
        "--status",
        default="running,parked",
        metavar="S[,S]",
        help="statuses of the runs to replay (default: running,parked; e.g. add failed)",
    )
    p.add_argument(
        "--workflow",
        action="append",
        metavar="NAME",
        help="only runs of this workflow (repeatable; default: all)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="at most N runs, oldest first")
    p.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="count changed step arguments as divergences (default: as engine.replay_args)",
    )


def cmd_replay_check(args: argparse.Namespace) -> int:
    cfg = load(args).config
    statuses = [s.strip() for s in args.status.split(",") if s.strip()]
    bad = [s for s in statuses if s not in set(RunState)]
    if bad or not statuses:
        raise UsageError(
            f"--status: unknown status {bad or args.status!r}; one of {', '.join(RunState)}"
        )
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    import_workflows(cfg.daemon.workflows)
    registry.default_registry.check_types()
    strict = cfg.engine.replay_args == "strict" if args.strict is None else args.strict
    report = replaycheck.replay_check(
        cfg.database,
        statuses=statuses,
        workflows=args.workflow,
        limit=args.limit,
        strict=strict,
        payload_limit=cfg.engine.payload_limit_bytes,
    )
    show(args, report.to_dict(), report.summary)
    return ExitCode.OK if report.ok else ExitCode.NOT_CLEAN
