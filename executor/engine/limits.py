"""Quotas for API-bound steps: request and token rates, concurrency, per-key caps.

A step names the limits it draws on (`@step(limits=["anthropic"], cost=...)`); the engine asks
the `Limiter` before running it. The answer is one of:

    admit   the step runs now; its requests and tokens are recorded in every window
    wait    it fits at a known time within HORIZON_S: the task goes back to the queue with that
            not_before (a wait shorter than IN_SLOT_WAIT_S is slept in the slot instead)
    park    it cannot fit soon (a full concurrency cap, or an opening past the horizon): the task
            is parked in the database under a group name and holds nothing; it is unparked,
            oldest first, when its group has room again

Rates are sliding windows over a log of admissions (exact, unlike fixed windows, which let twice
the quota through around a window edge). The server counts a request when it arrives, which may
be after we admit it (a new connection, a TLS handshake), so an entry counts from its admission
until `min(end of the step, admission + SEND_DELAY) + window`: the reply can only come after the
request arrived, so no window at the server sees more than the quota as long as each request
reaches it within SEND_DELAY of its admission. It costs the request's latency, up to SEND_DELAY.
In the first window after the limit was idle, connections are likely cold (a burst of TCP and
TLS handshakes, hundreds of milliseconds), so its requests count until their step ends, up to a
whole window.

Waiters reserve openings in a plan that is the log plus every reservation, so the k-th waiter
gets the k-th future opening and a newcomer queues behind them. The plan is a hint; admission
always re-checks the log of what really ran, so a late or reordered return can never push a
window over its quota.

A 429 (a step raising RateLimited) halves the limit's effective rate (at most once per
DECREASE_COOLDOWN_S) and blocks it for the Retry-After; each quiet window without a 429 gives back
INCREASE_STEP of the configured rate, never more than the configured rate.

Everything here runs on the event loop without awaiting, except `admit`'s short in-slot sleep:
each decision is atomic. Limits are per process, which is per database, since one engine at a
time owns a database file.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from executor import config, errors, registry
from executor.vocabulary import Claimed, Outcome, OutcomeKind, StepState

log = logging.getLogger("executor.limits")

# How late after its admission a request may reach the server and still be counted in the right
# windows (see above): a tenth of the limit's shortest window, at most SEND_DELAY_MAX_S.
SEND_DELAY_FRACTION = 0.1
SEND_DELAY_MAX_S = 2.0
# Accounting windows are this much longer than their nominal second or minute, for clock and
# timer granularity.
WINDOW_MARGIN_S = 0.005
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
# Adaptive rate (AIMD): a 429 multiplies the effective rate by DECREASE_FACTOR, not below
# MIN_FACTOR; each quiet window adds INCREASE_STEP of the configured rate back.
DECREASE_FACTOR = 0.5
MIN_FACTOR = 1 / 64
INCREASE_STEP = 0.2
DECREASE_COOLDOWN_S = 1.0
# Keyed buckets (limit_key) idle this long are forgotten, so one bucket per API key stays cheap.
IDLE_BUCKET_S = 120.0
MAX_SNAPSHOT_BUCKETS = 200
MAX_UNPARK_BATCH = 1000

_WINDOWS = (
    ("requests_per_second", "req", 1.0),
    ("requests_per_minute", "req", 60.0),
    ("tokens_per_second", "tok", 1.0),
    ("tokens_per_minute", "tok", 60.0),
)

TaskId = tuple[int, int]  # (run rid, position)


class CostTooHigh(errors.ExecutorError):
    """A step's cost is more than its limit allows in a whole window: it can never run."""


class _Log:
    """Requests or tokens of one bucket, by the time each stops counting against a window's
    start (see the module docstring), with running totals for O(log n) window sums."""

    __slots__ = ("amounts", "base", "cums", "head", "tasks", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tasks: list[TaskId] = []
        self.amounts: list[int] = []
        self.cums: list[int] = []  # total amount through each entry
        self.head = 0  # entries before head have left every window
        self.base = 0  # total amount before index 0

    def append(self, t: float, amount: int, task: TaskId) -> None:
        self.times.append(t)
        self.tasks.append(task)
        self.amounts.append(amount)
        self.cums.append(self.total + amount)

    def move_earlier(self, old: float, new: float, task: TaskId) -> None:
        """The step ended: its entry counts from `new` (<= old) on, not `old`."""
        p = bisect.bisect_left(self.times, old, self.head)
        while p < len(self.times) and self.times[p] == old and self.tasks[p] != task:
            p += 1
        if p >= len(self.times) or self.tasks[p] != task:
            return  # pruned already
        q = bisect.bisect_right(self.times, new, self.head, p)
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


class _Group:
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


class _Bucket:
    """The budget of one limit for one key: logs, reservations, concurrency, adaptive factor."""

    def __init__(self, spec: config.LimitSpec, key: str | None, now: float) -> None:
        self.key = key
        label = spec.name if key is None else f"{spec.name}:{key}"
        self.label = label
        self.group = _Group(f"limit:{label}")
        self.req = _Log()
        self.tok = _Log()
        # Reservations, by time: the plan is these plus the logs.
        self.r_times: list[float] = []
        self.r_tasks: list[TaskId] = []
        self.r_tokens: list[int] = []
        self.pending: dict[TaskId, float] = {}
        self.factor = 1.0
        self.last_429 = -math.inf
        self.last_decrease = -math.inf
        self.last_step = now
        self.blocked_until = 0.0
        self.rate_limited = 0
        self.admitted = 0
        self.avg_cost = 0.0
        self.last_used = -math.inf
        self.cold_until = 0.0
        self.configure(spec)

    def configure(self, spec: config.LimitSpec) -> None:
        self.spec = spec
        self.windows: list[tuple[str, str, float, int]] = [
            (field, metric, seconds + WINDOW_MARGIN_S, getattr(spec, field))
            for field, metric, seconds in _WINDOWS
            if getattr(spec, field) is not None
        ]
        self.quiet_s = min((w for _, _, w, _ in self.windows), default=1.0)
        self.send_delay_s = min(SEND_DELAY_MAX_S, SEND_DELAY_FRACTION * self.quiet_s)
        self.longest_s = max((w for _, _, w, _ in self.windows), default=0.0)

    # -- adaptive rate --

    def recover(self, now: float) -> None:
        if self.factor >= 1.0:
            return
        quiet_since = max(self.last_429, self.last_step)
        steps = int((now - quiet_since) // self.quiet_s)
        if steps > 0:
            self.factor = min(1.0, self.factor + steps * INCREASE_STEP)
            self.last_step = quiet_since + steps * self.quiet_s
            if self.factor >= 1.0:
                log.info("limit %s: no 429 for a while, back to its configured rate", self.label)

    def cap(self, metric: str, configured: int) -> float:
        scaled = configured * self.factor
        return float(max(1, math.floor(scaled))) if metric == "req" else max(1.0, scaled)

    def concurrency_cap(self) -> int:
        c = self.spec.concurrent
        if c is None:
            return 0
        # The factor scales the rates; a limit with no rate adapts its concurrency instead.
        return c if self.windows else max(1, math.floor(c * self.factor))

    def on_429(self, now: float, retry_after: float) -> None:
        self.rate_limited += 1
        self.last_429 = now
        self.blocked_until = max(self.blocked_until, now + retry_after)
        if now - self.last_decrease >= DECREASE_COOLDOWN_S:
            self.factor = max(MIN_FACTOR, self.factor * DECREASE_FACTOR)
            self.last_decrease = self.last_step = now
            log.warning(
                "limit %s: rate limited by the server (429); effective rate now %.0f%% of the"
                " configured rate, paused for %.2fs",
                self.label,
                self.factor * 100,
                retry_after,
            )

    # -- fitting --

    def _log(self, metric: str) -> _Log:
        return self.req if metric == "req" else self.tok

    def fit_now(self, tokens: int, now: float) -> float:
        """When `tokens` (and one request) fit the log of what really ran, ignoring the plan."""
        t = max(now, self.blocked_until)
        for _, metric, window, configured in self.windows:
            amount = 1 if metric == "req" else tokens
            t = max(t, self._log(metric).fit(now, window, self.cap(metric, configured), amount))
        return t

    def fit_plan(self, tokens: int, now: float) -> float:
        """The first opening behind every reservation (the back of the line)."""
        t0 = max(now, self.r_times[-1]) if self.r_times else now
        t = max(t0, self.blocked_until)
        for _, metric, window, configured in self.windows:
            amount = 1 if metric == "req" else tokens
            t = max(t, self._fit_plan(metric, window, self.cap(metric, configured), amount, t0))
        return t

    def _fit_plan(self, metric: str, window: float, cap: float, amount: int, t0: float) -> float:
        lg = self._log(metric)
        x0 = t0 - window
        i = lg.after(x0)
        k = bisect.bisect_right(self.r_times, x0)
        planned = len(self.r_times) - k if metric == "req" else sum(self.r_tokens[k:])
        need = lg.total - lg.before(i) + planned + min(amount, cap) - cap
        if need <= 0:
            return t0
        # Drop the oldest entries of log and plan, in time order, until the amount fits.
        n, m = len(lg.times), len(self.r_times)
        while True:
            ta = lg.times[i] if i < n else math.inf
            tr = self.r_times[k] if k < m else math.inf
            if ta <= tr:
                need -= lg.cums[i] - lg.before(i)
                i += 1
                t = ta
            else:
                need -= 1 if metric == "req" else self.r_tokens[k]
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
        for _, metric, window, configured in self.windows:
            cap = self.cap(metric, configured)
            per_s = min(per_s, cap / window if metric == "req" else cap / window / max(1, cost))
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

    def admit(self, task: TaskId, tokens: int, now: float) -> float:
        """Record the admission; return the time its entry is at until the step ends."""
        self.unreserve(task)
        if now - self.last_used > 2 * self.quiet_s:
            self.cold_until = now + self.quiet_s  # idle a while: connections may be cold
        until = now + (self.quiet_s if now < self.cold_until else self.send_delay_s)
        if self.windows:
            self.req.append(until, 1, task)
            self.tok.append(until, tokens, task)
        self.group.in_use += 1
        self.admitted += 1
        self.avg_cost += (tokens - self.avg_cost) * (1.0 if self.admitted == 1 else 0.05)
        self.last_used = now
        return until

    def settle(self, task: TaskId, until: float, now: float) -> None:
        """The step ended: its request arrived by now, so it counts from now, not `until`."""
        if self.windows and now < until:
            self.req.move_earlier(until, now, task)
            self.tok.move_earlier(until, now, task)

    def expire(self, now: float) -> None:
        self.recover(now)
        older = now - self.longest_s
        self.req.prune(older)
        self.tok.prune(older)
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
            and self.factor >= 1.0
            and self.blocked_until < now
            and now - self.last_used > max(IDLE_BUCKET_S, self.longest_s)
        )

    def snapshot(self, now: float) -> dict[str, Any]:
        rates = {}
        for field, metric, window, configured in self.windows:
            rates[field] = {
                "configured": configured,
                "effective": round(self.cap(metric, configured), 3),
                "used": self._log(metric).used(now, window),
            }
        out: dict[str, Any] = {"limit": self.spec.name, "key": self.key, "rates": rates}
        if self.spec.concurrent is not None:
            out["concurrent"] = {
                "configured": self.spec.concurrent,
                "effective": self.concurrency_cap(),
            }
        out.update(
            in_flight=self.group.in_use,
            waiting=len(self.pending),
            parked=self.group.parked,
            factor=round(self.factor, 4),
            rate_limited=self.rate_limited,
            last_rate_limited_s_ago=(
                None if self.last_429 == -math.inf else round(now - self.last_429, 3)
            ),
            paused_for_s=round(max(0.0, self.blocked_until - now), 3),
            admitted=self.admitted,
        )
        return out


class Ticket:
    """What an admitted step holds until it finishes."""

    __slots__ = ("buckets", "key_group", "released", "task", "tokens", "until")

    def __init__(
        self, task: TaskId, buckets: list[_Bucket], key_group: _Group | None, tokens: int
    ) -> None:
        self.task = task
        self.buckets = buckets
        self.key_group = key_group
        self.tokens = tokens
        self.until: list[float] = []  # per bucket: where its entry is until the step ends
        self.released = False


class Decision(NamedTuple):
    ticket: Ticket | None = None  # admitted
    wait_until: float = 0.0  # UNIX time it fits (a reservation is held)
    park: str | None = None  # park under this group


Unpark = tuple[str, int]  # (group name, how many)


class Limiter:
    """Every limit, bucket and parking group of one engine."""

    def __init__(
        self,
        specs: Iterable[config.LimitSpec] = (),
        *,
        key_cap: int = 0,
        key_caps: Mapping[str, int] | None = None,
    ) -> None:
        self.specs: dict[str, config.LimitSpec] = {}
        self.key_cap = 0
        self.key_caps: dict[str, int] = {}
        self._buckets: dict[tuple[str, str | None], _Bucket] = {}
        self._key_groups: dict[str, _Group] = {}
        self._outbox: list[Unpark] = []
        self._warned: set[str] = set()
        self.counters = {"limit_waits": 0, "limit_parks": 0, "rate_limited": 0}
        self.configure(specs, key_cap=key_cap, key_caps=key_caps or {}, now=time.time())

    @property
    def active(self) -> bool:
        return bool(self.specs or self.key_cap or self.key_caps or self._key_groups)

    # -- configuration --

    def configure(
        self,
        specs: Iterable[config.LimitSpec],
        *,
        key_cap: int | None = None,
        key_caps: Mapping[str, int] | None = None,
        now: float,
    ) -> None:
        """Apply new limits live: buckets keep their logs; parked tasks with room are unparked."""
        new = {s.name: s for s in specs}
        for (name, key), b in list(self._buckets.items()):
            spec = new.get(name)
            if spec is None:
                del self._buckets[(name, key)]
                if b.group.parked:
                    # The limit is gone: whatever waited on it may run.
                    self._outbox.append((b.group.name, max(b.group.parked, MAX_UNPARK_BATCH)))
                    b.group.parked = 0
            else:
                b.configure(spec)
        self.specs = new
        if key_cap is not None:
            self.key_cap = key_cap
        if key_caps is not None:
            self.key_caps = dict(key_caps)
        for k, g in self._key_groups.items():
            g.cap = self._cap_of(k)
        self._warned.clear()
        self.tick(now)

    def _cap_of(self, concurrency_key: str) -> int:
        return self.key_caps.get(concurrency_key, self.key_cap)

    def _bucket(self, name: str, key: str | None, now: float) -> _Bucket | None:
        b = self._buckets.get((name, key))
        if b is not None:
            return b
        spec = self.specs.get(name)
        if spec is None:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("limit %r is not configured ([limits.%s]): not limiting", name, name)
            return None
        b = self._buckets[(name, key)] = _Bucket(spec, key, now)
        return b

    def _key_group(self, concurrency_key: str | None) -> _Group | None:
        if concurrency_key is None:
            return None
        g = self._key_groups.get(concurrency_key)
        if g is None:
            cap = self._cap_of(concurrency_key)
            if cap <= 0:
                return None
            g = self._key_groups[concurrency_key] = _Group(f"key:{concurrency_key}", cap)
        # A cap lifted live (0: no cap) leaves the group only to unpark what it held.
        return g if g.cap > 0 else None

    # -- the engine's hooks --

    def acquire(
        self,
        task: TaskId,
        limits: Sequence[str],
        limit_key: str | None,
        concurrency_key: str | None,
        tokens: int,
        unparked: bool,
        now: float,
    ) -> Decision:
        """Admit the task, or say how long to wait or where to park (one atomic decision)."""
        buckets = [b for name in limits if (b := self._bucket(name, limit_key, now)) is not None]
        kg = self._key_group(concurrency_key)
        if unparked:
            for g in (kg, *(b.group for b in buckets)):
                if g is not None and g.on_the_way(now):
                    g.unparking.popleft()
        for b in buckets:
            b.recover(now)
            for _, metric, _, configured in b.windows:
                if metric == "tok" and tokens > configured:
                    raise CostTooHigh(
                        f"step cost {tokens} tokens is more than limit {b.label} allows in a"
                        f" whole window ({configured}): it can never run"
                    )
        # A task that waited already (parked, or holding a reservation) goes before newcomers.
        priority = unparked or any(task in b.pending for b in buckets)
        if kg is not None and not kg.has_room(kg.cap, priority, now):
            return self._park(kg, task, buckets, now)
        for b in buckets:
            cap = b.concurrency_cap()
            if cap and not b.group.has_room(cap, priority, now):
                return self._park(b.group, task, buckets, now)
        when, binding = now, None
        for b in buckets:
            if b.windows:
                t = b.fit(task, tokens, unparked, now)
                if t > when:
                    when, binding = t, b
        if binding is None:
            ticket = Ticket(task, buckets, kg, tokens)
            ticket.until = [b.admit(task, tokens, now) for b in buckets]
            if kg is not None:
                kg.in_use += 1
            return Decision(ticket)
        if when - now > HORIZON_S:
            return self._park(binding.group, task, buckets, now)
        for b in buckets:
            if b.windows:
                b.reserve(task, when, tokens)
        self.counters["limit_waits"] += 1
        return Decision(wait_until=when)

    def _park(self, g: _Group, task: TaskId, buckets: list[_Bucket], now: float) -> Decision:
        for b in buckets:
            b.unreserve(task)
        g.parked += 1
        g.last_park = now
        self.counters["limit_parks"] += 1
        return Decision(park=g.name)

    def release(self, ticket: Ticket, now: float) -> None:
        """The step finished: give back its concurrency and unpark whoever now has room."""
        if ticket.released:
            return
        ticket.released = True
        for b, until in zip(ticket.buckets, ticket.until, strict=True):
            b.settle(ticket.task, until, now)
            b.group.in_use -= 1
            self._unpark(b.group, now, b)
        if ticket.key_group is not None:
            ticket.key_group.in_use -= 1
            self._unpark(ticket.key_group, now, None)

    def rate_limited(self, ticket: Ticket | None, retry_after: float, now: float) -> float:
        """A step got a 429: slow its limits down; return when the step should run again."""
        not_before = now + retry_after
        if ticket is None or not ticket.buckets:
            return not_before
        self.counters["rate_limited"] += 1
        when = not_before
        for b in ticket.buckets:
            b.on_429(now, retry_after)
        for b in ticket.buckets:
            if b.windows:
                when = max(when, b.fit_plan(ticket.tokens, now))
        if when - now <= HORIZON_S:
            # A reservation keeps its place: 429'd steps come back staggered, not all at once.
            for b in ticket.buckets:
                if b.windows:
                    b.reserve(ticket.task, when, ticket.tokens)
        return when

    def _unpark(self, g: _Group, now: float, bucket: _Bucket | None) -> None:
        if g.parked <= 0:
            return
        room = MAX_UNPARK_BATCH
        cap = g.cap if bucket is None else bucket.concurrency_cap()
        if cap:
            room = min(room, cap - g.in_use - g.on_the_way(now))
        if bucket is not None and bucket.windows:
            room = min(room, bucket.openings(now) - g.on_the_way(now))
        n = min(g.parked, room)
        if n > 0:
            g.parked -= n
            g.unparking.extend([now + UNPARK_TTL_S] * n)
            self._outbox.append((g.name, n))

    def unpark_shortfall(self, group: str, missing: int, now: float) -> None:
        """Feedback from the database: an unpark found `missing` fewer parked tasks than asked."""
        g = self._group_named(group)
        if g is None:
            return
        for _ in range(min(missing, len(g.unparking))):
            g.unparking.pop()
        if now - g.last_park > 1.0:
            g.parked = 0  # the lot is empty: our count was too high (tasks deleted with runs)

    def reconcile(self, parked: Mapping[str, int], now: float) -> None:
        """Counts of parked tasks by group, read from the database (restarts, other engines)."""
        for name, count in parked.items():
            g = self._group_named(name)
            if g is None:
                # Nobody here waits on that group any more (limit removed, cap lifted).
                self._outbox.append((name, count))
                continue
            # A park younger than that may not be committed yet: only raise our count then.
            g.parked = count if now - g.last_park > 1.0 else max(g.parked, count)
        for g in self._groups():
            if g.name not in parked and now - g.last_park > 1.0:
                g.parked = 0

    def _group_named(self, name: str) -> _Group | None:
        kind, _, rest = name.partition(":")
        if kind == "key":
            return self._key_groups.get(rest)
        for b in self._buckets.values():
            if b.group.name == name:
                return b.group
        spec_name, _, key = rest.partition(":")
        b2 = self._bucket(spec_name, key or None, time.time()) if spec_name in self.specs else None
        return None if b2 is None else b2.group

    def _groups(self) -> list[_Group]:
        return [b.group for b in self._buckets.values()] + list(self._key_groups.values())

    def tick(self, now: float) -> None:
        """Housekeeping, a few times a second: expire old entries, unpark into new room."""
        for id_, b in list(self._buckets.items()):
            b.expire(now)
            if b.group.parked:
                self._unpark(b.group, now, b)
            elif b.key is not None and b.idle(now):
                del self._buckets[id_]
        for k, g in list(self._key_groups.items()):
            if g.parked:
                self._unpark(g, now, None)
            elif g.in_use == 0 and not g.on_the_way(now):
                del self._key_groups[k]

    def take_unparks(self) -> list[Unpark]:
        out, self._outbox = self._outbox, []
        return out

    def snapshot(self, now: float) -> dict[str, Any]:
        buckets = sorted(self._buckets.values(), key=lambda b: (b.key is not None, -b.last_used))
        seen = {b.spec.name for b in buckets}
        limits = [b.snapshot(now) for b in buckets[:MAX_SNAPSHOT_BUCKETS]]
        limits += [
            {"limit": name, "key": None, "idle": True}
            for name in sorted(self.specs)
            if name not in seen
        ]
        keys = [
            {"key": k, "cap": g.cap, "in_flight": g.in_use, "parked": g.parked}
            for k, g in sorted(self._key_groups.items())[:MAX_SNAPSHOT_BUCKETS]
        ]
        return {
            "limits": limits,
            "concurrency_keys": keys,
            "concurrency_key_cap": self.key_cap,
            **self.counters,
        }

    # -- the step-side of admission (async: it may sleep a moment in the slot) --

    async def admit(
        self, c: Claimed, st: registry.StepDef[Any, Any], args: list[Any]
    ) -> Ticket | Outcome | None:
        """Before running a claimed step: None (nothing to limit), a Ticket (run it, then
        `release`), or the RELEASE (wait or park) or DONE (can never fit) outcome to record."""
        if not st.limits and (c.concurrency_key is None or not self.active):
            return None
        task = (c.run_rid, c.pos)
        tokens = _cost(st, args)
        unparked = c.unparked
        for _ in range(1000):
            now = time.time()
            try:
                d = self.acquire(
                    task, st.limits, c.limit_key, c.concurrency_key, tokens, unparked, now
                )
            except CostTooHigh as exc:
                return Outcome(
                    OutcomeKind.DONE,
                    c.run_rid,
                    c.pos,
                    c.token,
                    StepState.FAILED,
                    error=errors.describe(exc),
                )
            if d.ticket is not None:
                return d.ticket
            if d.park is not None:
                return Outcome(
                    OutcomeKind.RELEASE, c.run_rid, c.pos, c.token, not_before=now, park=d.park
                )
            if d.wait_until - now > IN_SLOT_WAIT_S:
                return Outcome(
                    OutcomeKind.RELEASE, c.run_rid, c.pos, c.token, not_before=d.wait_until
                )
            await asyncio.sleep(max(0.0, d.wait_until - now))
            unparked = False
        return Outcome(OutcomeKind.RELEASE, c.run_rid, c.pos, c.token, not_before=time.time())


def _cost(st: registry.StepDef[Any, Any], args: list[Any]) -> int:
    if st.cost is None:
        return 0
    value = st.cost(*args)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise errors.ExecutorError(
            f"step {st.name}: cost() must return a number of tokens >= 0, got {value!r}"
        )
    if not math.isfinite(value):
        raise errors.ExecutorError(f"step {st.name}: cost() returned {value!r}")
    return math.ceil(value)


class WakeTimer:
    """Wakes the dispatcher when released tasks fall due, rather than at its next poll."""

    def __init__(self, wake: Callable[[set[int]], None]) -> None:
        self._wake = wake
        self._heap: list[tuple[float, int]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def at(self, when: float, shard: int) -> None:
        """Wake `shard`'s claims at UNIX time `when`."""
        heapq.heappush(self._heap, (when, shard))
        if when < self._armed_for:
            self._arm()

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._heap:
            self._armed_for = math.inf
            return
        self._armed_for = self._heap[0][0]
        # +1 ms: loop timers are rounded to the millisecond and may fire a hair early.
        delay = max(0.0, self._armed_for - time.time()) + 0.001
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = time.time()
        shards: set[int] = set()
        while self._heap and self._heap[0][0] <= now:
            shards.add(heapq.heappop(self._heap)[1])
        if shards:
            self._wake(shards)
        self._arm()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._heap.clear()
        self._armed_for = math.inf
