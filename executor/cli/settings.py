"""`check-config`: the effective configuration and where each key was set."""

from __future__ import annotations

import argparse
import sys

from executor import config
from executor.cli.common import Verbs, load
from executor.exitcodes import ExitCode


def register(verbs: Verbs) -> None:
    verbs.add(
        "check-config",
        cmd_check_config,
        "print the effective config and where each key was set",
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    sys.stdout.write(config.render_config(load(args)))
    return ExitCode.OK
