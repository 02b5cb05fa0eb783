"""The `executor` verbs: happy paths against a real daemon and database, and every error path's
one line and exit code. Most calls run `cli.main` in this process (fast); the daemon, the console
script and the terminal output run as real child processes."""

from __future__ import annotations

import argparse
import json
import os
import pty
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor import Client
from executor import cli as executor_cli
from executor.store.database import SCHEMA_VERSION
from tests.support.daemon import (
    DaemonProcess,
    child_env,
    cli,
    poll,
    with_client,
    write_config,
)


def verbs() -> list[str]:
    """Every verb."""
    parser = executor_cli.build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


VERBS = verbs()


@pytest.fixture(autouse=True)
def no_executor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verbs read EXECUTOR_* like the daemon does; keep this machine's out of the tests."""
    for name in list(os.environ):
        if name.startswith("EXECUTOR_"):
            monkeypatch.delenv(name)


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err

    @property
    def error_line(self) -> str:
        """The one error line; fails unless stderr is exactly one `executor: error:` line."""
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("executor: error: "), lines[0]
        return lines[0]

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Any:
    def go(*argv: str) -> Result:
        code = executor_cli.main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return go


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, DaemonProcess]]:
    """A daemon shared by this module's tests that need runs to make progress."""
    directory = tmp_path_factory.mktemp("live")
    # Replaying every result from scratch lets the `switch` workflow park itself.
    config = write_config(directory, engine={"instance_cache_size": 0})
    daemon = DaemonProcess(config, directory / "daemon.log").ready()
    yield config, daemon
    code = daemon.stop()
    assert code == 0, daemon.log()


@pytest.fixture
def idle(tmp_path: Path, run_cli: Any) -> Path:
    """A config whose database no daemon works on: runs started there stay queued."""
    config = write_config(tmp_path)
    assert run_cli("migrate", "--config", str(config)).code == 0
    return config


def status_of(config: Path, run_id: str) -> dict[str, Any]:
    async def go(client: Client) -> dict[str, Any]:
        return (await client.status(run_id)).to_dict()

    db = config.parent / "executor.sqlite"
    result: dict[str, Any] = with_client(db, go)
    return result


# --- help and usage -------------------------------------------------------------------------------


def test_top_level_help_lists_verbs_and_exit_codes(run_cli: Any) -> None:
    result = run_cli("--help")
    assert result.code == 0
    for verb in VERBS:
        assert verb in result.out
    assert "exit codes:" in result.out
    for code in ("0", "1", "2", "3", "4", "5", "70", "130"):
        assert f"\n  {code:>3}  " in result.out


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(run_cli: Any, verb: str) -> None:
    result = run_cli(verb, "--help")
    assert result.code == 0
    assert result.out.startswith(f"usage: executor {verb}")
    assert "--config PATH" in result.out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["list", "--limit", "0"],
        ["list", "--limit", "many"],
        ["list", "--status", "sleeping"],
        ["status"],
        ["start", "echo", "--args", "[1]", "--args-file", "x.json"],
        ["fail-pending", "--yes"],
        ["clear-task-queue", "--shard", "-1", "--yes"],
        ["result", "abc", "--timeout", "soon"],
        ["retry", "abc", "--from-step", "-1"],
        ["fork", "abc", "--from-step", "99999999999999999999"],
    ],
    ids=lambda argv: " ".join(argv) or "no verb",
)
def test_usage_errors_are_one_line_and_exit_2(run_cli: Any, argv: list[str]) -> None:
    result = run_cli(*argv)
    assert result.code == 2
    assert "see `executor" in result.error_line
    assert result.out == ""


def test_config_goes_before_or_after_the_verb(run_cli: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, engine={"concurrency": 7})
    before = run_cli("--config", str(config), "check-config")
    after = run_cli("check-config", "--config", str(config))
    assert before.code == after.code == 0
    assert before.out == after.out
    assert f"concurrency = 7  # from {config}" in before.out
    assert "lease_s = 1.0" in before.out
    assert "payload_limit_bytes = 67108864  # from default" in before.out


def test_bad_config_is_one_line_naming_file_and_key(run_cli: Any, tmp_path: Path) -> None:
    config = tmp_path / "executor.toml"
    config.write_text("[engine]\nshards = 0\n")
    for verb in (["check-config"], ["status", "x"], ["migrate"], ["start", "echo"]):
        result = run_cli(*verb, "--config", str(config))
        assert result.code == 2
        assert f"{config}: engine.shards" in result.error_line
    missing = run_cli("check-config", "--config", str(tmp_path / "nope.toml"))
    assert missing.code == 2
    assert "nope.toml: config file not found" in missing.error_line


# --- database verbs -------------------------------------------------------------------------------


def test_migrate_creates_the_database_and_prints_the_schema_version(
    run_cli: Any, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    result = run_cli("migrate", "--config", str(config))
    assert result.code == 0, result.err
    assert result.out.strip() == (
        f"{tmp_path / 'executor.sqlite'}: schema version {SCHEMA_VERSION}, 2 shards"
    )
    again = run_cli("migrate", "--config", str(config))
    assert again.out == result.out


def test_read_verbs_refuse_a_missing_database(run_cli: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    for verb in (["status", "x"], ["list"], ["stats"], ["bump-epoch"], ["cancel", "x"]):
        result = run_cli(*verb, "--config", str(config))
        assert result.code == 3
        assert "no database here" in result.error_line
    assert not (tmp_path / "executor.sqlite").exists()


def test_a_file_that_is_not_a_database_is_exit_3(run_cli: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "executor.sqlite").write_text("this is not sqlite, " * 100)
    result = run_cli("stats", "--config", str(config))
    assert result.code == 3
    assert "executor.sqlite" in result.error_line


def test_shard_mismatch_is_a_config_error(run_cli: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    assert run_cli("migrate", "--config", str(config)).code == 0
    other = write_config(tmp_path, engine={"shards": 3})
    result = run_cli("start", "echo", "--args", "[1]", "--config", str(other))
    assert result.code == 2
    assert "engine.shards" in result.error_line


# --- unknown runs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "verb", [["status"], ["result"], ["result", "--wait"], ["cancel"], ["resume"], ["fail"]]
)
def test_unknown_run_is_exit_4(run_cli: Any, idle: Path, verb: list[str]) -> None:
    result = run_cli(verb[0], "no-such-run", *verb[1:], "--config", str(idle))
    assert result.code == 4
    assert "no run with id 'no-such-run'" in result.error_line


# --- start ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--args", "[1,"], "--args: invalid JSON"),
        (["--args", "5"], "--args: expected a JSON array"),
        (["--args", '{"x": 1}'], "--args: expected a JSON array of the workflow's arguments, got"),
        (["--args", "[NaN]"], "float nan is not valid JSON"),
        (["--args-file", "missing.json"], "--args-file: cannot read missing.json"),
        (["--timeout", "1"], "--timeout needs --wait"),
        (["--args", "[1, 2]"], "workflow echo takes 1 arguments after ctx, got 2"),
    ],
)
def test_start_refuses_bad_arguments(
    run_cli: Any, idle: Path, args: list[str], message: str
) -> None:
    result = run_cli("start", "echo", *args, "--config", str(idle))
    assert result.code == 2
    assert message in result.error_line


def test_start_refuses_unknown_workflows_when_modules_are_configured(
    run_cli: Any, idle: Path
) -> None:
    result = run_cli("start", "ehco", "--args", "[1]", "--config", str(idle))
    assert result.code == 2
    assert "unknown workflow 'ehco'" in result.error_line
    assert "'echo'" in result.error_line


def test_start_passes_any_name_without_modules(run_cli: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, daemon={"workflows": []})
    result = run_cli("start", "defined.elsewhere", "--args", "[1, 2, 3]", "--config", str(config))
    assert result.code == 0, result.err
    assert status_of(config, result.out.strip())["workflow"] == "defined.elsewhere"


def test_start_prints_the_run_id_and_honours_keys(run_cli: Any, idle: Path, tmp_path: Path) -> None:
    first = run_cli("start", "echo", "--args", "[1]", "--key", "order-7", "--config", str(idle))
    assert first.code == 0, first.err
    run_id = first.out.strip()
    assert status_of(idle, run_id)["status"] == "running"
    again = run_cli("start", "echo", "--args", "[1]", "--key", "order-7", "--config", str(idle))
    assert again.out.strip() == run_id

    shards = {
        status_of(
            idle,
            run_cli(
                "start", "echo", "--args", f"[{i}]", "--shard-key", "cust-1", "--config", str(idle)
            ).out.strip(),
        )["shard"]
        for i in range(4)
    }
    assert len(shards) == 1

    keyed = run_cli(
        "start", "echo", "--args", "[1]", "--concurrency-key", "tenant-1", "--config", str(idle)
    )
    assert keyed.code == 0, keyed.err

    args_file = tmp_path / "args.json"
    args_file.write_text('[{"from": "file"}]')
    from_file = run_cli("start", "echo", "--args-file", str(args_file), "--config", str(idle))
    assert from_file.code == 0, from_file.err


def test_start_wait_times_out_with_exit_5(run_cli: Any, idle: Path) -> None:
    result = run_cli(
        "start", "echo", "--args", "[1]", "--wait", "--timeout", "0.1", "--config", str(idle)
    )
    assert result.code == 5
    assert "did not finish within 0.1s" in result.error_line


def test_start_wait_prints_the_result(run_cli: Any, live: tuple[Path, DaemonProcess]) -> None:
    config, _ = live
    result = run_cli(
        "start", "echo", "--args", '["hi"]', "--wait", "--timeout", "15", "--config", str(config)
    )
    assert result.code == 0, result.err
    assert result.json() == {"value": "hi", "sum": 3}


def test_args_from_stdin(live: tuple[Path, DaemonProcess]) -> None:
    config, _ = live
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "executor",
            "start",
            "echo",
            "--args-file",
            "-",
            "--wait",
            "--timeout",
            "15",
            "--config",
            str(config),
        ],
        input="[[1, 2]]",
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"value": [1, 2], "sum": 3}


# --- result, status, cancel -----------------------------------------------------------------------


def test_result_of_a_running_run(run_cli: Any, idle: Path) -> None:
    run_id = run_cli("start", "echo", "--args", "[1]", "--config", str(idle)).out.strip()
    now = run_cli("result", run_id, "--config", str(idle))
    assert now.code == 1
    assert "has not finished (status running); use --wait" in now.error_line
    waited = run_cli("result", run_id, "--wait", "--timeout", "0.05", "--config", str(idle))
    assert waited.code == 5
    assert run_id in waited.error_line


def test_result_status_and_failures(run_cli: Any, live: tuple[Path, DaemonProcess]) -> None:
    config, _ = live
    ok = run_cli("start", "echo", "--args", "[3]", "--config", str(config)).out.strip()
    waited = run_cli("result", ok, "--wait", "--config", str(config))
    assert waited.code == 0, waited.err
    assert waited.json() == {"value": 3, "sum": 3}
    assert run_cli("result", ok, "--config", str(config)).json() == waited.json()

    status = run_cli("status", ok, "--config", str(config))
    assert status.code == 0
    assert status.json()["status"] == "succeeded"
    assert status.json()["id"] == ok

    bad = run_cli("start", "fail", "--args", '["no luck"]', "--config", str(config)).out.strip()
    failed = run_cli("result", bad, "--wait", "--timeout", "15", "--config", str(config))
    assert failed.code == 1
    assert failed.error_line == f"executor: error: run {bad} failed: ValueError: no luck"
    assert run_cli("status", bad, "--config", str(config)).json()["status"] == "failed"


def test_cancel(run_cli: Any, idle: Path) -> None:
    run_id = run_cli("start", "echo", "--args", "[1]", "--config", str(idle)).out.strip()
    cancelled = run_cli("cancel", run_id, "--config", str(idle))
    assert cancelled.code == 0
    assert cancelled.out.strip() == f"cancelled run {run_id}"
    assert status_of(idle, run_id)["status"] == "cancelled"
    again = run_cli("cancel", run_id, "--config", str(idle))
    assert again.code == 1
    assert "had already finished (cancelled)" in again.error_line
    result = run_cli("result", run_id, "--config", str(idle))
    assert result.code == 1
    assert "was cancelled" in result.error_line


# --- list and stats -------------------------------------------------------------------------------


def test_list_filters_and_limits(run_cli: Any, idle: Path) -> None:
    ids = [
        run_cli("start", "echo", "--args", f"[{i}]", "--config", str(idle)).out.strip()
        for i in range(3)
    ]
    run_cli("cancel", ids[0], "--config", str(idle))
    listed = run_cli("list", "--config", str(idle))
    assert listed.code == 0
    rows = [json.loads(line) for line in listed.out.splitlines()]
    assert [row["id"] for row in rows] == ids[::-1]  # newest first
    running = run_cli("list", "--status", "running", "--limit", "1", "--config", str(idle))
    assert [json.loads(line)["id"] for line in running.out.splitlines()] == [ids[2]]
    cancelled = run_cli("list", "--status", "cancelled", "--config", str(idle))
    assert [json.loads(line)["id"] for line in cancelled.out.splitlines()] == [ids[0]]


def test_stats_json(run_cli: Any, idle: Path) -> None:
    for i in range(2):
        run_cli("start", "echo", "--args", f"[{i}]", "--config", str(idle))
    stats = run_cli("stats", "--json", "--config", str(idle))
    assert stats.code == 0
    doc = stats.json()
    assert doc["runs"] == {"running": 2}
    assert sum(shard["replay_backlog"] for shard in doc["shards"].values()) == 2
    assert doc["engines"] == []


def on_a_terminal(config: Path, *args: str) -> str:
    """Run a verb with stdout on a pseudo-terminal; its output."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "executor", *args, "--config", str(config)],
            stdout=follower,
            stderr=subprocess.PIPE,
            env=child_env(),
            timeout=30,
            check=False,
        )
        os.close(follower)
        follower = -1
        assert proc.returncode == 0, proc.stderr
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode().replace("\r\n", "\n")
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_stats_and_list_are_tables_on_a_terminal(run_cli: Any, idle: Path) -> None:
    run_id = run_cli("start", "echo", "--args", "[1]", "--config", str(idle)).out.strip()
    stats = on_a_terminal(idle, "stats")
    header = stats.splitlines()[0].split()
    assert header[:8] == [
        "SHARD",
        "QUEUED",
        "WAITING",
        "IN_FLIGHT",
        "REPLAY_BACKLOG",
        "OLDEST_QUEUED_S",
        "TIMERS",
        "TIMERS_DUE",
    ]
    assert [line.split()[0] for line in stats.splitlines()[1:3]] == ["0", "1"]
    assert any(line.split() == ["running", "1"] for line in stats.splitlines())
    assert "no engine running" in stats

    listed = on_a_terminal(idle, "list").splitlines()
    assert listed[0].split() == [
        "ID",
        "WORKFLOW",
        "STATUS",
        "SHARD",
        "CREATED",
        "EVENTS",
        "LABELS",
        "ERROR",
    ]
    assert listed[1].split()[:3] == [run_id, "echo", "running"]

    status = on_a_terminal(idle, "status", run_id)
    assert "status:      running" in status


# --- operator verbs -------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["fail-pending", "clear-replay-queue", "clear-task-queue"])
def test_destructive_verbs_need_yes(run_cli: Any, idle: Path, verb: str) -> None:
    run_id = run_cli("start", "echo", "--args", "[1]", "--config", str(idle)).out.strip()
    refused = run_cli(verb, "--all", "--config", str(idle))
    assert refused.code == 2
    assert "add --yes to confirm" in refused.error_line
    assert status_of(idle, run_id)["status"] == "running"
    out_of_range = run_cli(verb, "--shard", "2", "--yes", "--config", str(idle))
    assert out_of_range.code == 2
    assert "shard must be from 0 to 1" in out_of_range.error_line


def test_clear_replay_queue_fails_the_waiting_runs(run_cli: Any, idle: Path) -> None:
    run_id = run_cli("start", "echo", "--args", "[1]", "--config", str(idle)).out.strip()
    shard = status_of(idle, run_id)["shard"]
    done = run_cli("clear-replay-queue", "--shard", str(shard), "--yes", "--config", str(idle))
    assert done.code == 0, done.err
    assert f"shard {shard}: cleared 1 replay entries" in done.out
    assert status_of(idle, run_id)["status"] == "failed"
    for verb in ("fail-pending", "clear-task-queue"):
        everything = run_cli(verb, "--all", "--yes", "--config", str(idle))
        assert everything.code == 0, everything.err
        assert len(everything.out.splitlines()) == 2  # one line per shard


def test_bump_epoch(run_cli: Any, idle: Path) -> None:
    first = run_cli("bump-epoch", "--config", str(idle))
    second = run_cli("bump-epoch", "--config", str(idle))
    assert first.code == second.code == 0
    epoch = int(first.out.split()[3].rstrip(":"))
    assert second.out.startswith(f"epoch is now {epoch + 1}:")


def test_resume_and_fail_parked_runs(
    run_cli: Any, live: tuple[Path, DaemonProcess], tmp_path: Path
) -> None:
    config, _ = live
    switches = []
    for name in ("resumed", "failed"):
        path = tmp_path / name
        path.write_text("a")
        run_id = run_cli(
            "start", "switch", "--args", json.dumps([str(path)]), "--config", str(config)
        ).out.strip()
        switches.append((path, run_id))
    for _, run_id in switches:

        def parked(run_id: str = run_id) -> bool:
            return bool(status_of(config, run_id)["status"] == "parked")

        poll(parked, f"run {run_id} to park")
        result = run_cli("result", run_id, "--config", str(config))
        assert result.code == 1
        assert "is parked" in result.error_line

    (path, resumed), (_, failed) = switches
    path.write_text("a")  # "the fixed code is deployed"
    done = run_cli("resume", resumed, "--config", str(config))
    assert done.code == 0, done.err
    waited = run_cli("result", resumed, "--wait", "--timeout", "15", "--config", str(config))
    assert waited.code == 0, waited.err
    assert waited.json() == "a"
    not_parked = run_cli("resume", resumed, "--config", str(config))
    assert not_parked.code == 1
    assert "is not parked (status succeeded)" in not_parked.error_line

    gave_up = run_cli("fail", failed, "--reason", "bad deploy", "--config", str(config))
    assert gave_up.code == 0, gave_up.err
    status = status_of(config, failed)
    assert status["status"] == "failed"
    assert status["error"]["message"] == "bad deploy"
    again = run_cli("fail", failed, "--config", str(config))
    assert again.code == 1
    assert "is not parked (status failed)" in again.error_line


# --- workflow modules -----------------------------------------------------------------------------


CONSOLE_SCRIPT = Path(sys.executable).parent / "executor"


@pytest.mark.skipif(
    not CONSOLE_SCRIPT.exists() and shutil.which("executor") is None,
    reason="the executor console script is not installed",
)
def test_console_script_imports_workflow_modules_from_the_working_directory(
    tmp_path: Path,
) -> None:
    script = str(CONSOLE_SCRIPT) if CONSOLE_SCRIPT.exists() else "executor"
    (tmp_path / "local_flows.py").write_text(
        "from executor import workflow\n\n"
        "@workflow(name='local')\n"
        "async def local(ctx, x):\n"
        "    return x\n"
    )
    (tmp_path / "broken_flows.py").write_text("raise RuntimeError('boom')\n")
    good = write_config(tmp_path, daemon={"workflows": ["local_flows"]})
    env = {k: v for k, v in child_env().items() if k != "PYTHONPATH"}
    ok = subprocess.run(
        [script, "start", "local", "--args", "[1]", "--config", str(good)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run(
        [script, "start", "local", "--args", "[1, 2]", "--config", str(good)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2
    assert "takes 1 arguments" in refused.stderr

    bad = write_config(tmp_path, daemon={"workflows": ["local_flows", "broken_flows"]})
    broken = subprocess.run(
        [script, "start", "local", "--config", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert broken.returncode == 2
    assert "Traceback" in broken.stderr
    last = broken.stderr.splitlines()[-1]
    assert last == (
        f"executor: error: {bad}: daemon.workflows: cannot import workflow module"
        " 'broken_flows': RuntimeError: boom"
    )


def test_python_m_executor_is_the_same_command(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = cli(config, "check-config")
    assert result.returncode == 0, result.stderr
    assert f"# Files read, in order:\n#   {config}\n" in result.stdout


def test_check_of_a_healthy_database(run_cli: Any, idle: Path) -> None:
    run_cli("start", "echo", "--args", "[1]", "--config", str(idle))
    result = run_cli("check", "--json", "--config", str(idle))
    assert result.code == 0, result.err
    assert result.json()["ok"] is True
    assert result.json()["runs"] == 1
    elsewhere = idle.parent / "elsewhere"
    elsewhere.mkdir()
    missing = run_cli("check", "--config", str(write_config(elsewhere)))
    assert missing.code == 3
