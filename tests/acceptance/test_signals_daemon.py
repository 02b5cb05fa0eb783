"""Signals from another process (the `executor signal` command) to runs of a real daemon: while
it runs, and while it is stopped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemons, cli, daemons_in, write_config


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def test_signal_from_the_cli_while_the_daemon_runs_and_while_it_is_stopped(
    tmp_path: Path, daemons: Daemons
) -> None:
    config = write_config(tmp_path)
    first = cli(config, "start", "approval", "--args", '["a"]')
    second = cli(config, "start", "approval", "--args", '["b"]')
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    a, b = first.stdout.strip(), second.stdout.strip()

    daemon = daemons.start(config).ready()
    stage = cli(config, "event", a, "stage", "--wait", "15")
    assert stage.returncode == 0, stage.stderr
    assert json.loads(stage.stdout) == "waiting"
    sent = cli(config, "signal", a, "review", "--payload", '{"ok": true}', "--key", "r1")
    assert sent.returncode == 0, sent.stderr
    done = cli(config, "result", a, "--wait", "--timeout", "15")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"subject": "a", "decision": {"ok": True}, "sum": 2}
    assert cli(config, "event", b, "stage", "--wait", "15").returncode == 0  # b waits too
    assert daemon.stop() == 0

    # No daemon: the signal is kept in the file, and the next daemon delivers it.
    sent = cli(config, "signal", b, "review", "--payload", "[1, 2]")
    assert sent.returncode == 0, sent.stderr
    daemons.start(config).ready()
    done = cli(config, "result", b, "--wait", "--timeout", "15")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decision"] == [1, 2]

    refused = cli(config, "signal", a, "review", "--payload", "1")
    assert refused.returncode == 1
    assert "has finished (succeeded): signal refused" in refused.stderr
    bad = cli(config, "signal", a, "review", "--payload", "{nope")
    assert bad.returncode == 2 and "--payload: invalid JSON" in bad.stderr
    missing = cli(config, "signal", "no-such-run", "review")
    assert missing.returncode == 4
    unset = cli(config, "event", a, "nothing")
    assert unset.returncode == 1
    clean = cli(config, "check")
    assert clean.returncode == 0, clean.stdout
