"""Verbs about daemons: `run` (the daemon itself) and `bump-epoch` (make every daemon drain)."""

from __future__ import annotations

import argparse

from executor import config
from executor.cli.common import Verbs, load, with_client
from executor.client import Client
from executor.daemon.lifecycle import Daemon
from executor.exitcodes import ExitCode

# What SIGHUP applies without a restart, for `executor run --help`; from config, so it cannot drift.
_LIVE = ", ".join(sorted(config.LIVE_KEYS))


def register(verbs: Verbs) -> None:
    p = verbs.add(
        "run",
        cmd_run,
        "run the daemon in the foreground",
        "Run the daemon: import the daemon.workflows modules, open the database (migrating it),"
        " and work until SIGTERM/SIGINT (graceful drain; a second SIGINT exits at once)."
        f" SIGHUP reloads the config: {_LIVE}, [limits.*] and [concurrency_keys] apply live;"
        " other keys are logged as needing a restart. With no config at all it uses"
        " ./executor.sqlite. It refuses to start (exit 2) while another live daemon works on"
        " the same file, unless --takeover.",
    )
    p.add_argument(
        "--takeover",
        action="store_true",
        help="start even if another daemon works on the file: it stops claiming, drains, exits 0",
    )
    verbs.add(
        "bump-epoch",
        cmd_bump_epoch,
        "make every running daemon drain and exit",
        "Take a new epoch: running daemons notice it at their next claim or heartbeat, stop"
        " claiming, drain and exit 0. Use it to stop daemons you cannot signal.",
    )


def cmd_run(args: argparse.Namespace) -> int:
    return Daemon(load(args), config_path=args.config, takeover=args.takeover).run()


def cmd_bump_epoch(args: argparse.Namespace) -> int:
    async def go(client: Client) -> int:
        return await client.bump_epoch()

    epoch = with_client(args, go)
    print(f"epoch is now {epoch}: running daemons stop claiming, drain and exit")
    return ExitCode.OK
