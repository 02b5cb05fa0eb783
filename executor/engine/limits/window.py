"""Sliding windows over a log of admissions, and the paced windows derived from long ones.

A `Log` holds the requests (or tokens) of one bucket by the time each stops counting against a
window's start, with running totals, so a window's sum and the earliest time an amount fits are
O(log n). The same log serves every window length of its metric.

Pacing: a quota over a long window (a minute, an hour) would otherwise be admitted as one burst at
the start of the window. Providers enforce such quotas over shorter intervals too (6,000 requests
a minute as 100 a second), so that burst is refused. Each long window therefore gets a *pace*: the
same quota spread over sub-windows of at least PACE_S, i.e. at most `q` per `W * q / Q` where
q = ceil(Q * PACE_S / W). The sub-window's rate is exactly the quota's, and no burst is larger than
q (one PACE_S's share). Pace windows have their own log, whose entries count like the long
window's (until the request surely reached the server, bucket.py) but with a much shorter bound,
PACE_SEND_DELAY of the sub-window: a provider that enforces exactly the sub-window's quota sees
no more than that, and a pace costs at most that fraction of throughput.
"""

from __future__ import annotations

import bisect
import math
from typing import NamedTuple

TaskId = tuple[int, int]  # (run rid, position)

# Accounting windows are this much longer than their nominal length, for clock and timer
# granularity.
WINDOW_MARGIN_S = 0.005
# Long windows are paced over sub-windows of at least this long (providers enforce per-minute
# quotas per second).
PACE_S = 1.0
# A request counts in a pace window until it surely reached the server (its step ended), or
# at most this fraction of the sub-window after its admission.
PACE_SEND_DELAY = 0.02


class Window(NamedTuple):
    field: str  # the LimitSpec field ("requests_per_minute"), or "pace:<field>" for a pace
    metric: str  # "req" or "tok"
    length: float  # seconds, margins included
    quota: int  # at the configured rate; the adaptive factor scales it
    paced: bool  # a pace window (counted from admission) rather than a configured one


RATES = (
    ("requests_per_second", "req", 1.0),
    ("requests_per_minute", "req", 60.0),
    ("requests_per_hour", "req", 3600.0),
    ("tokens_per_second", "tok", 1.0),
    ("tokens_per_minute", "tok", 60.0),
    ("tokens_per_hour", "tok", 3600.0),
)


def windows_of(quotas: dict[str, int | None], pace: bool) -> list[Window]:
    """The configured windows of a limit, and the pace of each long one when `pace` is on."""
    out = []
    for field, metric, seconds in RATES:
        quota = quotas.get(field)
        if quota is None:
            continue
        out.append(Window(field, metric, seconds + WINDOW_MARGIN_S, quota, False))
        if pace and seconds > PACE_S:
            share = math.ceil(quota * PACE_S / seconds)
            if share < quota:
                length = seconds * share / quota + WINDOW_MARGIN_S
                out.append(Window("pace:" + field, metric, length, share, True))
    return out


class Log:
    """Amounts of one bucket by time, with running totals for O(log n) window sums."""

    __slots__ = ("amounts", "base", "cums", "head", "tasks", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tasks: list[TaskId] = []
        self.amounts: list[int] = []
        self.cums: list[int] = []  # total amount through each entry
        self.head = 0  # entries before head have left every window
        self.base = 0  # total amount before index 0

    def append(self, t: float, amount: int, task: TaskId) -> float:
        """Add an entry at `t`, or at the last entry's time if that is later (counting an entry
        longer is always safe, and keeps the log sorted); return the time used."""
        if self.times and t < self.times[-1]:
            t = self.times[-1]
        self.times.append(t)
        self.tasks.append(task)
        self.amounts.append(amount)
        self.cums.append(self.total + amount)
        return t

    def move_earlier(self, old: float, new: float, task: TaskId) -> None:
        """The step ended: its entry counts from `new` (<= old) on, not `old`."""
        p = bisect.bisect_left(self.times, old, self.head)
        while p < len(self.times) and self.times[p] == old and self.tasks[p] != task:
            p += 1
        if p >= len(self.times) or self.tasks[p] != task:
            return  # pruned already
        q = bisect.bisect_right(self.times, new, self.head, p)
        if q == p:
            self.times[p] = new  # nothing between: it keeps its place
            return
        amount = self.amounts[p]
        del self.times[p], self.tasks[p], self.amounts[p], self.cums[p]
        self.times.insert(q, new)
        self.tasks.insert(q, task)
        self.amounts.insert(q, amount)
        self.cums.insert(q, 0)
        total = self.before(q)
        for i in range(q, p + 1):  # only the entries it moved past: a few
            total += self.amounts[i]
            self.cums[i] = total

    @property
    def total(self) -> int:
        return self.cums[-1] if self.cums else self.base

    def before(self, i: int) -> int:
        return self.cums[i - 1] if i > 0 else self.base

    def after(self, x: float) -> int:
        """The index of the first entry later than x."""
        return bisect.bisect_right(self.times, x, self.head)

    def used(self, now: float, window: float) -> int:
        return self.total - self.before(self.after(now - window))

    def fit(self, now: float, window: float, cap: float, amount: int) -> float:
        """The earliest time >= now at which `amount` more fits in every window ending then."""
        j = self.after(now - window)
        base = self.before(j)
        need = self.total - base + min(amount, cap) - cap
        if need <= 0:
            return now
        i = bisect.bisect_left(self.cums, base + need, j)
        return self.times[i] + window

    def prune(self, older_than: float) -> None:
        self.head = self.after(older_than)
        if self.head > 1024 and self.head * 2 > len(self.times):
            self.base = self.cums[self.head - 1]
            for column in (self.times, self.tasks, self.amounts, self.cums):
                del column[: self.head]
            self.head = 0

    def __len__(self) -> int:
        return len(self.times) - self.head
