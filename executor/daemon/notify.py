"""systemd's sd_notify protocol: READY, RELOADING, STOPPING, WATCHDOG and STATUS datagrams.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the daemon never needs to ask.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger("executor.notify")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

# A datagram to a full receive queue blocks; we run on the event loop, so wait this long at most.
# Generous, because a READY=1 that never arrives makes systemd fail the start.
SEND_TIMEOUT_S = 1.0
# systemd asks for pings at half the watchdog period, so one late ping is not fatal.
WATCHDOG_PING_FRACTION = 0.5
_USEC_PER_S = 1_000_000
_NSEC_PER_USEC = 1_000


class Notifier:
    """Send sd_notify datagrams to the socket named by NOTIFY_SOCKET, if any."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._address = _socket_address(env.get(NOTIFY_SOCKET_ENV, ""))
        self._watchdog_usec = env.get(WATCHDOG_USEC_ENV, "")
        self._watchdog_pid = env.get(WATCHDOG_PID_ENV, "")
        self._warned = False

    @property
    def enabled(self) -> bool:
        """Whether a notify socket is configured."""
        return self._address is not None

    def send(self, *lines: str) -> bool:
        """Send the lines as one datagram; return whether it was sent. Never raises."""
        if self._address is None or not lines:
            return False
        data = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(data, self._address)
        except (OSError, ValueError) as exc:
            # Warn once: a vanished socket would otherwise log on every watchdog ping.
            log = logger.debug if self._warned else logger.warning
            self._warned = True
            log("sd_notify to %s failed: %s", self._display_address(), exc)
            return False
        return True

    def notify(self, **fields: object) -> bool:
        """Send KEY=value fields as one datagram, e.g. notify(READY=1, STATUS="up")."""
        return self.send(*(f"{key.upper()}={value}" for key, value in fields.items()))

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete."""
        return self.send("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload started; send ready() when it is done."""
        # Type=notify-reload (systemd >= 253) rejects RELOADING=1 without the monotonic timestamp.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // _NSEC_PER_USEC
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown started."""
        return self.send("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        """Tell the watchdog we are alive."""
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Set the one-line status shown by `systemctl status`."""
        return self.send(*_status(text))

    def watchdog_interval_s(self) -> float | None:
        """How often to call watchdog(), or None when the watchdog is off or not meant for us."""
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        # WATCHDOG_PID names the process systemd watches; a child that inherited it must not ping.
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return usec * WATCHDOG_PING_FRACTION / _USEC_PER_S

    def _display_address(self) -> str:
        address = self._address or ""
        return "@" + address[1:] if address.startswith("\0") else address


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):
        # "@name" is Linux's abstract namespace: the address is the name after a NUL byte.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    if value:
        # e.g. systemd >= 254's "vsock:" addresses: unsupported, so say so instead of guessing.
        logger.warning("ignoring unsupported %s=%r", NOTIFY_SOCKET_ENV, value)
    return None


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # A newline would end the field and start a bogus one.
    return ("STATUS=" + " ".join(text.splitlines()),)
