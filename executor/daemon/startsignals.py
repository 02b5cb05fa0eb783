"""Stop signals that arrive while the daemon is still starting, before its event loop handles them.

`executor run` installs these handlers first thing, before the engine, the store, asyncio and the
workflow modules are imported (hundreds of milliseconds, more with heavy workflow modules), so a
SIGTERM in that window is a request to stop, not death by signal. Like the daemon's own handlers,
they only record: the daemon checks `stop_requested()` between its start-up stages and takes the
rest over (`take()`) once its loop's handlers are in place. The one exception is a second SIGINT,
which raises KeyboardInterrupt as Python does by default: a start-up stuck in a workflow module's
import must still yield to Ctrl-C twice.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_HANDLED = (*STOP_SIGNALS, signal.SIGHUP)
_received: list[int] = []


def install() -> None:
    """Record SIGTERM, SIGINT and SIGHUP from now on (call from the main thread)."""
    for sig in _HANDLED:
        signal.signal(sig, _record)


def _record(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGINT and signal.SIGINT in _received:
        raise KeyboardInterrupt
    _received.append(signum)


def stop_requested() -> str | None:
    """The name of the first stop signal received so far, if any."""
    for signum in _received:
        if signum in STOP_SIGNALS:
            return signal.Signals(signum).name
    return None


def take() -> list[int]:
    """The signals received and not yet taken, oldest first; forgets them."""
    taken = list(_received)
    del _received[: len(taken)]
    return taken
