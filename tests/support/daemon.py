"""Helpers for tests that drive the real `python -m executor` processes: configs, the daemon as a
subprocess (the one way every test starts it: DaemonProcess), CLI calls, and polling with
deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from executor import Client
from tests.support import REPO

WORKFLOWS = "tests.support.flows"
DEADLINE_S = 20.0  # generous: only reached when something is broken
POLL_S = 0.02

# Small intervals so drains, leases and reclaims happen in test time; longer than the in-process
# FAST_SETTINGS (tests/support/engine.py) because a daemon is another process on a shared
# machine, where a 0.5 s lease would let a busy daemon's own claims look stale.
FAST_ENGINE: dict[str, Any] = {
    "shards": 2,
    "concurrency": 4,
    "poll_interval_s": 0.02,
    "heartbeat_interval_s": 0.2,
    "lease_s": 1.0,
    "drain_timeout_s": 5.0,
}

T = TypeVar("T")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def write_config(directory: Path, **overrides: dict[str, Any]) -> Path:
    """executor.toml in `directory` with a fast engine, the test workflows and text logs."""
    sections: dict[str, dict[str, Any]] = {
        "database": {"path": directory / "executor.sqlite"},
        "engine": dict(FAST_ENGINE),
        "daemon": {"workflows": [WORKFLOWS]},
        "log": {"format": "text", "level": "info"},
    }
    for name, table in overrides.items():
        sections.setdefault(name, {}).update(table)
    path = directory / "executor.toml"
    path.write_text(toml_text(sections))
    return path


def child_env(*, pythonpath: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for child processes: none of ours or systemd's, plus the test workflows
    (the repository on PYTHONPATH, after `pythonpath` if given) and `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("EXECUTOR_")
        and key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    paths = (pythonpath, REPO, os.environ.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths if p)
    env.update(extra)
    return env


def poll(check: Callable[[], T | None], what: str, timeout_s: float = DEADLINE_S) -> T:
    """Call `check` until it returns something other than None (or False); fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(POLL_S)


class DaemonProcess:
    """`python -m executor run` as a child process, its stdout and stderr in a file."""

    def __init__(
        self,
        config: Path | None,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        umask: int = -1,
        args: Sequence[str] = (),
    ) -> None:
        """`config` None: no --config (the defaults); the working directory is `cwd`, else the
        config's folder. `env` defaults to child_env(); `args` go after `run`."""
        self.log_path = log_path
        argv = [sys.executable, "-m", "executor", "run", *args]
        if config is not None:
            argv += ["--config", str(config)]
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env if env is not None else child_env(),
                cwd=cwd if cwd is not None else config.parent if config is not None else None,
                umask=umask,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float = DEADLINE_S) -> re.Match[str]:
        """Wait until a log line matches `pattern` (a regex); fail early if the process exits."""
        regex = re.compile(pattern)

        def check() -> re.Match[str] | None:
            found = regex.search(self.log())
            if found is None and self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before logging {pattern!r}:\n"
                    + self.log()
                )
            return found

        return poll(check, f"log line {pattern!r}", timeout_s)

    def ready(self) -> DaemonProcess:
        self.wait_for_log(r"daemon ready")
        return self

    def wait_registered(self, db_path: Path, timeout_s: float = DEADLINE_S) -> DaemonProcess:
        """Wait until this daemon's engine is registered as running in `db_path` (its signal
        handlers are in place by then); fail early if the process exits."""

        def registered() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log()}")
            if not db_path.exists():
                return False
            try:
                with contextlib.closing(sqlite3.connect(db_path, timeout=10)) as conn:
                    row = conn.execute(
                        "SELECT 1 FROM engines WHERE pid = ? AND state = 'running'", (self.pid,)
                    ).fetchone()
            except sqlite3.OperationalError:  # not migrated yet
                return False
            return row is not None

        poll(registered, f"daemon {self.pid} to register its engine", timeout_s)
        return self

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float = DEADLINE_S) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"daemon still running after {timeout_s}s:\n{self.log()}"
            ) from None

    def stop(self) -> int:
        """Graceful stop; the exit code."""
        if self.proc.poll() is None:
            self.send(signal.SIGTERM)
        return self.wait_exit()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Daemons:
    """Starts daemons for one test and makes sure none outlives it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[DaemonProcess] = []

    def start(
        self,
        config: Path | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        args: Sequence[str] = (),
    ) -> DaemonProcess:
        log_path = self.directory / f"daemon-{len(self.started)}.log"
        daemon = DaemonProcess(config, log_path, env, cwd, args=args)
        self.started.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in self.started:
            daemon.kill()


def daemons_in(directory: Path) -> Iterator[Daemons]:
    daemons = Daemons(directory)
    try:
        yield daemons
    finally:
        daemons.close()


def cli(
    config: Path | None,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = DEADLINE_S,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m executor ARGS --config CONFIG` to completion."""
    argv = [sys.executable, "-m", "executor", *args]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env if env is not None else child_env(),
        cwd=cwd if cwd is not None else config.parent if config is not None else None,
        timeout=timeout_s,
        check=False,
    )


def with_client(db_path: Path, fn: Callable[[Client], Any]) -> Any:
    """Run `await fn(client)` on a client of the database, from this (the test) process."""

    async def go() -> Any:
        async with Client(db_path) as client:
            return await fn(client)

    return asyncio.run(go())


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
