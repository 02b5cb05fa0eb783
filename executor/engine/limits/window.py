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
from array import array
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
    """Entries of one bucket by time (one request each, with its tokens), for O(log n) window
    sums: a request count is an index difference; tokens keep running totals (only when the
    limit has token windows). Columns are arrays, not lists: a log holds a window's worth of
    entries (minutes of them), and the garbage collector would walk every list entry on each
    full collection; arrays hold plain numbers it never looks at."""

    __slots__ = ("amounts", "base", "cums", "head", "times", "tokens")

    def __init__(self, tokens: bool) -> None:
        self.times = array("d")
        self.tokens = tokens
        self.amounts = array("q")  # tokens of each entry (when tokens)
        self.cums = array("q")  # tokens through each entry (when tokens)
        self.head = 0  # entries before head have left every window
        self.base = 0  # tokens before index 0

    def count_tokens(self) -> None:
        """Start counting tokens (a token window was configured live): earlier entries count 0."""
        if not self.tokens:
            self.tokens = True
            self.amounts = array("q", bytes(8 * len(self.times)))
            self.cums = array("q", bytes(8 * len(self.times)))
            self.base = 0

    def append(self, t: float, amount: int) -> float:
        """Add an entry at `t`, or at the last entry's time if that is later (counting an entry
        longer is always safe, and keeps the log sorted); return the time used."""
        times = self.times
        if times and t < times[-1]:
            t = times[-1]
        times.append(t)
        if self.tokens:
            cums = self.cums
            self.amounts.append(amount)
            cums.append((cums[-1] if cums else self.base) + amount)
        return t

    def move_earlier(self, old: float, new: float, amount: int) -> None:
        """A step ended: its entry counts from `new` (<= old) on, not `old`. Entries of the same
        time (and tokens) are interchangeable, so any one of them is moved."""
        times = self.times
        p = bisect.bisect_left(times, old, self.head)
        if self.tokens:
            amounts = self.amounts
            while p < len(times) and times[p] == old and amounts[p] != amount:
                p += 1
        if p >= len(times) or times[p] != old:
            return  # pruned already
        q = bisect.bisect_right(times, new, self.head, p)
        if q == p:
            times[p] = new  # nothing between: it keeps its place
            return
        del times[p]
        times.insert(q, new)
        if self.tokens:
            del self.amounts[p], self.cums[p]
            self.amounts.insert(q, amount)
            self.cums.insert(q, 0)
            total = self.cum(q, False)
            for i in range(q, p + 1):  # only the entries it moved past: a few
                total += self.amounts[i]
                self.cums[i] = total

    def total(self, req: bool) -> int:
        if req:
            return len(self.times)
        return self.cums[-1] if self.cums else self.base

    def cum(self, i: int, req: bool) -> int:
        """The amount before entry i."""
        if req:
            return i
        return self.cums[i - 1] if i > 0 else self.base

    def amount(self, i: int, req: bool) -> int:
        return 1 if req else self.amounts[i]

    def after(self, x: float) -> int:
        """The index of the first entry later than x."""
        return bisect.bisect_right(self.times, x, self.head)

    def used(self, now: float, window: float, req: bool) -> int:
        return self.total(req) - self.cum(self.after(now - window), req)

    def fit(self, now: float, window: float, cap: float, amount: int, req: bool) -> float:
        """The earliest time >= now at which `amount` more fits in every window ending then."""
        j = self.after(now - window)
        base = self.cum(j, req)
        need = self.total(req) - base + min(amount, cap) - cap
        if need <= 0:
            return now
        if req:
            return self.times[j + math.ceil(need) - 1] + window
        return self.times[bisect.bisect_left(self.cums, base + need, j)] + window

    def prune(self, older_than: float) -> None:
        self.head = self.after(older_than)
        if self.head > 1024 and self.head * 2 > len(self.times):
            if self.tokens:
                self.base = self.cums[self.head - 1]
                del self.amounts[: self.head], self.cums[: self.head]
            del self.times[: self.head]
            self.head = 0

    def __len__(self) -> int:
        return len(self.times) - self.head
