"""Hostile input and files that cannot be opened, through the real `executor` command (issue 9):
every case exits with a documented code (never 70) and exactly one `executor: error:` line that
names the real cause, and read-only verbs work on a file that can be read but not written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import faults
from tests.support.daemon import Daemons, child_env, cli, daemons_in, write_config

DOCUMENTED = {0, 1, 2, 3, 4, 5}


def daemon_error(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """`executor run` logs before it fails: its last stderr line is the one error line."""
    assert done.returncode == 3, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "Exception in thread" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("executor: error: "), done.stderr
    for needle in needles:
        assert needle in last, last
    return last


def one_error(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("executor: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A database file holding one finished run (its id), made once by a real daemon."""
    directory = tmp_path_factory.mktemp("finished")
    config = write_config(directory)
    done = cli(config, "start", "echo", "--args", '["hello"]')
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    for daemons in daemons_in(directory):
        daemon = daemons.start(config).ready()
        waited = cli(config, "result", run_id, "--wait", "--timeout", "20")
        assert waited.returncode == 0, waited.stderr
        assert daemon.stop() == 0
    return directory / "executor.sqlite", run_id


def as_nobody(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m executor ARGV --config CONFIG` as user nobody (skips where that cannot be)."""
    return subprocess.run(
        [*faults.as_nobody(), sys.executable, "-m", "executor", *argv, "--config", str(config)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd="/",
        timeout=60,
        check=False,
    )


def copy_of(finished: tuple[Path, str], directory: Path) -> tuple[Path, Path, str]:
    """The finished database copied into `directory` (no -wal/-shm: a cleanly closed file), with
    a config for it."""
    source, run_id = finished
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "executor.sqlite"
    shutil.copyfile(source, db)
    config = write_config(directory)
    return config, db, run_id


# --- bad arguments --------------------------------------------------------------------------------

NOT_UTF8 = os.fsdecode(b"\xff\xfe-key")  # what a non-UTF-8 argv becomes in Python
HUGE_INT = "[" + "7" * 5000 + "]"
DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["start", "echo", "--args", HUGE_INT], 2, "--args"),
        (["start", "echo", "--args", DEEP], 2, "nested too deeply"),
        (
            ["start", "echo", "--args", "[1]", "--key", NOT_UTF8],
            2,
            "idempotency_key is not valid UTF-8",
        ),
        (
            ["start", "echo", "--args", "[1]", "--shard-key", NOT_UTF8],
            2,
            "shard_key is not valid UTF-8",
        ),
        (
            ["start", "echo", "--args", "[1]", "--concurrency-key", NOT_UTF8],
            2,
            "concurrency_key is not valid",
        ),
        (["start", NOT_UTF8], 2, "workflow"),
        (["status", NOT_UTF8], 2, "run id is not valid UTF-8"),
        (["result", NOT_UTF8], 2, "run id is not valid UTF-8"),
        (["cancel", NOT_UTF8], 2, "run id is not valid UTF-8"),
        (["fail", "x", "--reason", NOT_UTF8], 2, "reason is not valid UTF-8"),
        (["list", "--limit", str(2**63)], 2, "--limit"),
        (["list", "--limit", "9" * 5000], 2, "--limit"),
        (["check", "--lease", "nan"], 2, "--lease"),
        (
            ["start", "echo", "--args", "[1]", "--concurrency-key", ""],
            2,
            "concurrency_key must not be empty",
        ),
        (["start", "echo", "--args", "[1]", "--key", ""], 2, "idempotency_key must not be empty"),
        (["start", "echo", "--args", "[1]", "--shard-key", ""], 2, "shard_key must not be empty"),
        (["status", ""], 2, "run id must not be empty"),
        (["status", "no-such-run"], 4, "no run with id"),
    ],
    ids=lambda value: str(value)[:30],
)
def test_hostile_arguments_get_one_line_and_a_documented_code(
    tmp_path: Path, argv: list[str], code: int, needle: str
) -> None:
    config = write_config(tmp_path)
    assert cli(config, "migrate").returncode == 0
    done = cli(config, *argv)
    one_error(done, code, needle)
    checked = cli(config, "check")
    assert checked.returncode == 0, checked.stdout


def test_a_database_path_longer_than_the_file_system_allows_is_exit_3(tmp_path: Path) -> None:
    config = write_config(tmp_path, database={"path": str(tmp_path / ("a" * 300))})
    for verb in (["migrate"], ["status", "x"], ["start", "echo", "--args", "[1]"], ["check"]):
        one_error(cli(config, *verb), 3, "file name too long")
    daemon_error(cli(config, "run"), "file name too long")


def test_a_path_that_is_not_utf8_works(tmp_path: Path) -> None:
    """A file name that is not valid UTF-8 is still a file name: the database opens and works."""
    odd = tmp_path / os.fsdecode(b"db-\xff.sqlite")
    env = child_env(EXECUTOR_DATABASE_PATH=str(odd))

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "executor", *argv],
            capture_output=True,
            text=True,
            errors="surrogateescape",
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )

    done = run("migrate")
    assert done.returncode == 0, done.stderr
    assert str(odd) in done.stdout  # printed as the file's own bytes
    assert os.path.exists(os.fsencode(odd))
    started = run("start", "echo", "--args", "[1]")
    assert started.returncode == 0, started.stderr
    listed = run("list")
    assert listed.returncode == 0 and started.stdout.strip() in listed.stdout


# --- files that cannot be opened ------------------------------------------------------------------


def test_a_directory_in_place_of_the_file_is_named_without_a_thread_traceback(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    (tmp_path / "executor.sqlite").mkdir()
    # Before issue 9, 19 of 24 tries printed aiosqlite's "Event loop is closed" thread traceback
    # after the line: try several times.
    for _ in range(4):
        for verb in (["status", "x"], ["list"], ["migrate"], ["start", "echo", "--args", "[1]"]):
            one_error(cli(config, *verb), 3, "is a directory")
    daemon_error(cli(config, "run"), "is a directory")


READ_VERBS = ("status", "result", "show", "list", "check", "stats")


def assert_read_verbs_work(config: Path, run_id: str, env: dict[str, str] | None = None) -> None:
    for verb in READ_VERBS:
        argv = [verb, run_id] if verb in ("status", "result", "show") else [verb]
        done = (
            cli(config, *argv, "--json", env=env)
            if verb != "result"
            else cli(config, *argv, env=env)
        )
        assert done.returncode == 0, (verb, done.stderr)
        assert done.stderr == "", (verb, done.stderr)
    assert '"hello"' in cli(config, "result", run_id, env=env).stdout


def test_read_only_media_read_verbs_work_and_writes_name_the_cause(
    tmp_path: Path, finished: tuple[Path, str], daemons: Daemons
) -> None:
    config, db, run_id = copy_of(finished, tmp_path / "media")
    before = db.read_bytes()
    with faults.read_only(db.parent):
        assert_read_verbs_work(config, run_id)
        one_error(
            cli(config, "start", "echo", "--args", "[1]"), 3, str(db), "read-only file system"
        )
        one_error(cli(config, "cancel", run_id), 3, "read-only file system")
        one_error(cli(config, "bump-epoch"), 3, "read-only file system")
        # Nothing to migrate: migrate reads the version and says so (exit 0).
        assert cli(config, "migrate").returncode == 0
        daemon = daemons.start(config)
        assert daemon.wait_exit() == 3
        assert "read-only file system" in daemon.log().splitlines()[-1]
    assert db.read_bytes() == before


def test_a_file_the_user_can_read_but_not_write(
    request: pytest.FixtureRequest, finished: tuple[Path, str]
) -> None:
    """Root's file, world-readable, in a folder the user cannot write (a backup): as user nobody,
    read verbs work and writes say 'permission denied'."""
    faults.as_nobody()  # skips the test early where this machine cannot run as nobody
    # pytest's tmp_path sits in folders only root may enter: use a world-readable one.
    folder = Path(tempfile.mkdtemp(prefix="executor-backup-"))
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    config, db, run_id = copy_of(finished, folder)
    folder.chmod(0o755)
    db.chmod(0o644)
    config.chmod(0o644)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return as_nobody(config, *argv)

    for verb in READ_VERBS:
        argv = [verb, run_id] if verb in ("status", "result", "show") else [verb]
        done = run(*argv)
        assert done.returncode == 0, (verb, done.stderr)
    one_error(run("start", "echo", "--args", "[1]"), 3, "permission denied")
    one_error(run("bump-epoch"), 3, "permission denied")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def test_a_full_file_system_is_named_at_start(
    tmp_path: Path, finished: tuple[Path, str], daemons: Daemons
) -> None:
    disk = tmp_path / "disk"
    with faults.small_file_system(disk, "4m"):
        config, _, run_id = copy_of(finished, disk)
        faults.fill(disk)
        daemon = daemons.start(config)
        assert daemon.wait_exit() == 3, daemon.log()
        assert "no space left" in daemon.log().splitlines()[-1], daemon.log()
        one_error(cli(config, "start", "echo", "--args", "[1]"), 3, "no space left")
        # Reading needs no space.
        done = cli(config, "status", run_id, "--json")
        assert done.returncode == 0, done.stderr
        (disk / "filler").unlink()
        # Space again: the daemon starts.
        again = daemons.start(config).ready()
        assert again.stop() == 0


def test_a_workflow_module_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, daemon={"workflows": ["no_such_flows_module"]})
    one_error(
        cli(config, "start", "echo", "--args", "[1]"),
        2,
        "cannot import workflow module 'no_such_flows_module': ModuleNotFoundError",
    )
    daemon_error = cli(config, "run")
    assert daemon_error.returncode == 2 and "Traceback" not in daemon_error.stderr


def test_a_config_in_a_folder_the_user_cannot_enter_is_exit_2(tmp_path: Path) -> None:
    faults.as_nobody()  # skips the test early where this machine cannot run as nobody
    config = write_config(tmp_path)  # pytest's tmp folders are root's, mode 0700
    done = as_nobody(config, "list")
    one_error(done, 2, str(config), "permission denied")
