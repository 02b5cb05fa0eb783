"""Verbs to see what runs are doing: `show` (one run whole), `watch` (a batch, live) and `serve`
(the read-only dashboard and /metrics, executor/web)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable

from executor.cli import progress, views
from executor.cli.common import (
    RUN_ARG_HELP,
    NotClean,
    UsageError,
    Verbs,
    load,
    seconds,
    show,
    wants_json,
    with_client,
)
from executor.cli.repair import add_filter_args, filter_from
from executor.client import Client
from executor.exitcodes import ExitCode
from executor.runinfo import BatchProgress, RunHistory

DEFAULT_SERVE_PORT = 9470


def register(verbs: Verbs) -> None:
    p = verbs.add(
        "show",
        cmd_show,
        "show one run whole: its journal and what it waits on",
        "Show a run's journal position by position (kind, name, status, attempts, last error,"
        " start, end, duration) and what it waits on now: queued since T, in flight on engine"
        " E, retry at T, waiting for a quota, sleeping until T, parked because ...",
        json_flag=True,
    )
    p.add_argument("run", metavar="RUN", help=RUN_ARG_HELP)

    p = verbs.add(
        "watch",
        cmd_watch,
        "follow a batch of runs live until none is running",
        "Follow a batch (the runs the filters select, e.g. --label batch=nightly or --workflow"
        " W --since 1h) with a progress bar: finished of total, succeeded, failed, parked,"
        " steps per second, ETA. Ends when none"
        " of its runs is running: exit 0 if every run succeeded, 1 otherwise. Not on a"
        " terminal (or with --json): one JSON object per interval.",
        json_flag=True,
    )
    add_filter_args(p)
    p.add_argument(
        "--interval", type=seconds, default=1.0, metavar="S", help="seconds between readings"
    )

    p = verbs.add(
        "serve",
        cmd_serve,
        "serve the read-only dashboard and /metrics",
        "Serve a read-only dashboard of the database (overview with the last hour's plots,"
        " failures grouped with the command that re-drives them, runs, each run's journal)"
        " and its Prometheus /metrics, until Ctrl-C or SIGTERM. A separate process that"
        " opens the file read-only: it works while the daemon is down. Every asset ships in"
        " the package; nothing is fetched.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", metavar="H", help="address to listen on (default 127.0.0.1)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_SERVE_PORT,
        metavar="P",
        help=f"port (default {DEFAULT_SERVE_PORT}; 0: any free port, printed)",
    )


def cmd_watch(args: argparse.Namespace) -> int:
    terminal = not wants_json(args)
    where = filter_from(args)
    title = where.describe()

    async def go(client: Client) -> BatchProgress:
        first = await client.progress(where)
        if first.total == 0:
            raise NotClean(f"no runs match ({title})")

        def read() -> Awaitable[BatchProgress]:
            return client.progress(where)

        return await progress.watch(read, title=title, interval_s=args.interval, terminal=terminal)

    last = with_client(args, go)
    done = last.runs.get("succeeded", 0)
    return ExitCode.OK if done == last.total else ExitCode.NOT_CLEAN


def cmd_serve(args: argparse.Namespace) -> int:
    from executor.web.serve import serve  # the daemon and other verbs never import the web

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port: expected 0 to 65535, got {args.port}")
    cfg = load(args).config
    serve(cfg.database, args.host, args.port, out=sys.stdout)
    return ExitCode.OK


def cmd_show(args: argparse.Namespace) -> int:
    async def go(client: Client) -> RunHistory:
        return await client.history(args.run)

    found = with_client(args, go)
    show(args, found.to_dict(), lambda: views.history_text(found, time.time()))
    return ExitCode.OK
