"""Verbs to see what runs are doing: `show` (one run whole)."""

from __future__ import annotations

import argparse
import time

from executor.cli import views
from executor.cli.common import RUN_ARG_HELP, Verbs, show, with_client
from executor.client import Client
from executor.exitcodes import ExitCode
from executor.store.history import RunHistory


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


def cmd_show(args: argparse.Namespace) -> int:
    async def go(client: Client) -> RunHistory:
        return await client.history(args.run)

    found = with_client(args, go)
    show(args, found.to_dict(), lambda: views.history_text(found, time.time()))
    return ExitCode.OK
