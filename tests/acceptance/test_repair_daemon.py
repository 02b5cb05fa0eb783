"""Acceptance: repairing runs with the real daemon as a subprocess and the `executor` command: an
outage of 1,000 runs retried by filter, fork from a middle step, the filters on the command line,
an action killed half-way and run again, takeover refused and accepted, an unregistered workflow
parked and resumed, idempotency conflicts."""

from __future__ import annotations

import collections
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor import Client
from executor.runfilter import RunFilter
from tests.support.daemon import (
    Daemons,
    child_env,
    cli,
    daemons_in,
    lines,
    poll,
    with_client,
    write_config,
)

LONG_S = 120.0  # a deadline for work on 1,000 runs on a busy 2-core machine


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def count(db: Path, **kw: Any) -> int:
    async def go(client: Client) -> int:
        return await client.count(RunFilter(**kw))

    value: int = with_client(db, go)
    return value


def assert_check_clean(config: Path) -> None:
    checked = cli(config, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_outage_of_1000_runs_is_repaired_by_one_retry_by_filter(
    tmp_path: Path, daemons: Daemons
) -> None:
    config = write_config(tmp_path, engine={"concurrency": 50})
    db = tmp_path / "executor.sqlite"
    log, flag = tmp_path / "effects.log", tmp_path / "provider-down"
    flag.touch()
    daemon = daemons.start(config).ready()
    daemon.wait_for_log(r"loaded \d+ workflows from .*outage")
    n = 1000

    async def start(client: Client) -> list[str]:
        return await client.start_many(
            "outage", [[str(log), str(flag), f"k{i}"] for i in range(n)], labels={"batch": "b7"}
        )

    ids = with_client(db, start)
    poll(lambda: count(db, statuses=("failed",)) == n, "every run to fail", LONG_S)
    counted = cli(config, "runs", "count", "--status", "failed", "--step", "call_model")
    assert counted.stdout.strip() == str(n) or json.loads(counted.stdout)["count"] == n
    refused = cli(config, "runs", "retry", "--status", "failed")
    assert refused.returncode == 2 and "add --yes" in refused.stderr, refused.stderr

    flag.unlink()  # the provider is back
    retried = cli(config, "runs", "retry", "--status", "failed", "--yes", timeout_s=LONG_S)
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["acted"] == n
    poll(lambda: count(db, statuses=("succeeded",)) == n, "every run to succeed", LONG_S)

    effects = collections.Counter(lines(log))
    for i in range(n):
        # fetch_doc had succeeded before the outage: it never ran again.
        assert effects[f"k{i} fetch_doc"] == 1
        assert effects[f"k{i} call_model"] == 1
        assert effects[f"k{i} save"] == 1
    assert len(effects) == 3 * n and sum(effects.values()) == 3 * n
    status = json.loads(cli(config, "status", ids[0], "--json").stdout)
    assert status["labels"] == {"batch": "b7"} and status["generation"] == 1
    assert_check_clean(config)
    assert daemon.stop() == 0


def test_fork_and_filters_on_the_command_line(tmp_path: Path, daemons: Daemons) -> None:
    config = write_config(tmp_path)
    daemon = daemons.start(config).ready()
    naps = tmp_path / "naps.log"
    started = cli(
        config, "start", "chain", "--args", json.dumps([str(naps), 3, 0.0]), "--label", "exp=a"
    )
    assert started.returncode == 0, started.stderr
    source = started.stdout.strip()
    assert cli(config, "result", source, "--wait").returncode == 0
    forked = cli(config, "fork", source, "--from-step", "2", "--label", "exp=b")
    assert forked.returncode == 0, forked.stderr
    fork = forked.stdout.strip()
    result = json.loads(cli(config, "result", fork, "--wait").stdout)
    assert result == [f"{source}:0", f"{source}:1", f"{fork}:2"]
    # Positions 0 and 1 ran once, for the source only; position 2 ran for each.
    assert sorted(lines(naps)) == sorted([f"{source}:0", f"{source}:1", f"{source}:2", f"{fork}:2"])

    failed = cli(config, "start", "fail", "--args", '["boom"]', "--label", "exp=b")
    failed_id = failed.stdout.strip()
    assert cli(config, "result", failed_id, "--wait").returncode == 1

    def ids(*args: str) -> list[str]:
        out = cli(config, "list", "--json", *args)
        assert out.returncode == 0, out.stderr
        return [json.loads(line)["id"] for line in out.stdout.splitlines()]

    assert ids("--label", "exp=b") == [failed_id, fork]
    assert ids("--label", "exp=b", "--status", "succeeded") == [fork]
    assert ids("--workflow", "fail") == [failed_id]
    assert ids("--error", "boom") == [failed_id]
    assert ids("--since", "1h", "--until", "2099-01-01") == [failed_id, fork, source]
    assert ids("--until", "1h") == []
    first = cli(config, "list", "--json", "--limit", "2")
    cursor = first.stderr.strip().rsplit(" ", 1)[-1]
    assert first.stderr.startswith("more: --cursor")
    assert ids("--limit", "2", "--cursor", cursor) == [source]
    bad = cli(config, "list", "--since", "yesterday")
    assert bad.returncode == 2 and "--since: 'yesterday'" in bad.stderr
    dry = cli(config, "runs", "purge", "--label", "exp=b", "--dry-run", "--json")
    assert json.loads(dry.stdout)["count"] == 2
    purged = cli(config, "runs", "purge", "--label", "exp=b", "--status", "succeeded")
    assert purged.returncode == 0 and json.loads(purged.stdout)["acted"] == 1
    assert ids("--label", "exp=b") == [failed_id]
    retried = cli(config, "retry", source)
    assert retried.returncode == 1 and "is succeeded" in retried.stderr
    assert_check_clean(config)
    assert daemon.stop() == 0


def test_an_action_killed_half_way_continues_when_run_again(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db = tmp_path / "executor.sqlite"
    n = 2000

    async def prepare(client: Client) -> list[str]:
        ids = await client.start_many("echo", [[i] for i in range(n)])
        await client.cancel_runs(RunFilter())
        return ids

    with_client(db, prepare)
    argv = [sys.executable, "-m", "executor", "runs", "retry", "--status", "cancelled"]
    argv += ["--yes", "--batch-size", "1", "--json", "--config", str(config)]
    action = subprocess.Popen(
        argv, env=child_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    holder = sqlite3.connect(db, isolation_level=None, timeout=10.0)
    try:

        def acted() -> int:
            sql = "SELECT coalesce(max(acted), 0) FROM run_actions WHERE action = 'retry'"
            return int(holder.execute(sql).fetchone()[0])

        poll(lambda: acted() >= 10, "the action to get going")
        holder.execute("BEGIN IMMEDIATE")  # its next batch waits for this lock: kill it there
        half = acted()
        action.send_signal(signal.SIGKILL)
        action.wait(timeout=20)
        holder.execute("ROLLBACK")
    finally:
        holder.close()
        if action.poll() is None:
            action.kill()
        action.communicate()
    assert 10 <= half < n

    # The retried runs are cancelled again (no daemon runs them): the same command must not
    # retry those a second time, only the rest.
    async def cancel_again(client: Client) -> None:
        await client.cancel_runs(RunFilter(statuses=("running",)))

    with_client(db, cancel_again)
    again = cli(config, "runs", "retry", "--status", "cancelled", "--yes", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["resumed"] and report["acted"] == n
    with sqlite3.connect(db) as conn:
        generations = dict(conn.execute("SELECT generation, count(*) FROM runs GROUP BY 1"))
    assert generations == {1: n}


def test_takeover_is_refused_unless_asked(tmp_path: Path, daemons: Daemons) -> None:
    config = write_config(tmp_path, engine={"lease_s": 5.0, "heartbeat_interval_s": 0.2})
    first = daemons.start(config).ready()
    second = daemons.start(config)
    assert second.wait_exit() == 2
    last = second.log().strip().splitlines()[-1]
    assert f"pid {first.pid} on host" in last and "--takeover" in last, last
    assert "bump-epoch" in last
    assert first.proc.poll() is None
    third_log = tmp_path / "third.log"
    with third_log.open("wb") as stderr:
        third = subprocess.Popen(
            [sys.executable, "-m", "executor", "run", "--takeover", "--config", str(config)],
            env=child_env(),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        assert first.wait_exit() == 0  # drained and handed over
        assert "a newer epoch took over" in first.log()
        poll(lambda: "daemon ready" in third_log.read_text(), "the new daemon to be ready")
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=20) == 0
    finally:
        if third.poll() is None:
            third.kill()
            third.wait()


def test_an_unregistered_workflow_parks_and_resumes_after_the_fix(
    tmp_path: Path, daemons: Daemons
) -> None:
    bare = write_config(tmp_path, daemon={"workflows": []})
    db = tmp_path / "executor.sqlite"
    daemon = daemons.start(bare).ready()
    assert "no workflows loaded" in daemon.log()

    async def start(client: Client) -> str:
        return await client.start("echo", {"x": 1})

    run = with_client(db, start)
    poll(lambda: count(db, statuses=("parked",)) == 1, "the run to park")
    status = json.loads(cli(bare, "status", run, "--json").stdout)
    assert status["error"]["type"] == "Unregistered"
    assert "workflow 'echo' is not registered" in status["error"]["message"]
    assert daemon.stop() == 0

    fixed = write_config(tmp_path)  # the same file, now with the workflow modules
    daemon = daemons.start(fixed).ready()
    resumed = cli(fixed, "resume", run)
    assert resumed.returncode == 0, resumed.stderr
    waited = cli(fixed, "result", run, "--wait", "--timeout", "20")
    assert json.loads(waited.stdout) == {"value": {"x": 1}, "sum": 3}
    assert_check_clean(fixed)
    assert daemon.stop() == 0


def test_idempotency_conflicts_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    first = cli(config, "start", "echo", "--args", "[1]", "--key", "k1")
    assert first.returncode == 0, first.stderr
    run = first.stdout.strip()
    same = cli(config, "start", "echo", "--args", "[1]", "--key", "k1")
    assert same.returncode == 0 and same.stdout.strip() == run
    other = cli(config, "start", "fail", "--args", '["x"]', "--key", "k1", "--wait")
    assert other.returncode == 2, other.stderr
    assert f"run {run} of workflow echo (status running)" in other.stderr
    args = cli(config, "start", "echo", "--args", "[2]", "--key", "k1")
    assert args.returncode == 2 and "other arguments" in args.stderr


def test_the_daemon_purges_finished_runs_past_retention(tmp_path: Path, daemons: Daemons) -> None:
    # About 1.7 seconds: runs are purged soon after they finish.
    config = write_config(tmp_path, retention={"finished_days": 0.00002, "interval_s": 0.2})
    db = tmp_path / "executor.sqlite"
    daemon = daemons.start(config).ready()

    async def start(client: Client) -> list[str]:
        return await client.start_many("echo", [[i] for i in range(50)])

    ids = with_client(db, start)
    daemon.wait_for_log(r"retention: purged \d+ runs", timeout_s=LONG_S)
    # Every run but the newest (kept so that run ids are never reused) goes.
    poll(lambda: count(db) == 1, "the finished runs to be purged", LONG_S)
    assert json.loads(cli(config, "status", ids[-1], "--json").stdout)["status"] == "succeeded"
    assert_check_clean(config)
    assert daemon.stop() == 0
