"""The operator and observability verbs on PostgreSQL, as an operator runs them: real processes
(`executor run`, `executor ...`, `executor serve`) that find the database in
EXECUTOR_DATABASE_URL, with a config that still names a SQLite file (the URL wins, and the file is
never created). The SQLite twins of these paths are in test_cli, test_repair_daemon,
test_waits_daemon and test_dashboard."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemons, child_env, cli, daemons_in, poll, write_config

LONG_S = 60.0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def run(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = cli(config, *args, env=env, timeout_s=LONG_S)
    assert done.returncode == 0, f"executor {' '.join(args)}: {done.stderr}"
    return done


def as_json(config: Path, env: dict[str, str], *args: str) -> Any:
    return json.loads(run(config, env, *args, "--json").stdout)


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.slow  # some 30 commands, each a new process
def test_the_operator_verbs_on_postgresql(tmp_path: Path, daemons: Daemons, pg_url: str) -> None:
    hourly = {"workflow": "ticker", "cron": "0 * * * *", "args": ["a"]}
    config = write_config(tmp_path, **{"schedules.hourly": hourly})
    env = child_env(EXECUTOR_DATABASE_URL=pg_url)
    log, flag = tmp_path / "effects.log", tmp_path / "provider-down"
    flag.touch()
    daemon = daemons.start(config, env=env).ready()
    ids = [
        run(
            config, env, "start", "outage", "--args", json.dumps([str(log), str(flag), f"k{i}"])
        ).stdout.strip()
        for i in range(6)
    ]
    poll(
        lambda: as_json(config, env, "runs", "count", "--status", "failed")["count"] == 6,
        "every run to fail",
        LONG_S,
    )
    listed = run(
        config, env, "runs", "list", "--step", "call_model", "--error", "overload", "--json"
    )
    assert sorted(r["id"] for r in json_lines(listed.stdout)) == sorted(ids)
    shown = run(config, env, "show", ids[0], "--json")
    assert "provider outage: 529 overloaded" in shown.stdout

    flag.unlink()  # the provider is back
    assert as_json(config, env, "runs", "retry", "--status", "failed", "--yes")["acted"] == 6
    for i, run_id in enumerate(ids):
        done = run(config, env, "result", run_id, "--wait", "--timeout", "30")
        assert json.loads(done.stdout) == f"summary of doc k{i}"
    assert as_json(config, env, "status", ids[0])["generation"] == 1

    # Signals and published values, from other processes.
    waiting = run(config, env, "start", "approval", "--args", '["a"]').stdout.strip()
    stage = run(config, env, "event", waiting, "stage", "--wait", "15")
    assert json.loads(stage.stdout) == "waiting"
    run(config, env, "signal", waiting, "review", "--payload", '{"ok": true}', "--key", "r1")
    done = run(config, env, "result", waiting, "--wait", "--timeout", "15")
    assert json.loads(done.stdout)["decision"] == {"ok": True}

    # Cancel by filter; resume and fail find nothing parked, and say so.
    for _ in range(2):
        run(config, env, "start", "long_sleep", "--args", "[3600]")
    cancelled = as_json(config, env, "runs", "cancel", "--workflow", "long_sleep", "--yes")
    assert cancelled["acted"] == 2
    for verb in ("resume", "fail"):
        none = cli(config, "runs", verb, "--status", "parked", "--yes", env=env)
        assert none.returncode == 1 and "no run matches (status=parked)" in none.stderr

    # Schedules from the config, applied by the daemon in the database.
    (hourly_info,) = json_lines(run(config, env, "schedules", "list", "--json").stdout)
    assert hourly_info["name"] == "hourly" and hourly_info["source"] == "config"
    run(config, env, "schedules", "pause", "hourly")
    ticked = run(config, env, "schedules", "trigger", "hourly").stdout.strip()
    done = run(config, env, "result", ticked, "--wait", "--timeout", "15")
    assert json.loads(done.stdout).startswith("a@")

    stats = as_json(config, env, "stats")
    assert stats["runs"] == {"succeeded": 8, "cancelled": 2}, stats
    checked = cli(config, "check", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["ok"] is True
    replayed = cli(config, "replay-check", "--status", "succeeded", env=env)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr

    assert daemon.stop() == 0
    assert as_json(config, env, "runs", "purge", "--status", "cancelled", "--yes")["acted"] == 2
    vacuumed = run(config, env, "vacuum")
    assert "reused by new rows" in vacuumed.stdout, vacuumed.stdout
    assert as_json(config, env, "runs", "count")["count"] == 8
    assert cli(config, "check", env=env).returncode == 0
    assert not (tmp_path / "executor.sqlite").exists()  # the URL won over database.path


def test_the_dashboard_and_metrics_of_a_postgresql_database(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path)
    env = child_env(EXECUTOR_DATABASE_URL=pg_url)
    run_id = run(config, env, "start", "echo", "--args", "[1]").stdout.strip()
    with subprocess.Popen(
        [sys.executable, "-m", "executor", "serve", "--port", "0", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            if not first.startswith("serving http://"):
                proc.terminate()
                raise AssertionError(first + (proc.stderr.read() if proc.stderr else ""))
            assert pg_url in first and "(read-only)" in first
            base = first.split()[1]
            for page, expected in (("", "Queued"), ("runs", run_id), (f"runs/{run_id}", "echo")):
                with urllib.request.urlopen(base + page, timeout=LONG_S) as response:
                    assert response.status == 200
                    assert expected in response.read().decode()
            with urllib.request.urlopen(base + "metrics", timeout=LONG_S) as response:
                text = response.read().decode()
            assert 'executor_runs{status="running",workflow="echo"} 1.0' in text
            assert "executor_db_size_bytes" in text and "executor_db_wal_bytes" not in text
        finally:
            proc.terminate()
            proc.wait(LONG_S)
