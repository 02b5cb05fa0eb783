"""Faults seen from outside the daemon process: the exit code when the database cannot be
written past the limit, and the systemd watchdog ping stopping while workflow code blocks the
event loop. (The same faults inside an in-process engine: tests/integration/test_faults.py.)"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path
from typing import Any

from executor import Client
from tests.support.daemon import DaemonProcess, child_env, write_config
from tests.support.engine import write_lock

BUSY_TIMEOUT_S = 0.1
CANNOT_WRITE = "cannot write the database"
# Linux's SO_TIMESTAMP (Python does not name it): each datagram carries the kernel's time of its
# arrival in the socket, i.e. when the daemon sent it, however late the test gets to read it.
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)
TIMEVAL = struct.Struct("@ll")


def _config(tmp: Path, **engine: Any) -> Path:
    return write_config(
        tmp,
        database={"busy_timeout_s": BUSY_TIMEOUT_S},
        engine=engine,
        daemon={"workflows": ["tests.support.flows"]},
        log={"format": "json"},
    )


def test_the_daemon_exits_3_when_it_cannot_write_past_the_limit(tmp_path: Path) -> None:
    config = _config(tmp_path, write_failure_limit_s=0.5)
    env = child_env(CRASHLOOP_LOG=str(tmp_path / "steps.log"))
    d = DaemonProcess(config, tmp_path / "daemon.log", env=env)
    try:
        # Ready, not just registered: a lock taken while the engine is still starting fails
        # the start itself (another path; see the note on issue 10).
        d.ready()
        with write_lock(tmp_path / "executor.sqlite"):  # its heartbeat cannot write from now on
            code = d.wait_exit(30)
    finally:
        d.kill()
    text = d.log()
    assert code == 3, text
    assert text.count(CANNOT_WRITE) == 1, text
    assert "write_failure_limit_s" in text


def test_the_watchdog_ping_stops_while_the_loop_is_blocked(tmp_path: Path) -> None:
    db = tmp_path / "executor.sqlite"
    marker = tmp_path / "blocked"
    sock_path = tmp_path / "notify.sock"
    received: list[tuple[float, str]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        sock.settimeout(0.05)
        env = child_env(
            NOTIFY_SOCKET=str(sock_path),
            WATCHDOG_USEC="200000",
            CRASHLOOP_MARKER=str(marker),
            CRASHLOOP_LOG=str(tmp_path / "steps.log"),
        )
        d = DaemonProcess(_config(tmp_path), tmp_path / "daemon.log", env=env, cwd=tmp_path)

        def receive_until(done: Any, deadline_s: float = 20.0) -> None:
            deadline = time.monotonic() + deadline_s
            while not done():
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out; daemon log:\n{d.log()}")
                try:
                    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(TIMEVAL.size))
                except TimeoutError:
                    continue
                (sent,) = (
                    sec + usec / 1e6
                    for level, kind, raw in ancillary
                    if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMP)
                    for sec, usec in [TIMEVAL.unpack(raw[: TIMEVAL.size])]
                )
                received.append((sent, data.decode()))

        try:
            receive_until(lambda: any("READY=1" in m for _, m in received))
            # A ping before the block (a fast block could otherwise begin before the first one).
            receive_until(lambda: any("WATCHDOG=1" in m for _, m in received))
            run = _start_blocker(db)
            receive_until(marker.exists)
            # A few pings after the block, to see they resume.
            start = len(received)
            receive_until(lambda: sum("WATCHDOG=1" in m for _, m in received[start:]) >= 3)
        finally:
            assert d.stop() == 0, d.log()
    began, ended = (float(x) for x in marker.read_text().split())
    pings = [t for t, m in received if "WATCHDOG=1" in m]
    # Times are when the daemon sent each ping (kernel timestamps), not when this process got
    # to read it: a test starved of CPU reads pings sent before the block late, and used to
    # count them as sent during it. The small margins cover clock granularity only.
    during = [t for t in pings if began + 0.05 < t < ended - 0.05]
    assert not during, f"pings while the loop was blocked: {during} (block {began}..{ended})"
    assert any(t < began for t in pings), (pings, began)
    assert any(t > ended for t in pings), (pings, ended)
    log = d.log()
    assert "crashloop.blocker" in log and run in log, log


def _start_blocker(db: Path) -> str:
    async def go() -> str:
        async with Client(db) as c:
            return await c.start("crashloop.blocker", 2.0)

    return asyncio.run(go())
