"""How much the machine starved a measurement of CPU: the share of its wall time during which
some runnable task waited for a CPU (Linux PSI, /proc/pressure/cpu), or, where PSI is missing,
the time this thread waited on the run queue (/proc/thread-self/schedstat).

Throughput tests assert rates the product must reach on a machine that lets it run. A miss
while the machine was starved says nothing about the product; a miss on a machine that was not
starved does. Used to decide whether a missed measurement may be taken once more, never to skip
or loosen a check.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

PSI = Path("/proc/pressure/cpu")
SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _waited_s() -> float | None:
    """Seconds spent waiting for a CPU so far (a counter), or None if the kernel does not say."""
    try:
        for line in PSI.read_text().splitlines():
            if line.startswith("some "):
                return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class CpuStall:
    """`with CpuStall() as stall: ...`; then `stall.share` (0.0 when the kernel does not say)."""

    def __init__(self) -> None:
        self.share = 0.0
        self._start = 0.0
        self._waited: float | None = None

    def __enter__(self) -> CpuStall:
        self._start = time.monotonic()
        self._waited = _waited_s()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        wall = time.monotonic() - self._start
        now = _waited_s()
        if self._waited is not None and now is not None and wall > 0:
            self.share = (now - self._waited) / wall
