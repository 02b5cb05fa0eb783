"""Verbs for signals and published state: signal, event."""

from __future__ import annotations

import argparse
from typing import Any

from executor.cli.common import (
    RUN_ARG_HELP,
    NotClean,
    Verbs,
    parse_json,
    print_json,
    seconds,
    with_client,
)
from executor.client import Client
from executor.exitcodes import ExitCode

_MISSING: Any = object()


def register(verbs: Verbs) -> None:
    p = verbs.add(
        "signal",
        cmd_signal,
        "send a signal to a run (ctx.wait_for)",
        "Send a message on TOPIC to run RUN: its earliest ctx.wait_for(TOPIC) gets the payload;"
        " sent before the run waits, it is kept. Works whether or not a daemon runs. Exits 1 if"
        " the run has finished (the signal is refused).",
    )
    p.add_argument("run", metavar="RUN", help=RUN_ARG_HELP)
    p.add_argument("topic", metavar="TOPIC", help="the topic the workflow waits on")
    p.add_argument(
        "--payload", metavar="JSON", default="null", help="the message, as JSON (default null)"
    )
    p.add_argument(
        "--key", metavar="K", help="idempotency key: sending again with the same key is a no-op"
    )

    p = verbs.add(
        "event",
        cmd_event,
        "print a value a run published (ctx.set_event) as JSON",
        "Print the latest value run RUN published under KEY. Exits 1 if it has published none"
        " (after waiting --wait seconds for one).",
    )
    p.add_argument("run", metavar="RUN", help=RUN_ARG_HELP)
    p.add_argument("key", metavar="KEY", help="the key the workflow published under")
    p.add_argument(
        "--wait", type=seconds, default=0.0, metavar="S", help="wait up to S seconds for a value"
    )


def cmd_signal(args: argparse.Namespace) -> int:
    payload = parse_json("--payload", args.payload)

    async def go(client: Client) -> int:
        if not await client.signal(args.run, args.topic, payload, key=args.key):
            st = await client.status(args.run)
            raise NotClean(f"run {args.run} has finished ({st.status}): signal refused")
        print(f"sent {args.topic} to run {args.run}")
        return ExitCode.OK

    return with_client(args, go)


def cmd_event(args: argparse.Namespace) -> int:
    async def go(client: Client) -> Any:
        return await client.get_event(args.run, args.key, wait=args.wait, default=_MISSING)

    value = with_client(args, go)
    if value is _MISSING:
        raise NotClean(f"run {args.run} has published no {args.key!r}")
    print_json(value)
    return ExitCode.OK
