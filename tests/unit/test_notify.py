"""The sd_notify client, against real unix datagram sockets standing in for systemd."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.daemon.notify import Notifier

RECEIVE_TIMEOUT_S = 2.0


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket on a filesystem path, and that path as NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(RECEIVE_TIMEOUT_S)
        yield sock, str(path)


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_stopping_and_watchdog_arrive_as_datagrams(
    listener: tuple[socket.socket, str],
) -> None:
    sock, address = listener
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled

    assert notifier.ready("serving 8 shards")
    assert receive(sock) == ["READY=1", "STATUS=serving 8 shards"]
    assert notifier.ready()
    assert receive(sock) == ["READY=1"]
    assert notifier.status("draining")
    assert receive(sock) == ["STATUS=draining"]
    assert notifier.stopping()
    assert receive(sock) == ["STOPPING=1"]
    assert notifier.watchdog()
    assert receive(sock) == ["WATCHDOG=1"]


def test_send_and_notify_build_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.send("READY=1", "STATUS=up")
    assert receive(sock) == ["READY=1", "STATUS=up"]
    assert notifier.notify(READY=1, status="up")
    assert receive(sock) == ["READY=1", "STATUS=up"]


def test_status_newlines_cannot_inject_fields(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    Notifier({"NOTIFY_SOCKET": address}).status("one\nREADY=1")
    assert receive(sock) == ["STATUS=one READY=1"]


def test_reloading_carries_the_monotonic_timestamp(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier({"NOTIFY_SOCKET": address}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receive(sock)
    assert first == "RELOADING=1"
    name, _, value = second.partition("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_namespace_socket() -> None:
    name = f"executor-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECEIVE_TIMEOUT_S)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert receive(sock) == ["READY=1"]


def test_no_notify_socket_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.reloading()
    assert not notifier.watchdog()
    assert notifier.watchdog_interval_s() is None


def test_unsupported_address_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="executor.notify"):
        notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "vsock:2:1234" in caplog.text


def test_send_failure_never_raises_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.DEBUG, logger="executor.notify"):
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert not notifier.watchdog()
    levels = [r.levelno for r in caplog.records if r.name == "executor.notify"]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]


def test_default_environment_is_os_environ(
    monkeypatch: pytest.MonkeyPatch, listener: tuple[socket.socket, str]
) -> None:
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert Notifier().ready()
    assert receive(sock) == ["READY=1"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(env).watchdog_interval_s() == expected
