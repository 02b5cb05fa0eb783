"""Verbs on the database file as a whole: `migrate` and `check`."""

from __future__ import annotations

import argparse

from executor import check
from executor.cli.common import Verbs, load, seconds, show, with_client
from executor.client import Client
from executor.exitcodes import ExitCode


def register(verbs: Verbs) -> None:
    verbs.add("migrate", cmd_migrate, "create or migrate the database; print its schema version")
    p = verbs.add(
        "check",
        cmd_check,
        "check the database's invariants (read-only, safe while running)",
        "Read one snapshot of the database and report every broken invariant with the runs"
        " concerned; exit 1 if there is any. Claims of a daemon that died count as stale"
        " only once its heartbeat is older than the lease.",
        json_flag=True,
    )
    p.add_argument(
        "--lease",
        type=seconds,
        metavar="S",
        help="heartbeat age after which a claim is stale (default: engine.lease_s)",
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    async def go(client: Client) -> str:
        version = await client.schema_version()
        return f"{client.path}: schema version {version}, {client.shards} shards"

    print(with_client(args, go, create=True))
    return ExitCode.OK


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load(args).config
    lease_s = cfg.engine.lease_s if args.lease is None else args.lease
    report = check.check(cfg.database, lease_s=lease_s)
    show(args, report.to_dict(), report.summary)
    return ExitCode.OK if report.ok else ExitCode.NOT_CLEAN
