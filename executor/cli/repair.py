"""Verbs that repair runs: `retry`, `fork`, `runs count|list|cancel|retry|resume|fail|purge`, and
`vacuum`; plus the run filter options that `list` shares with `runs`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from executor.cli.common import (
    RUN_ARG_HELP,
    NotClean,
    UsageError,
    Verbs,
    position,
    positive_int,
    print_json,
    show,
    table,
    wants_json,
    with_client,
)
from executor.client import Client
from executor.exitcodes import ExitCode
from executor.runfilter import FilterError, RunFilter
from executor.runinfo import RUN_STATUSES, ActionReport, RunPage, RunStatus
from executor.timetext import when

# Acting on more runs than this needs --yes (the same convention as fail-pending).
CONFIRM_ABOVE = 100
SAMPLE = 10
_ACTIONS = {
    # verb: (what it does, for --help and the refusal)
    "cancel": "cancel the matching running or parked runs",
    "retry": "retry the matching failed, cancelled or parked runs in place",
    "resume": "resume the matching parked runs",
    "fail": "fail the matching parked runs for good",
    "purge": "delete the matching finished runs with their journal; the file gives the space back",
}
_POSITION_HELP = "journal position to restart from (as `executor show` prints them, from 0)"


def register(verbs: Verbs) -> None:
    p = verbs.add(
        "retry",
        cmd_retry,
        "run a failed, cancelled or parked run again, in place",
        "Put a failed, cancelled or parked run back to running under the same id. The journal"
        " before the restart position is kept (those steps do not run again); the rest is"
        " dropped. By default it restarts at the first position that did not succeed. A result"
        " of the old attempt that arrives late is dropped.",
    )
    p.add_argument("run", metavar="RUN", help=RUN_ARG_HELP)
    p.add_argument("--from-step", type=position, metavar="N", help=_POSITION_HELP)

    p = verbs.add(
        "fork",
        cmd_fork,
        "start a new run from a run's journal up to a step",
        "Start a new run of the same workflow and arguments whose journal is RUN's up to position"
        " N; it runs the deployed code from there. RUN is not changed, whatever its status."
        " Prints the new run's id.",
    )
    p.add_argument("run", metavar="RUN", help=RUN_ARG_HELP)
    p.add_argument(
        "--from-step", type=position, metavar="N", required=True, help="positions 0..N-1 are kept"
    )
    p.add_argument(
        "--label",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="the new run's labels (default: RUN's); repeat for more",
    )

    p = verbs.add(
        "runs",
        cmd_runs,
        "count, list or act on runs by filter (cancel, retry, resume, fail, purge)",
        "Count, list, or act on every run that matches the filters. Actions work in short"
        " batches, so a running daemon keeps working; an action cut short (a crash, Ctrl-C) is"
        " continued by running the same command again, and acts on each run once. Runs started"
        f" after the action began are never touched. Acting on more than {CONFIRM_ABOVE} runs"
        " needs --yes; --dry-run prints the count and a sample.",
    )
    p.add_argument("what", choices=("count", "list", *_ACTIONS), metavar="WHAT", help=_what_help())
    add_filter_args(p)
    p.add_argument("--from-step", type=position, metavar="N", help="retry: " + _POSITION_HELP)
    p.add_argument("--reason", metavar="R", help="fail: recorded as the runs' error message")
    p.add_argument("--dry-run", action="store_true", help="print the count and a sample only")
    p.add_argument("--yes", action="store_true", help=f"confirm an action on > {CONFIRM_ABOVE}")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=500,
        metavar="N",
        help="runs per transaction (default 500)",
    )
    p.add_argument(
        "--max-rate",
        type=positive_int,
        metavar="N",
        help="at most N runs per second (a retry hands the daemon a replay of each run)",
    )
    add_page_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    verbs.add(
        "vacuum",
        cmd_vacuum,
        "rewrite the database file to its smallest size (stop the daemon first)",
        "Rewrite the whole file (SQLite VACUUM), giving every free page back, and switch it to"
        " incremental vacuum, so later purges give space back as they go. Files created by this"
        " version already purge that way; older ones only reuse the space until this runs once."
        " It holds the write lock for as long as it takes: stop the daemon first. On PostgreSQL"
        " it runs VACUUM (FULL, ANALYZE): each table is rewritten to its smallest size, locked"
        " (reads too) while it is copied; autovacuum already lets new rows reuse purged space.",
    )


def _what_help() -> str:
    return "count, list, or one of: " + "; ".join(f"{k}: {v}" for k, v in _ACTIONS.items())


# --- the shared run filter ------------------------------------------------------------------------


def add_filter_args(p: argparse.ArgumentParser) -> None:
    """The run filter options (RunFilter), for every verb that selects runs."""
    p.add_argument("--workflow", metavar="NAME", help="runs of this workflow")
    p.add_argument(
        "--status",
        action="append",
        default=[],
        metavar="STATUS",
        help=f"runs in this status ({', '.join(RUN_STATUSES)}); repeat or comma-separate for more",
    )
    p.add_argument(
        "--since",
        metavar="T",
        help="started at or after T: an age (30m, 2h, 7d) or a time (2026-11-27T14:00, UTC)",
    )
    p.add_argument("--until", metavar="T", help="started before T (same forms as --since)")
    p.add_argument(
        "--error", metavar="TEXT", help="the error's type or message contains TEXT (any case)"
    )
    p.add_argument(
        "--step", metavar="NAME", help="the run failed at this step (full or last dotted name)"
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="runs with this label; repeat for more (all must match)",
    )


def add_page_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit", type=positive_int, default=100, metavar="N", help="at most N runs (default 100)"
    )
    p.add_argument(
        "--cursor", metavar="C", help="the next page: the cursor the previous page printed"
    )


def filter_from(args: argparse.Namespace, now: float | None = None) -> RunFilter:
    try:
        return RunFilter.parse(
            workflow=args.workflow,
            status=args.status,
            since=args.since,
            until=args.until,
            error=args.error,
            step=args.step,
            label=args.label,
            now=now,
        )
    except FilterError as exc:
        raise UsageError(f"{exc.message} (see `executor {args.verb} --help`)") from None


def _filter_spec(args: argparse.Namespace) -> str:
    # What the operator typed (relative times unresolved): running the same command again finds
    # the unfinished action and continues it.
    return json.dumps(
        {
            "workflow": args.workflow,
            "status": sorted(args.status),
            "since": args.since,
            "until": args.until,
            "error": args.error,
            "step": args.step,
            "label": sorted(args.label),
        },
        sort_keys=True,
    )


# --- list and runs --------------------------------------------------------------------------------


def print_page(args: argparse.Namespace, page: RunPage) -> None:
    """A page of runs: a table (or one JSON object per line), then the next page's cursor."""
    if wants_json(args):
        for st in page.runs:
            print_json(st.to_dict())
    else:
        rows = [
            (
                st.id,
                st.workflow,
                st.status,
                st.shard,
                when(st.created_at),
                st.events,
                _labels(st.labels),
                _error(st),
            )
            for st in page.runs
        ]
        headers = ("ID", "WORKFLOW", "STATUS", "SHARD", "CREATED", "EVENTS", "LABELS", "ERROR")
        print(table(headers, rows))
    if page.cursor is not None:
        print(f"more: --cursor {page.cursor}", file=sys.stderr)


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items()) or "-"


def _error(st: RunStatus, width: int = 60) -> str:
    if st.error is None:
        return "-"
    text = f"{st.error.get('type')}: {st.error.get('message')}"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_runs(args: argparse.Namespace) -> int:
    what = args.what
    if what not in ("retry",) and args.from_step is not None:
        raise UsageError("--from-step is for `runs retry`")
    if what != "fail" and args.reason is not None:
        raise UsageError("--reason is for `runs fail`")
    if what in ("count", "list") and (args.dry_run or args.yes):
        raise UsageError(f"--dry-run and --yes are for actions, not `runs {what}`")
    now = time.time()
    where = filter_from(args, now)

    if what == "count":
        count = with_client(args, lambda client: client.count(where))
        show(args, {"count": count, "filter": where.describe()}, lambda: str(count))
        return ExitCode.OK
    if what == "list":
        page = with_client(
            args, lambda client: client.runs(where, limit=args.limit, cursor=args.cursor)
        )
        print_page(args, page)
        return ExitCode.OK

    async def go(client: Client) -> ActionReport | None:
        count = await client.count(where)
        sample = await client.runs(where, limit=SAMPLE)
        if args.dry_run or (count > CONFIRM_ABOVE and not args.yes):
            _print_preview(args, what, where, count, sample)
            if not args.dry_run:
                raise UsageError(
                    f"runs {what} would act on {count} runs (more than {CONFIRM_ABOVE});"
                    " check with --dry-run, then add --yes"
                )
            return None
        started = time.monotonic()
        last = [started]

        def progress(report: ActionReport) -> None:
            if not wants_json(args) and time.monotonic() - last[0] > 1.0 and not report.done:
                last[0] = time.monotonic()
                print(
                    f"{what}: {report.acted} done, {report.skipped} skipped so far...",
                    file=sys.stderr,
                )

        report = await client.act(
            what,
            where,
            from_step=args.from_step,
            reason=args.reason,
            batch_size=args.batch_size,
            spec=_filter_spec(args),
            on_batch=progress,
            max_rate=args.max_rate,
        )
        took = time.monotonic() - started
        if wants_json(args):
            print_json({**report.to_dict(), "seconds": round(took, 3)})
        else:
            again = " (continued an unfinished action)" if report.resumed else ""
            skipped = (
                f"; {report.skipped} matched but were no longer in a state to {what}"
                if report.skipped
                else ""
            )
            print(
                f"{what}: {report.acted} runs in {took:.1f}s{again}{skipped}"
                f" [action {report.id}: {report.filter.describe()}]"
            )
        return report

    report = with_client(args, go)
    if report is not None and report.acted == 0 and report.skipped == 0 and not report.resumed:
        raise NotClean(f"runs {what}: no run matches ({where.describe()})")
    return ExitCode.OK


def _print_preview(
    args: argparse.Namespace, what: str, where: RunFilter, count: int, sample: RunPage
) -> None:
    if wants_json(args):
        print_json(
            {
                "action": what,
                "count": count,
                "filter": where.describe(),
                "sample": [st.to_dict() for st in sample.runs],
            },
            pretty=True,
        )
        return
    print(f"runs {what} would act on {count} runs ({where.describe()}); newest first:")
    print_page(args, RunPage(sample.runs, None))


# --- one run --------------------------------------------------------------------------------------


def cmd_retry(args: argparse.Namespace) -> int:
    async def go(client: Client) -> int:
        return await client.retry(args.run, args.from_step)

    point = with_client(args, go)
    print(f"retrying run {args.run} from position {point}: positions 0..{point - 1} are kept")
    return ExitCode.OK


def cmd_fork(args: argparse.Namespace) -> int:
    labels = None
    if args.label is not None:
        labels = dict(RunFilter.parse(label=args.label).labels)

    async def go(client: Client) -> str:
        return await client.fork(args.run, args.from_step, labels=labels)

    print(with_client(args, go))
    return ExitCode.OK


def cmd_vacuum(args: argparse.Namespace) -> int:
    async def go(client: Client) -> tuple[int, int, str]:
        before, after = await client.vacuum()
        return before, after, client.db.dialect

    before, after, dialect = with_client(args, go)
    later = (
        "later purges give space back as they go"
        if dialect == "sqlite"
        # PostgreSQL's autovacuum lets new rows reuse a purge's space; only VACUUM FULL
        # gives it back to the file system.
        else "later purges' space is reused by new rows; run this again to give it back"
    )
    print(f"vacuumed: {before} bytes before, {after} after; {later}")
    return ExitCode.OK
