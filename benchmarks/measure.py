"""What the benchmarks measure besides the engine: percentiles, rank correlation, memory, CPU
time, a CPU-speed calibration and the machine's description."""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import platform
import resource
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        shared = (i + j) / 2 + 1
        for k in range(i, j + 1):
            out[order[k]] = shared
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson's r of the ranks (so ties are handled).

    None when it is undefined: fewer than two values, or all values of one side equal.
    """
    if len(xs) != len(ys):
        raise ValueError("spearman needs two sequences of the same length")
    n = len(xs)
    if n < 2:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mean = (n + 1) / 2  # the mean of ranks 1..n, ties or not
    cov = sum((a - mean) * (b - mean) for a, b in zip(rx, ry, strict=True))
    var_x = sum((a - mean) ** 2 for a in rx)
    var_y = sum((b - mean) ** 2 for b in ry)
    if var_x == 0 or var_y == 0:
        return None
    return max(-1.0, min(1.0, cov / math.sqrt(var_x * var_y)))


def busy_while_queued(
    samples: Sequence[tuple[float, int]],
    started: Sequence[float],
    finished: Sequence[float],
    queued_above: int,
    slots: int,
) -> float | None:
    """Mean share of the slots in flight over the samples (time, in flight) taken while more
    than `queued_above` runs were started and not finished, i.e. while work was waiting for a
    slot (`started` and `finished` sorted). None if work never waited."""
    busy = [
        in_flight
        for at, in_flight in samples
        if bisect.bisect_right(started, at) - bisect.bisect_right(finished, at) > queued_above
    ]
    return round(sum(busy) / len(busy) / slots, 4) if busy else None


# --- the machine and its memory ------------------------------------------------------------------


def current_rss_kib() -> int:
    """Resident memory now (Linux /proc; elsewhere the peak, the best getrusage offers)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return peak_rss_kib()


def peak_rss_kib() -> int:
    """This process's peak resident memory: VmHWM on Linux. Not getrusage's ru_maxrss there: a
    process started by another (the floor, run with --vs-floor) inherits its parent's peak in
    ru_maxrss across fork and exec, so the floor reported the engine run's peak as its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


CALIBRATION_LOOPS = 300_000  # about 16 ms of pure Python on this machine when its CPU is fast


def calibrate_ms() -> float:
    """Time a fixed pure-Python loop: how fast this CPU runs Python right now.

    On a shared VM the same loop can take twice as long from one minute to the next; a run whose
    calibration before and after is slow was measured on a slow CPU and says little about us.
    """
    started = time.perf_counter()
    total = 0
    for i in range(CALIBRATION_LOOPS):
        total += i * i
    return round((time.perf_counter() - started) * 1000, 2)


def machine() -> dict[str, Any]:
    ram_kib = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
                break
    return {
        "cpus": os.cpu_count(),
        "ram_gib": None if ram_kib is None else round(ram_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }
