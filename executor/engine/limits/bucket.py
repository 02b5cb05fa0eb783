"""The budget of one limit for one key (a bucket), and the groups tasks park in.

A bucket holds the logs of what ran (window.py), the reservations of waiters, the concurrency in
use and the adaptive rate (adaptive.py). Waiters reserve openings in a plan that is the logs plus
every reservation, so the k-th waiter gets the k-th future opening and a newcomer queues behind
them. The plan is a hint; admission always re-checks the logs of what really ran, so a late or
reordered return can never push a window over its quota.

An entry of a configured window counts from its admission until `min(end of the step, admission +
send_delay) + window`: the server counts a request when it arrives, which may be after we admit
it, and the reply can only come after it arrived. In the first window after the bucket was idle,
connections are likely cold (TCP and TLS handshakes), so entries count until their step ends, up
to a whole shortest window.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any

from executor import config
from executor.engine.limits.adaptive import AdaptiveRate
from executor.engine.limits.window import PACE_SEND_DELAY, RATES, Log, TaskId, Window, windows_of

# How late after its admission a request may reach the server and still be counted in the right
# windows: 3% of the limit's shortest configured window (30 ms for a second), at most
# SEND_DELAY_MAX_S. What matters is the spread of those delays, not their size: requests that all
# take the same time to arrive arrive in the same order and spacing as they were admitted. A
# request also counts until its step ends (the reply proves it arrived), so the hold costs
# min(latency, this) per request: 3% of a per-second quota at most.
SEND_DELAY_FRACTION = 0.03
SEND_DELAY_MAX_S = 2.0
# Openings are reserved at most this far ahead; later waiters park instead of holding a
# reservation, which keeps the queue of tasks with a future not_before short.
HORIZON_S = 2.0
# A wait this short is slept in the slot: cheaper than a trip through the queue.
IN_SLOT_WAIT_S = 0.05
# A task back this early for its reservation is on time (clock and timer granularity).
EARLY_TOLERANCE_S = 0.002
# A reservation whose task has not come back this long after its time is dropped (its run was
# cancelled or finished, or another engine took the task).
ABANDON_S = 10.0
# Unparked tasks not claimed this long after are no longer counted as on their way.
UNPARK_TTL_S = 5.0
# Keyed buckets (limit_key) idle this long are forgotten, so one bucket per API key stays cheap.
IDLE_BUCKET_S = 120.0
MAX_UNPARK_BATCH = 1000


class Group:
    """Tasks parked in the database under one name, and the room they wait for."""

    __slots__ = ("cap", "in_use", "last_park", "name", "parked", "unparking")

    def __init__(self, name: str, cap: int = 0) -> None:
        self.name = name
        self.cap = cap  # concurrency cap; 0: none
        self.in_use = 0
        self.parked = 0  # our best count of this group's parked tasks
        self.last_park = -math.inf
        self.unparking: deque[float] = deque()  # unparked, not yet claimed: expiry times

    def on_the_way(self, now: float) -> int:
        while self.unparking and self.unparking[0] < now:
            self.unparking.popleft()
        return len(self.unparking)

    def has_room(self, cap: int, priority: bool, now: float) -> bool:
        if self.in_use >= cap:
            return False
        # Someone parked earlier, or unparked and on the way, goes first.
        return priority or (self.parked == 0 and self.in_use + self.on_the_way(now) < cap)


class Bucket:
    """The budget of one limit for one key: logs, reservations, concurrency, adaptive rate."""

    def __init__(self, spec: config.LimitSpec, key: str | None, now: float) -> None:
        self.key = key
        self.label = spec.name if key is None else f"{spec.name}:{key}"
        self.group = Group(f"limit:{self.label}")
        # Configured windows count from admission until the request surely arrived; pace
        # windows from admission (window.py).
        # One entry per admission in each: requests by index, tokens by running totals.
        self.log, self.pace = Log(False), Log(False)
        # Reservations, by time: the plan is these plus the logs.
        self.r_times: list[float] = []
        self.r_tasks: list[TaskId] = []
        self.r_tokens: list[int] = []
        self.pending: dict[TaskId, float] = {}
        self.rate = AdaptiveRate()
        self.f = 1.0  # the adaptive factor as of the last `refresh`
        self.blocked_until = 0.0
        self.admitted = 0
        self.avg_cost = 0.0
        self.last_used = -math.inf
        self.cold_until = 0.0
        # Headroom: requests and tokens that surely fit every window from now on (entries only
        # leave windows as time passes), measured on a slow admission. Admissions within it skip
        # the window arithmetic: a limit with room costs a step close to nothing. A lower rate
        # (a 429) or a new configuration empties it.
        self.room_req = 0
        self.room_tok = 0.0
        self.tight = True  # some window was half full when measured: settle entries at the end
        self.configure(spec)

    def configure(self, spec: config.LimitSpec) -> None:
        self.spec = spec
        quotas = {field: getattr(spec, field) for field, _, _ in RATES}
        self.windows: list[Window] = windows_of(quotas, spec.pace is not False)
        configured = [w.length for w in self.windows if not w.paced]
        paces = [w.length for w in self.windows if w.paced]
        self.send_delay_s = min(
            SEND_DELAY_MAX_S, SEND_DELAY_FRACTION * min(configured, default=1.0)
        )
        self.pace_delay_s = PACE_SEND_DELAY * min(paces, default=1.0)
        # Cold connections are warm after a while: the shortest window, paces included.
        self.cold_s = min(configured + paces, default=1.0)
        self.longest_s = max(configured, default=0.0)
        self.pace_s = max(paces, default=0.0)
        self.tokens = any(w.metric == "tok" for w in self.windows)
        if self.tokens:
            self.log.count_tokens()
            self.pace.count_tokens()
        self.rate.configure(spec.backoff, spec.floor, spec.recovery_s, spec.tolerance)
        self.room_req, self.room_tok, self.tight = 0, 0.0, True

    def _log(self, w: Window) -> Log:
        return self.pace if w.paced else self.log

    # -- adaptive rate --

    def refresh(self, now: float) -> None:
        self.f = self.rate.factor(now)

    def cap(self, w: Window) -> float:
        scaled = w.quota * self.f
        return float(max(1, math.floor(scaled))) if w.metric == "req" else max(1.0, scaled)

    def concurrency_cap(self) -> int:
        c = self.spec.concurrent
        if c is None:
            return 0
        # The factor scales the rates; a limit with no rate adapts its concurrency instead.
        return c if self.windows else max(1, math.floor(c * self.f))

    def on_429(self, now: float, retry_after: float) -> bool:
        """A request of this bucket got a 429; True if the bucket slows down and pauses."""
        self.refresh(now)
        if not self.rate.on_429(now):
            return False
        self.blocked_until = max(self.blocked_until, now + retry_after)
        self.refresh(now)
        self.room_req, self.room_tok, self.tight = 0, 0.0, True
        return True

    # -- headroom: the fast path --

    def quick(self, tokens: int, now: float) -> bool:
        """Admissible now without looking at the windows: within the headroom, nobody waiting
        or parked before it, not paused, not adapting."""
        return (
            self.room_req >= 1
            and self.room_tok >= tokens
            and not self.pending
            and not self.group.parked
            and now >= self.blocked_until
            and self.rate.low >= 1.0
        )

    def measure(self, now: float) -> None:
        """Measure the headroom after a slow admission. While no window is half full, the
        headroom stops at half of each window, so entries need no settling (their step's end
        would only free room nobody needs; counting them a little longer is safe)."""
        room_req, room_tok, tight = 1 << 62, math.inf, False
        for w in self.windows:
            cap = self.cap(w)
            used = self._log(w).used(now, w.length, w.metric == "req")
            tight = tight or used * 2 >= cap
            left = cap - used
            if w.metric == "req":
                room_req = min(room_req, int(left))
            else:
                room_tok = min(room_tok, left)
        if not tight:
            for w in self.windows:
                half = self.cap(w) / 2 - self._log(w).used(now, w.length, w.metric == "req")
                if w.metric == "req":
                    room_req = min(room_req, int(half))
                else:
                    room_tok = min(room_tok, half)
        self.room_req, self.room_tok, self.tight = max(0, room_req), max(0.0, room_tok), tight

    # -- fitting --

    def fit_now(self, tokens: int, now: float) -> float:
        """When `tokens` (and one request) fit the logs of what really ran, ignoring the plan."""
        t = max(now, self.blocked_until)
        for w in self.windows:
            amount = 1 if w.metric == "req" else tokens
            t = max(t, self._log(w).fit(now, w.length, self.cap(w), amount, w.metric == "req"))
        return t

    def fit_plan(self, tokens: int, now: float) -> float:
        """The first opening behind every reservation (the back of the line)."""
        t0 = max(now, self.r_times[-1]) if self.r_times else now
        t = max(t0, self.blocked_until)
        for w in self.windows:
            amount = 1 if w.metric == "req" else tokens
            t = max(t, self._fit_plan(w, self.cap(w), amount, t0))
        return t

    def _fit_plan(self, w: Window, cap: float, amount: int, t0: float) -> float:
        lg, window, req = self._log(w), w.length, w.metric == "req"
        x0 = t0 - window
        i = lg.after(x0)
        if not self.r_times:  # nobody waits: the log alone decides
            return lg.fit(t0, window, cap, amount, req)
        k = bisect.bisect_right(self.r_times, x0)
        planned = len(self.r_times) - k if req else sum(self.r_tokens[k:])
        need = lg.total(req) - lg.cum(i, req) + planned + min(amount, cap) - cap
        if need <= 0:
            return t0
        # Drop the oldest entries of log and plan, in time order, until the amount fits.
        n, m = len(lg.times), len(self.r_times)
        while True:
            ta = lg.times[i] if i < n else math.inf
            tr = self.r_times[k] if k < m else math.inf
            if ta <= tr:
                need -= lg.amount(i, req)
                i += 1
                t = ta
            else:
                need -= 1 if req else self.r_tokens[k]
                k += 1
                t = tr
            if need <= 0 or t == math.inf:
                return t + window

    def fit(self, task: TaskId, tokens: int, priority: bool, now: float) -> float:
        """When this task may go: now, a time to wait for, or inf (park behind others)."""
        reserved = self.pending.get(task)
        if reserved is not None:
            if now < reserved - EARLY_TOLERANCE_S:
                return reserved  # back early: its turn has not come
            t = self.fit_now(tokens, now)
            if t - now <= IN_SLOT_WAIT_S or t > self.blocked_until:
                # Its turn: now, after a moment in the slot, or at the real opening when the
                # ones before it ran late (keeping its place; the plan assumed they were on time).
                return t
            # A 429 paused the limit past its turn: to the back of the line, so the waiters come
            # back staggered in their old order rather than all at the end of the pause.
            self.unreserve(task)
            return self.fit_plan(tokens, now)
        if not priority and self.group.parked > 0:
            return math.inf
        return self.fit_plan(tokens, now)

    def openings(self, now: float) -> int:
        """About how many more tasks can be given an opening within the horizon."""
        if not self.windows:
            return MAX_UNPARK_BATCH
        cost = int(self.avg_cost)
        t_next = self.fit_plan(cost, now)
        if t_next > now + HORIZON_S:
            return 0
        per_s = math.inf
        for w in self.windows:
            per_request = 1 if w.metric == "req" else max(1, cost)
            per_s = min(per_s, self.cap(w) / w.length / per_request)
        return math.floor((now + HORIZON_S - t_next) * per_s) + 1

    # -- reservations and admissions --

    def reserve(self, task: TaskId, t: float, tokens: int) -> None:
        self.unreserve(task)
        i = bisect.bisect_right(self.r_times, t)
        self.r_times.insert(i, t)
        self.r_tasks.insert(i, task)
        self.r_tokens.insert(i, tokens)
        self.pending[task] = t

    def unreserve(self, task: TaskId) -> None:
        t = self.pending.pop(task, None)
        if t is None:
            return
        i = bisect.bisect_left(self.r_times, t)
        while self.r_tasks[i] != task:
            i += 1
        del self.r_times[i], self.r_tasks[i], self.r_tokens[i]

    def admit(self, task: TaskId, tokens: int, now: float) -> tuple[float, float]:
        """Record the admission; return the times its entries are at until the step ends (in
        the configured windows' logs, and in the pace logs)."""
        if self.pending:
            self.unreserve(task)
        if now - self.last_used > 2 * self.cold_s:
            self.cold_until = now + self.cold_s  # idle a while: connections may be cold
        cold = now < self.cold_until
        until = now + (self.cold_s if cold else self.send_delay_s)
        pace_until = now + (self.cold_s if cold else self.pace_delay_s)
        if self.windows:
            until = self.log.append(until, tokens)
            if self.pace_s:
                pace_until = self.pace.append(pace_until, tokens)
        self.room_req -= 1
        self.room_tok -= tokens
        self.group.in_use += 1
        self.admitted += 1
        if self.tokens:
            self.avg_cost += (tokens - self.avg_cost) * (1.0 if self.admitted == 1 else 0.05)
        self.last_used = now
        return until, pace_until

    def settle(self, tokens: int, until: tuple[float, float], now: float) -> None:
        """The step ended: its request arrived by now, so it counts from now, not `until`."""
        if not self.windows:
            return
        if not self.tight and until[0] - now <= self.send_delay_s:
            return  # room to spare, and a warm entry that counts at most send_delay longer
        if now < until[0]:
            self.log.move_earlier(until[0], now, tokens)
        if self.pace_s and now < until[1]:  # (a cold entry, or a tight bucket)
            self.pace.move_earlier(until[1], now, tokens)

    def expire(self, now: float) -> None:
        self.refresh(now)
        older = now - self.longest_s
        self.log.prune(older)
        self.pace.prune(now - self.pace_s)
        cutoff = now - ABANDON_S
        drop = bisect.bisect_left(self.r_times, cutoff)
        if drop:
            for task in self.r_tasks[:drop]:
                self.pending.pop(task, None)
            del self.r_times[:drop], self.r_tasks[:drop], self.r_tokens[:drop]

    def idle(self, now: float) -> bool:
        return (
            not self.pending
            and self.group.in_use == 0
            and self.group.parked == 0
            and not self.group.on_the_way(now)
            and self.rate.idle()
            and self.blocked_until < now
            and now - self.last_used > max(IDLE_BUCKET_S, self.longest_s)
        )

    def snapshot(self, now: float) -> dict[str, Any]:
        self.refresh(now)
        rates = {}
        for w in self.windows:
            if not w.paced:
                rates[w.field] = {
                    "configured": w.quota,
                    "effective": round(self.cap(w), 3),
                    "used": self._log(w).used(now, w.length, w.metric == "req"),
                }
        out: dict[str, Any] = {"limit": self.spec.name, "key": self.key, "rates": rates}
        if self.spec.concurrent is not None:
            out["concurrent"] = {
                "configured": self.spec.concurrent,
                "effective": self.concurrency_cap(),
            }
        rate = self.rate
        out.update(
            in_flight=self.group.in_use,
            waiting=len(self.pending),
            parked=self.group.parked,
            factor=round(self.f, 4),
            rate_limited=rate.rate_limited,
            share_429=round(rate.share, 4),
            last_rate_limited_s_ago=(
                None if rate.last_429 == -math.inf else round(now - rate.last_429, 3)
            ),
            paused_for_s=round(max(0.0, self.blocked_until - now), 3),
            admitted=self.admitted,
        )
        return out
