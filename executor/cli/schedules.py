"""The `schedules` verb: list, pause, resume and trigger schedules."""

from __future__ import annotations

import argparse

from executor.cli.common import (
    NotClean,
    UsageError,
    Verbs,
    print_json,
    table,
    wants_json,
    with_client,
)
from executor.client import Client
from executor.exitcodes import ExitCode
from executor.runinfo import ScheduleInfo
from executor.timetext import when

ACTIONS = ("list", "pause", "resume", "trigger")


def register(verbs: Verbs) -> None:
    p = verbs.add(
        "schedules",
        cmd_schedules,
        "list, pause, resume or trigger schedules",
        "list: every schedule with its next and last tick. pause NAME: start no runs until"
        " resumed. resume NAME: start runs again from the next tick (ticks missed while paused"
        " are skipped). trigger NAME: start a run now. Schedules come from [schedules.NAME] in"
        " the config (applied by the daemon at start and reload) or from Client.schedule.",
        json_flag=True,
    )
    p.add_argument("action", choices=ACTIONS, metavar="ACTION", help=" | ".join(ACTIONS))
    p.add_argument("name", nargs="?", metavar="NAME", help="the schedule (not for list)")


def cmd_schedules(args: argparse.Namespace) -> int:
    if args.action == "list":
        if args.name is not None:
            raise UsageError("schedules list takes no NAME")
        return _list(args)
    if args.name is None:
        raise UsageError(f"schedules {args.action} needs the schedule's NAME")

    async def go(client: Client) -> int:
        if args.action == "trigger":
            print(await client.trigger_schedule(args.name))
        elif args.action == "pause":
            if not await client.pause_schedule(args.name):
                raise NotClean(f"schedule {args.name} is paused already")
            print(f"paused schedule {args.name}")
        elif not await client.resume_schedule(args.name):
            raise NotClean(f"schedule {args.name} is not paused")
        else:
            print(f"resumed schedule {args.name}")
        return ExitCode.OK

    return with_client(args, go)


def _list(args: argparse.Namespace) -> int:
    async def go(client: Client) -> list[ScheduleInfo]:
        return await client.schedules()

    found = with_client(args, go)
    if wants_json(args):
        for info in found:
            print_json(info.to_dict())
        return ExitCode.OK
    rows = [
        (
            s.name,
            s.workflow,
            s.cron + ("" if s.timezone == "UTC" else f" ({s.timezone})"),
            "paused" if s.paused else "active",
            when(s.next_fire_at),
            when(s.last_fire_at),
            s.fired,
            s.skipped,
            s.source,
        )
        for s in found
    ]
    headers = ("NAME", "WORKFLOW", "CRON", "STATE", "NEXT", "LAST", "FIRED", "SKIPPED", "SOURCE")
    print(table(headers, rows))
    return ExitCode.OK
