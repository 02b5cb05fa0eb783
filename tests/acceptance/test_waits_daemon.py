"""Signals from another process (the `executor signal` command) to runs of a real daemon: while
it runs, and while it is stopped; a schedule from the config across a restart."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemons, cli, daemons_in, poll, write_config


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


def _ticks(db: Path) -> list[float]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT args FROM runs WHERE workflow = 'ticker'").fetchall()
    return sorted(json.loads(args)[0] for (args,) in rows)


def test_a_schedule_across_a_restart_fires_each_tick_once_and_skips_the_downtime(
    tmp_path: Path, daemons: Daemons
) -> None:
    every_second = {
        "workflow": "ticker",
        "cron": "* * * * * *",
        "args": ["a"],
        "catchup": "skip",
        "overlap": "allow",
    }
    config = write_config(tmp_path, **{"schedules.every": every_second})
    db = tmp_path / "executor.sqlite"
    daemon = daemons.start(config).ready()
    poll(lambda: len(_ticks(db)) >= 2 or None, "two ticks")
    assert daemon.stop() == 0
    stopped = _ticks(db)
    last = stopped[-1]
    # Time passing is the point here: let a few ticks go by with no daemon.
    poll(lambda: time.time() > last + 3.5 or None, "ticks missed while stopped")
    restarted_at = time.time()
    daemons.start(config).ready()
    poll(lambda: [t for t in _ticks(db) if t > restarted_at + 1] or None, "a tick after restart")
    ticks = _ticks(db)
    assert len(ticks) == len(set(ticks)), "a tick started twice"
    missed = [t for t in ticks if last < t < restarted_at]
    # skip: of the ticks missed while stopped, only the latest (still on time) runs.
    assert len(missed) <= 1, missed

    listed = cli(config, "schedules", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    info = json.loads(listed.stdout)
    assert info["name"] == "every" and info["source"] == "config" and info["skipped"] >= 2
    assert cli(config, "schedules", "pause", "every").returncode == 0
    assert cli(config, "schedules", "pause", "every").returncode == 1  # already paused
    triggered = cli(config, "schedules", "trigger", "every")
    assert triggered.returncode == 0, triggered.stderr
    run_id = triggered.stdout.strip()
    done = cli(config, "result", run_id, "--wait", "--timeout", "15")
    assert done.returncode == 0 and json.loads(done.stdout).startswith("a@"), done.stderr
    assert cli(config, "schedules", "resume", "every").returncode == 0
    assert cli(config, "schedules", "pause", "nope").returncode == 4
    clean = cli(config, "check")
    assert clean.returncode == 0, clean.stdout
