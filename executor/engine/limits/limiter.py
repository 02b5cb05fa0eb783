"""The limiter: every limit, bucket and parking group of one engine, and its decisions.

A step names the limits it draws on (`@step(limits=["anthropic"], cost=...)`); the engine asks
the `Limiter` before running it. The answer is one of:

    admit   the step runs now; its requests and tokens are recorded in every window
    wait    it fits at a known time within HORIZON_S: the task goes back to the queue with that
            not_before (a wait shorter than IN_SLOT_WAIT_S is slept in the slot instead)
    park    it cannot fit soon (a full concurrency cap, or an opening past the horizon): the task
            is parked in the database under a group name and holds nothing; it is unparked,
            oldest first, when its group has room again

A step that got a 429 (raised RateLimited) tells `rate_limited`, which slows its buckets down when
the 429 looks like the quota (adaptive.py) and gives the step a staggered place after the delay.

Everything here runs on the event loop without awaiting, except `admit`'s short in-slot sleep:
each decision is atomic. Limits are per process, which is per database, since one engine at a
time owns a database file.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from executor import config, errors, registry
from executor.engine.limits.bucket import (
    HORIZON_S,
    IN_SLOT_WAIT_S,
    MAX_UNPARK_BATCH,
    UNPARK_TTL_S,
    Bucket,
    Group,
)
from executor.engine.limits.window import TaskId
from executor.vocabulary import Claimed

log = logging.getLogger("executor.limits")

MAX_SNAPSHOT_BUCKETS = 200


class CostTooHigh(errors.ExecutorError):
    """A step's cost is more than its limit allows in a whole window: it can never run."""


def check_steps(steps: Iterable[registry.StepDef[Any, Any]], configured: Iterable[str]) -> None:
    """Refuse a step that draws on a limit that is not configured (a typo would otherwise run
    it unlimited), unless the step declared that limit optional."""
    names = sorted(configured)
    for st in steps:
        for name in st.limits:
            if name in names or name in st.optional_limits:
                continue
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            if close:
                hint = f"did you mean {close[0]!r}?"
            elif names:
                hint = "configured: " + ", ".join(repr(n) for n in names)
            else:
                hint = "no limit is configured"
            raise errors.ConfigError(
                f"step {st.name} draws on limit {name!r}, which is not configured ({hint});"
                f" add [limits.{name}] to the config, or declare it optional_limits=[{name!r}]"
            )


class Ticket:
    """What an admitted step holds until it finishes."""

    __slots__ = ("buckets", "key_group", "limited", "released", "task", "tokens", "until")

    def __init__(
        self, task: TaskId, buckets: list[Bucket], key_group: Group | None, tokens: int
    ) -> None:
        self.task = task
        self.buckets = buckets
        self.key_group = key_group
        self.tokens = tokens
        # Per bucket: where its entries are until the step ends (configured and pace logs).
        self.until: list[tuple[float, float]] = []
        self.released = False
        self.limited = False  # it got a 429


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
        self._buckets: dict[tuple[str, str | None], Bucket] = {}
        self._key_groups: dict[str, Group] = {}
        self._outbox: list[Unpark] = []
        self._warned: set[str] = set()
        self._optional: set[str] = set()  # limits steps declared optional: no warning
        self.counters = {
            "limit_waits": 0,
            "limit_parks": 0,
            "rate_limited": 0,
            "rate_limited_slowed": 0,
        }
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

    def check_steps(self, steps: Iterable[registry.StepDef[Any, Any]]) -> None:
        """Refuse steps naming unconfigured limits (see `check_steps`); remember the optional
        ones, so that running without them is not worth a warning."""
        steps = list(steps)
        check_steps(steps, self.specs)
        self._optional = {name for st in steps for name in st.optional_limits}

    def _cap_of(self, concurrency_key: str) -> int:
        return self.key_caps.get(concurrency_key, self.key_cap)

    def _bucket(self, name: str, key: str | None, now: float) -> Bucket | None:
        b = self._buckets.get((name, key))
        if b is not None:
            return b
        spec = self.specs.get(name)
        if spec is None:
            if name not in self._warned and name not in self._optional:
                self._warned.add(name)
                log.warning("limit %r is not configured ([limits.%s]): not limiting", name, name)
            return None
        b = self._buckets[(name, key)] = Bucket(spec, key, now)
        return b

    def _key_group(self, concurrency_key: str | None) -> Group | None:
        if concurrency_key is None:
            return None
        g = self._key_groups.get(concurrency_key)
        if g is None:
            cap = self._cap_of(concurrency_key)
            if cap <= 0:
                return None
            g = self._key_groups[concurrency_key] = Group(f"key:{concurrency_key}", cap)
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
            if not b.quick(tokens, now):
                break
            cap = b.concurrency_cap()
            if cap and not b.group.has_room(cap, unparked, now):
                break
        else:
            if kg is None or kg.has_room(kg.cap, unparked, now):
                return self._admit(task, buckets, kg, tokens, now, measure=False)
        for b in buckets:
            b.refresh(now)
            if tokens and b.tokens:
                for w in b.windows:
                    if w.metric == "tok" and not w.paced and tokens > w.quota:
                        raise CostTooHigh(
                            f"step cost {tokens} tokens is more than limit {b.label} allows in"
                            f" a whole window ({w.quota}): it can never run"
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
            return self._admit(task, buckets, kg, tokens, now, measure=True)
        if when - now > HORIZON_S:
            return self._park(binding.group, task, buckets, now)
        for b in buckets:
            if b.windows:
                b.reserve(task, when, tokens)
        self.counters["limit_waits"] += 1
        return Decision(wait_until=when)

    def _admit(
        self,
        task: TaskId,
        buckets: list[Bucket],
        kg: Group | None,
        tokens: int,
        now: float,
        *,
        measure: bool,
    ) -> Decision:
        ticket = Ticket(task, buckets, kg, tokens)
        ticket.until = [b.admit(task, tokens, now) for b in buckets]
        if measure:
            for b in buckets:
                b.measure(now)
        if kg is not None:
            kg.in_use += 1
        return Decision(ticket)

    def _park(self, g: Group, task: TaskId, buckets: list[Bucket], now: float) -> Decision:
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
            b.settle(ticket.tokens, until, now)
            if not ticket.limited:
                b.rate.answered()
            b.group.in_use -= 1
            self._unpark(b.group, now, b)
        if ticket.key_group is not None:
            ticket.key_group.in_use -= 1
            self._unpark(ticket.key_group, now, None)

    def rate_limited(self, ticket: Ticket | None, retry_after: float, now: float) -> float:
        """A step got a 429: slow its limits down if it looks like their quota (adaptive.py);
        return when the step should run again."""
        not_before = now + retry_after
        if ticket is None or not ticket.buckets:
            return not_before
        self.counters["rate_limited"] += 1
        when = not_before
        ticket.limited = True
        slowed = [b for b in ticket.buckets if b.on_429(now, retry_after)]
        if slowed:
            self.counters["rate_limited_slowed"] += 1
            for b in slowed:
                if b.rate.since == now:  # decreased just now: once per burst of 429s
                    log.warning(
                        "limit %s: rate limited by the server (429, %.0f%% of recent answers);"
                        " effective rate now %.0f%% of the configured rate, paused for %.2fs",
                        b.label,
                        100 * b.rate.share,
                        100 * b.f,
                        retry_after,
                    )
        else:
            # Sporadic: only this step waits; it holds no place that newcomers would queue behind.
            return not_before
        for b in ticket.buckets:
            if b.windows:
                when = max(when, b.fit_plan(ticket.tokens, now))
        if when - now <= HORIZON_S:
            # A reservation keeps its place: 429'd steps come back staggered, not all at once.
            for b in ticket.buckets:
                if b.windows:
                    b.reserve(ticket.task, when, ticket.tokens)
        return when

    def _unpark(self, g: Group, now: float, bucket: Bucket | None) -> None:
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

    def _group_named(self, name: str) -> Group | None:
        kind, _, rest = name.partition(":")
        if kind == "key":
            return self._key_groups.get(rest)
        for b in self._buckets.values():
            if b.group.name == name:
                return b.group
        spec_name, _, key = rest.partition(":")
        b2 = self._bucket(spec_name, key or None, time.time()) if spec_name in self.specs else None
        return None if b2 is None else b2.group

    def _groups(self) -> list[Group]:
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
    ) -> Decision | None:
        """Before running a claimed step: None (nothing to limit) or the decision, which the step
        runner acts on: run it with `ticket` (then `release`), or release the task to wait until
        `wait_until` or to park under `park`. CostTooHigh: it can never fit."""
        if not st.limits and (c.concurrency_key is None or not self.active):
            return None
        task = (c.run_rid, c.pos)
        tokens = _cost(st, args)
        unparked = c.unparked
        for _ in range(1000):
            now = time.time()
            d = self.acquire(task, st.limits, c.limit_key, c.concurrency_key, tokens, unparked, now)
            if d.ticket is not None or d.park is not None or d.wait_until - now > IN_SLOT_WAIT_S:
                return d
            await asyncio.sleep(max(0.0, d.wait_until - now))
            unparked = False
        return Decision(wait_until=time.time())


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
