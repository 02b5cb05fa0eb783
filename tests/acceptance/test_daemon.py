"""Acceptance: the real daemon (`python -m executor run`) as a child process, driven by the CLI from
other processes, stopped and killed with real signals, talking sd_notify to a real socket."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import signal
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor import Client, config
from tests.support.daemon import (
    DaemonProcess,
    Daemons,
    child_env,
    cli,
    daemons_in,
    lines,
    poll,
    with_client,
    write_config,
)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def start_runs(db: Path, workflow: str, args_list: list[list[Any]]) -> list[str]:
    async def go(client: Client) -> list[str]:
        return await client.start_many(workflow, args_list)

    result: list[str] = with_client(db, go)
    return result


def results(db: Path, run_ids: list[str], timeout_s: float = 20.0) -> list[Any]:
    async def go(client: Client) -> list[Any]:
        return [await client.result(run_id, timeout=timeout_s) for run_id in run_ids]

    return list(with_client(db, go))


def in_flight(db: Path) -> int:
    async def go(client: Client) -> int:
        stats = await client.stats()
        return sum(shard["in_flight"] for shard in stats["shards"].values())

    count: int = with_client(db, go)
    return count


# --- the happy path -------------------------------------------------------------------------------


def test_runs_started_from_the_cli_finish(tmp_path: Path, daemons: Daemons) -> None:
    config = write_config(tmp_path)
    daemon = daemons.start(config).ready()

    started = cli(config, "start", "echo", "--args", '[{"a": [1, 2]}]')
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    waited = cli(config, "result", run_id, "--wait", "--timeout", "15")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout) == {"value": {"a": [1, 2]}, "sum": 3}

    naps = tmp_path / "naps.log"
    inline = cli(
        config,
        "start",
        "chain",
        "--args",
        json.dumps([str(naps), 2, 0.01]),
        "--wait",
        "--timeout",
        "15",
    )
    assert inline.returncode == 0, inline.stderr
    assert len(json.loads(inline.stdout)) == 2

    assert daemon.stop() == 0
    assert "stopped cleanly" in daemon.log()
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert f"{loop} loop" in daemon.log()  # daemon.loop = "auto"


# --- stopping and crashing mid-run ----------------------------------------------------------------


def start_chains(tmp_path: Path, runs: int, steps: int, seconds: float) -> tuple[Path, list[str]]:
    naps = tmp_path / "naps.log"
    ids = start_runs(tmp_path / "executor.sqlite", "chain", [[str(naps), steps, seconds]] * runs)
    return naps, ids


def test_sigterm_drains_in_flight_steps_and_a_restart_finishes_every_run(
    tmp_path: Path, daemons: Daemons
) -> None:
    config = write_config(tmp_path)
    db = tmp_path / "executor.sqlite"
    first = daemons.start(config).ready()
    naps, ids = start_chains(tmp_path, runs=4, steps=3, seconds=0.6)
    poll(lambda: in_flight(db) > 0, "steps in flight")

    first.send(signal.SIGTERM)
    # Exits 0 within the drain timeout (5 s), having let the running steps finish.
    assert first.wait_exit(timeout_s=5.0 + 5.0) == 0
    drained = re.search(
        r"draining \(received SIGTERM\): stopped claiming; (\d+) steps in flight", first.log()
    )
    assert drained is not None, first.log()
    assert int(drained.group(1)) > 0
    assert "stopped cleanly" in first.log()
    assert "drain timeout" not in first.log()
    done_before_restart = set(lines(naps))
    assert done_before_restart

    second = daemons.start(config).ready()
    finished = results(db, ids)
    assert finished == [[f"{run_id}:{i}" for i in range(3)] for run_id in ids]
    # Exactly once: every step that finished before the stop had its result recorded, so the
    # restarted daemon ran only the rest.
    executed = lines(naps)
    assert sorted(executed) == sorted(f"{run_id}:{i}" for run_id in ids for i in range(3))
    assert second.stop() == 0


def test_sigkill_mid_run_a_restart_finishes_every_run(tmp_path: Path, daemons: Daemons) -> None:
    config = write_config(tmp_path)
    db = tmp_path / "executor.sqlite"
    first = daemons.start(config).ready()
    naps, ids = start_chains(tmp_path, runs=4, steps=3, seconds=0.3)
    poll(lambda: in_flight(db) > 0, "steps in flight")
    first.kill()
    assert first.proc.returncode == -signal.SIGKILL
    # The dead daemon's claims are stale (a heartbeat older than --lease 0); nothing else is off.
    checked = cli(config, "check", "--json", "--lease", "0")
    assert checked.returncode == 1, checked.stderr
    assert set(json.loads(checked.stdout)["counts"]) == {"stale_claim"}

    # The new daemon reclaims the dead one's tasks once its lease (1 s) has run out.
    second = daemons.start(config).ready()
    finished = results(db, ids)
    assert finished == [[f"{run_id}:{i}" for i in range(3)] for run_id in ids]
    # At least once: a step killed mid-way runs again.
    assert set(lines(naps)) == {f"{run_id}:{i}" for run_id in ids for i in range(3)}
    assert second.stop() == 0
    healthy = cli(config, "check", "--json")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr


def test_second_sigint_exits_at_once(tmp_path: Path, daemons: Daemons) -> None:
    config = write_config(tmp_path, engine={"drain_timeout_s": 60.0})
    db = tmp_path / "executor.sqlite"
    daemon = daemons.start(config).ready()
    naps, ids = start_chains(tmp_path, runs=1, steps=1, seconds=30.0)
    poll(lambda: in_flight(db) > 0, "a step in flight")
    daemon.send(signal.SIGINT)
    daemon.wait_for_log(r"shutdown 1/2 \(received SIGINT\)")
    daemon.send(signal.SIGINT)
    assert daemon.wait_exit(timeout_s=10.0) == 130
    assert "second SIGINT" in daemon.log()
    assert lines(naps) == []  # the step was cut short, not drained
    assert ids


def test_bump_epoch_from_another_process_drains_the_daemon(
    tmp_path: Path, daemons: Daemons
) -> None:
    config = write_config(tmp_path)
    daemon = daemons.start(config).ready()
    bumped = cli(config, "bump-epoch")
    assert bumped.returncode == 0, bumped.stderr
    assert "epoch is now" in bumped.stdout
    assert daemon.wait_exit() == 0
    log = daemon.log()
    assert "a newer epoch took over" in log
    assert "stopped cleanly" in log


def test_an_engine_crash_exits_non_zero(tmp_path: Path, daemons: Daemons) -> None:
    config = write_config(
        tmp_path, database={"busy_timeout_s": 0.05}, engine={"write_failure_limit_s": 0.3}
    )
    daemon = daemons.start(config).ready()
    # Another connection holds the write lock far past busy_timeout_s: the engine cannot claim
    # or record, and gives up.
    holder = sqlite3.connect(tmp_path / "executor.sqlite", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        code = daemon.wait_exit()
    finally:
        holder.close()
    assert code == 3, daemon.log()
    assert re.search(r"CRITICAL executor\.daemon: shutdown 2/2: the engine crashed", daemon.log())


# --- systemd notify -------------------------------------------------------------------------------


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket, read by a thread so the daemon
    never blocks on a full queue."""

    def __init__(self) -> None:
        # Unix socket paths are limited to ~107 bytes, and pytest's tmp_path can be longer.
        self.directory = Path(tempfile.mkdtemp(prefix="exn", dir="/tmp"))
        self.path = self.directory / "n.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self.messages: list[list[str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode().split("\n"))

    def received(self) -> list[list[str]]:
        with self._lock:
            return list(self.messages)

    def index(self, field: str, after: int = -1) -> int | None:
        """Index of the first datagram after `after` holding `field` (e.g. READY=1)."""
        for i, message in enumerate(self.received()):
            if i > after and field in message:
                return i
        return None

    def wait(self, field: str, after: int = -1) -> int:
        return poll(lambda: self.index(field, after), f"{field} on the notify socket")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    yield listener
    listener.close()


def status_of(message: list[str]) -> str:
    return next(line for line in message if line.startswith("STATUS="))


def test_sd_notify_ready_watchdog_reloading_stopping(
    tmp_path: Path, daemons: Daemons, notify: NotifyListener
) -> None:
    config = write_config(tmp_path, daemon={"loop": "asyncio"})
    env = child_env(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="200000")
    daemon = daemons.start(config, env)
    ready = notify.wait("READY=1")
    watchdog = notify.wait("WATCHDOG=1")
    assert ready < watchdog
    assert "slots=8" in status_of(notify.received()[ready])
    # Pings keep coming while the main loop runs.
    notify.wait("WATCHDOG=1", after=watchdog)

    daemon.send(signal.SIGHUP)
    reloading = notify.wait("RELOADING=1", after=ready)
    assert any(line.startswith("MONOTONIC_USEC=") for line in notify.received()[reloading])
    notify.wait("READY=1", after=reloading)

    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    stopping = notify.wait("STOPPING=1")
    assert ready < watchdog < reloading < stopping
    assert notify.index("READY=1", after=stopping) is None
    assert "asyncio loop" in daemon.log()


# --- reloading the config -------------------------------------------------------------------------


def max_concurrency(path: Path) -> int:
    return max(int(line) for line in lines(path))


def test_sighup_applies_a_new_concurrency_live(
    tmp_path: Path, daemons: Daemons, notify: NotifyListener
) -> None:
    config = write_config(tmp_path, engine={"concurrency": 2})
    db = tmp_path / "executor.sqlite"
    env = child_env(NOTIFY_SOCKET=str(notify.path))
    daemon = daemons.start(config, env).ready()

    before = tmp_path / "before.log"
    (run_id,) = start_runs(db, "parallel", [[str(before), 8, 0.2]])
    assert results(db, [run_id]) == [8]
    assert max_concurrency(before) == 2

    # A broken drop-in is refused and the running config stays.
    dropins = tmp_path / "executor.d"
    dropins.mkdir()
    (dropins / "50-more.toml").write_text("[engine]\nconcurrency = 0\n")
    daemon.send(signal.SIGHUP)
    daemon.wait_for_log(
        r"reload failed, keeping the running configuration: .*50-more\.toml: "
        r"engine\.concurrency"
    )

    (dropins / "50-more.toml").write_text(
        "[engine]\nconcurrency = 5\nshards = 3\n\n[limits.api]\nrequests_per_second = 50\n"
    )
    reloads = len(re.findall("received SIGHUP", daemon.log()))
    daemon.send(signal.SIGHUP)
    daemon.wait_for_log(r"concurrency changed to 5")
    daemon.wait_for_log(r"limits\.api changed \(applied live\)")
    daemon.wait_for_log(r"engine\.shards changed in .*50-more\.toml but needs a restart")
    assert len(re.findall("received SIGHUP", daemon.log())) == reloads + 1
    # READY=1 after the reload carries the new load: 5 slots x 2 shards. The listener reads the
    # datagrams in its own thread: wait for this reload's RELOADING=1 before looking past it.
    poll(
        lambda: sum("RELOADING=1" in m for m in notify.received()) == reloads + 1,
        "the second RELOADING=1",
    )
    last_reload = max(i for i, m in enumerate(notify.received()) if "RELOADING=1" in m)
    ready = notify.wait("READY=1", after=last_reload)
    assert "slots=10" in status_of(notify.received()[ready])

    after = tmp_path / "after.log"
    (run_id,) = start_runs(db, "parallel", [[str(after), 10, 0.2]])
    assert results(db, [run_id]) == [10]
    assert max_concurrency(after) == 5
    assert daemon.stop() == 0


# --- bad configuration ----------------------------------------------------------------------------

BAD_CONFIGS = {
    "syntax": ("[engine\nconcurrency = 5\n", {}, r"executor\.toml: invalid TOML"),
    "unknown key": ("[engine]\nconcurency = 5\n", {}, r"executor\.toml: engine\.concurency"),
    "wrong type": ('[engine]\nconcurrency = "many"\n', {}, r"executor\.toml: engine\.concurrency"),
    "out of range": ("[engine]\nconcurrency = 0\n", {}, r"executor\.toml: engine\.concurrency"),
    "bad env var": (
        "",
        {"EXECUTOR_ENGINE_CONCURRENCY": "lots"},
        r"EXECUTOR_ENGINE_CONCURRENCY: engine\.concurrency",
    ),
    "unknown env var": (
        "",
        {"EXECUTOR_ENGINE_CONCURENCY": "5"},
        r"EXECUTOR_ENGINE_CONCURENCY",
    ),
    "unknown choice": (
        '[daemon]\nloop = "tokio"\n',
        {},
        r"executor\.toml: daemon\.loop",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, daemons: Daemons, case: str) -> None:
    text, env, pattern = BAD_CONFIGS[case]
    config = tmp_path / "executor.toml"
    config.write_text(f'[database]\npath = "{tmp_path / "executor.sqlite"}"\n' + text)
    daemon = daemons.start(config, child_env(**env))
    assert daemon.wait_exit() == 2
    stderr = daemon.log().splitlines()
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith("executor: error: ")
    assert re.search(pattern, stderr[0]), stderr[0]
    assert not (tmp_path / "executor.sqlite").exists()


def test_bad_dropin_names_the_dropin(tmp_path: Path, daemons: Daemons) -> None:
    config = write_config(tmp_path)
    (tmp_path / "executor.d").mkdir()
    (tmp_path / "executor.d" / "20-x.toml").write_text("[engine]\npoll_interval_s = -1\n")
    daemon = daemons.start(config)
    assert daemon.wait_exit() == 2
    (line,) = daemon.log().splitlines()
    assert re.search(r"executor: error: .*20-x\.toml: engine\.poll_interval_s", line), line


def test_a_workflow_module_that_fails_to_import_stops_startup(
    tmp_path: Path, daemons: Daemons
) -> None:
    (tmp_path / "broken_flows.py").write_text("import executor\nraise RuntimeError('boom')\n")
    config = write_config(tmp_path, daemon={"workflows": ["broken_flows"]})
    # The module sits in the daemon's working directory, importable like with `python -m`.
    daemon = daemons.start(config)
    assert daemon.wait_exit() == 2
    log = daemon.log()
    assert "Traceback" in log
    assert 'broken_flows.py", line 2' in log
    last = log.splitlines()[-1]
    assert last.startswith("executor: error: ")
    assert "broken_flows" in last and "RuntimeError: boom" in last
    assert not (tmp_path / "executor.sqlite").exists()


@pytest.mark.skipif(
    config.DEFAULT_CONFIG_PATH.exists(), reason=f"{config.DEFAULT_CONFIG_PATH} exists here"
)
def test_no_config_at_all_runs_on_the_local_database(tmp_path: Path, daemons: Daemons) -> None:
    daemon: DaemonProcess = daemons.start(None, cwd=tmp_path).ready()
    assert (tmp_path / "executor.sqlite").exists()
    started = cli(None, "start", "anything", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    assert daemon.stop() == 0
