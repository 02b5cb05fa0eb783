"""Limits: the limiter's decisions (on a clock we choose), a simulation checked window by window,
the engine with real SQLite (waiting holds no slot, concurrency keys, stats, live changes), the
[limits] config and the 429 helper."""

from __future__ import annotations

import asyncio
import bisect
import email.utils
import heapq
import io
import urllib.error
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executor import (
    Client,
    Engine,
    EngineConfig,
    Registry,
    RetryPolicy,
    errors,
    step,
    workflow,
)
from executor import config as config_mod
from executor.config import ConfigError, LimitSpec, load_config
from executor.engine import limits
from executor.engine.limits import CostTooHigh, Decision, Limiter, bucket, window
from executor.ratelimit import rate_limited_from, retry_after_s
from tests.support import engine as support
from tests.support.engine import database_config


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


W = 1.0 + window.WINDOW_MARGIN_S  # a per-second window as the limiter counts it
T0 = 1000.0


def admit(lim: Limiter, task: int, now: float, *, tokens: int = 0, **kw: Any) -> Decision:
    return lim.acquire(
        (task, 0),
        kw.get("names", ["api"]),
        kw.get("limit_key"),
        kw.get("concurrency_key"),
        tokens,
        kw.get("unparked", False),
        now,
    )


def admitted(d: Decision) -> limits.Ticket:
    assert d.ticket is not None, d
    return d.ticket


# --- the limiter's decisions ----------------------------------------------------------------------


def test_a_sliding_window_staggers_waiters_and_keeps_them_in_order() -> None:
    lim = Limiter([LimitSpec("api", requests_per_second=3)])
    for task, at in ((1, T0), (2, T0 + 0.2), (3, T0 + 0.4)):
        lim.release(admitted(admit(lim, task, at)), at)  # done at once: counts from `at`
    # The k-th waiter gets the k-th opening: when the k-th request leaves the window.
    waits = [admit(lim, task, T0 + 0.5).wait_until for task in (4, 5, 6)]
    assert waits == pytest.approx([T0 + W, T0 + 0.2 + W, T0 + 0.4 + W])
    # A newcomer queues behind them, even where the window alone would let it in sooner.
    assert admit(lim, 7, T0 + 0.5).wait_until == pytest.approx(T0 + 2 * W)
    # Back on time: in. Back early: it waits for its own turn, not someone else's.
    assert admit(lim, 4, T0 + W).ticket is not None
    assert admit(lim, 5, T0 + W).wait_until == pytest.approx(T0 + 0.2 + W)


def test_no_fixed_window_burst_at_the_edge() -> None:
    lim = Limiter([LimitSpec("api", requests_per_minute=2, pace=False)])
    lim.release(admitted(admit(lim, 1, T0 + 59.0)), T0 + 59.0)
    lim.release(admitted(admit(lim, 2, T0 + 59.5)), T0 + 59.5)
    # A fixed window starting at T0 + 60 would admit two more right away; a minute-long wait
    # parks instead, and the task comes back when the first request leaves the window.
    assert admit(lim, 3, T0 + 60.0).park == "limit:api"
    lim.tick(T0 + 100)
    assert lim.take_unparks() == []
    lim.tick(T0 + 118)
    assert lim.take_unparks() == [("limit:api", 1)]
    assert admit(lim, 3, T0 + 118, unparked=True).wait_until == pytest.approx(T0 + 119 + W - 1)


def test_a_request_counts_until_its_step_ends() -> None:
    # While its step runs, a request may not have reached the server yet. In the first window
    # after idling (cold connections) it counts as if it arrived up to a window late; once its
    # step ends, from then on; later (warm) at most 3% of a window late.
    running, ended = (Limiter([LimitSpec("api", requests_per_second=1)]) for _ in range(2))
    admitted(admit(running, 1, T0))
    ended.release(admitted(admit(ended, 1, T0)), T0 + 0.03)
    assert admit(running, 2, T0 + 0.03 + W).wait_until == pytest.approx(T0 + 2 * W)
    second = T0 + 0.03 + W
    assert admit(ended, 2, second).ticket is not None
    warm = bucket.SEND_DELAY_FRACTION * W
    assert admit(ended, 3, second + W).wait_until == pytest.approx(second + warm + W)


def test_tokens_are_drawn_by_cost_and_an_impossible_cost_fails() -> None:
    lim = Limiter([LimitSpec("api", tokens_per_second=1000)])
    lim.release(admitted(admit(lim, 1, T0, tokens=600)), T0)
    assert admit(lim, 3, T0, tokens=0).ticket is not None  # a step without cost draws none
    assert admit(lim, 2, T0, tokens=500).wait_until == pytest.approx(T0 + W)
    with pytest.raises(CostTooHigh, match="1001 tokens"):
        admit(lim, 4, T0, tokens=1001)


def test_waits_past_the_horizon_park_and_come_back_as_room_opens() -> None:
    lim = Limiter([LimitSpec("api", requests_per_second=1)])
    lim.release(admitted(admit(lim, 1, T0)), T0)
    assert admit(lim, 2, T0).wait_until == pytest.approx(T0 + W)
    assert admit(lim, 3, T0).park == "limit:api"  # 2 windows away: past the horizon
    assert admit(lim, 4, T0).park == "limit:api"  # behind the parked one, not ahead of it
    lim.tick(T0 + 0.5)
    assert lim.take_unparks() == [("limit:api", 1)]  # the next opening is near enough now
    # An unparked task goes first; it gets the opening after the reserved one.
    assert admit(lim, 3, T0 + 0.5, unparked=True).wait_until == pytest.approx(T0 + 2 * W)


def test_concurrency_parks_and_a_finished_step_unparks_the_next() -> None:
    lim = Limiter([LimitSpec("api", concurrent=2)])
    first = admitted(admit(lim, 1, T0))
    admitted(admit(lim, 2, T0))
    assert admit(lim, 3, T0).park == "limit:api"
    lim.release(first, T0 + 1)
    assert lim.take_unparks() == [("limit:api", 1)]
    assert admit(lim, 4, T0 + 1).park == "limit:api"  # the room is held for the unparked one
    assert admit(lim, 3, T0 + 1, unparked=True).ticket is not None


def test_concurrency_keys_have_a_default_cap_and_overrides() -> None:
    lim = Limiter(key_cap=1, key_caps={"vip": 2, "free": 0})
    a = admitted(admit(lim, 1, T0, names=[], concurrency_key="t1"))
    assert admit(lim, 2, T0, names=[], concurrency_key="t1").park == "key:t1"
    assert admit(lim, 3, T0, names=[], concurrency_key="t2").ticket is not None
    assert admit(lim, 4, T0, names=[], concurrency_key="vip").ticket is not None
    assert admit(lim, 5, T0, names=[], concurrency_key="vip").ticket is not None
    assert admit(lim, 6, T0, names=[], concurrency_key="vip").park == "key:vip"
    for task in range(7, 12):  # 0: no cap
        assert admit(lim, task, T0, names=[], concurrency_key="free").ticket is not None
    lim.release(a, T0)
    assert lim.take_unparks() == [("key:t1", 1)]


def test_limit_keys_get_their_own_budgets() -> None:
    lim = Limiter([LimitSpec("api", requests_per_second=1)])
    assert admit(lim, 1, T0, limit_key="a").ticket is not None
    assert admit(lim, 2, T0, limit_key="b").ticket is not None
    assert admit(lim, 3, T0, limit_key="a").ticket is None
    keys = {(s["limit"], s["key"]) for s in lim.snapshot(T0)["limits"]}
    assert keys == {("api", "a"), ("api", "b")}


def factor(lim: Limiter, now: float) -> float:
    return float(lim.snapshot(now)["limits"][0]["factor"])


def test_a_429_that_means_the_quota_slows_the_key_pauses_it_and_it_recovers_linearly() -> None:
    # tolerance=0: every 429 means the quota (the default waits for 10% of answers to be 429s).
    spec = LimitSpec("api", requests_per_second=10, backoff=0.5, recovery_s=10.0, tolerance=0)
    lim = Limiter([spec])
    tickets = [admitted(admit(lim, i, T0)) for i in range(9)]
    not_before = lim.rate_limited(tickets[0], 0.5, T0)
    for t in tickets:
        lim.release(t, T0)
    assert not_before >= T0 + 0.5  # the Retry-After, or later: 9 already ran at a rate of 5
    (snap,) = lim.snapshot(T0)["limits"]
    assert snap["factor"] == 0.5 and snap["rate_limited"] == 1
    assert snap["rates"]["requests_per_second"]["effective"] == 5
    assert admit(lim, 20, T0 + 0.1).wait_until >= T0 + 0.5  # the key is paused
    # After a second's cooldown, back linearly from the floor (0.25) to 1 in recovery_s.
    assert factor(lim, T0 + 1.0) == 0.5
    assert factor(lim, T0 + 1.0 + 5.0) == pytest.approx(0.5 + 0.75 / 2)
    assert factor(lim, T0 + 1.0 + 10.0) == 1.0


def test_sporadic_429s_far_from_the_quota_barely_move_the_rate() -> None:
    lim = Limiter([LimitSpec("api", requests_per_second=1000)])
    now = T0
    for i in range(2000):  # 3% of answers are 429s, at a third of the quota
        now += 1 / 300
        ticket = admitted(admit(lim, i, now))
        if i % 33 == 0:
            assert lim.rate_limited(ticket, 2.0, now) == pytest.approx(now + 2.0)
        lim.release(ticket, now)
        assert factor(lim, now) == 1.0
    (snap,) = lim.snapshot(now)["limits"]
    assert snap["paused_for_s"] == 0 and snap["rate_limited"] == 61


def test_a_run_of_429s_far_from_the_quota_slows_down_but_never_below_the_floor() -> None:
    # A key shared with other clients: the provider refuses most of our requests, however
    # far we are from our own quota.
    lim = Limiter([LimitSpec("api", requests_per_second=1000, floor=0.4, backoff=0.5)])
    now = T0
    for i in range(3000):
        now += 0.01
        ticket = admitted(admit(lim, i, now))
        lim.rate_limited(ticket, 0.001, now)
        lim.release(ticket, now)
    assert factor(lim, now) == pytest.approx(0.4)
    assert lim.snapshot(now)["rate_limited_slowed"] >= 20


def test_adaptive_settings_are_checked_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "executor.toml"
    path.write_text("[limits.api]\nrequests_per_minute = 60\nbackoff = 1.5\n")
    with pytest.raises(ConfigError, match=r"limits.api.backoff: .*\(0, 1\)"):
        load_config(path, {})
    path.write_text(
        "[limits.api]\nrequests_per_hour = 60\nbackoff = 0.8\nfloor = 0.5\n"
        "recovery_s = 30\ntolerance = 0\npace = false\n"
    )
    (spec,) = load_config(path, {}).config.limits
    assert spec == LimitSpec(
        "api",
        requests_per_hour=60,
        backoff=0.8,
        floor=0.5,
        recovery_s=30.0,
        tolerance=0.0,
        pace=False,
    )


def test_a_per_minute_quota_is_paced_evenly_and_keeps_its_window() -> None:
    lim = Limiter([LimitSpec("api", requests_per_minute=600)])  # 10 a second
    times, now, i = [], T0, 0
    while now < T0 + 130:
        d = admit(lim, i, now)
        if d.ticket is not None:
            times.append(now)
            lim.release(d.ticket, now + 0.01)
            i += 1
        now = max(now + 0.001, min(d.wait_until or now + 0.05, now + 0.05))
        lim.tick(now)
        lim.take_unparks()
    # Never more than a second's share in any second: no burst of the whole minute's quota.
    for k, t in enumerate(times):
        assert bisect.bisect_left(times, t + 1.0) - k <= 10
        assert bisect.bisect_left(times, t + 60.0) - k <= 600
    # And the quota is spent, not just respected: close to 10 a second throughout.
    assert len(times) >= 0.95 * 130 * 10


def test_limits_change_live() -> None:
    lim = Limiter([LimitSpec("api", concurrent=1), LimitSpec("other", concurrent=1)])
    admitted(admit(lim, 1, T0))
    assert admit(lim, 2, T0).park == "limit:api"
    admitted(admit(lim, 3, T0, names=["other"]))
    assert admit(lim, 4, T0, names=["other"]).park == "limit:other"
    lim.configure([LimitSpec("api", concurrent=2)], now=T0 + 1)
    # More room for api; other is gone, so whatever waited on it may run.
    unparks = dict(lim.take_unparks())
    assert unparks["limit:api"] == 1 and unparks["limit:other"] >= 1
    assert admit(lim, 4, T0 + 1, names=["other"]).ticket is not None


def test_unknown_limits_do_not_limit() -> None:
    lim = Limiter()
    for task in range(100):
        assert admit(lim, task, T0, names=["nowhere"]).ticket is not None


# --- a simulation, checked over every window ----------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rps=st.integers(1, 8),
    tps=st.one_of(st.none(), st.integers(300, 1000)),
    concurrent=st.one_of(st.none(), st.integers(1, 4)),
    tasks=st.lists(
        st.tuples(
            st.floats(0, 3),  # arrives at
            st.integers(0, 300),  # tokens
            st.floats(0.0, 0.5),  # latency of the step
            st.floats(0.0, 1.0),  # when within it the request reaches the server
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_simulated_traffic_never_exceeds_any_window(
    rps: int,
    tps: int | None,
    concurrent: int | None,
    tasks: list[tuple[float, int, float, float]],
) -> None:
    spec = LimitSpec("api", requests_per_second=rps, tokens_per_second=tps, concurrent=concurrent)
    lim = Limiter([spec])
    delay = min(bucket.SEND_DELAY_MAX_S, bucket.SEND_DELAY_FRACTION)
    events: list[tuple[float, int, str, Any]] = []  # (time, seq, what, data)
    seq = 0

    def at(t: float, what: str, data: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, what, data))

    for i, (t, *_) in enumerate(tasks):
        at(T0 + t, "try", (i, False))
    parked: dict[str, list[int]] = {}
    arrivals: list[tuple[float, int]] = []
    running = 0
    done = 0
    while events:
        now, _, what, data = heapq.heappop(events)
        if what == "end":
            running -= 1
            lim.release(data, now)
            done += 1
        elif what == "try":
            i, unparked = data
            _, tokens, latency, when = tasks[i]
            d = lim.acquire((i, 0), ["api"], None, None, tokens, unparked, now)
            if d.ticket is not None:
                running += 1
                assert concurrent is None or running <= concurrent
                # The request reaches the server within min(latency, send delay) of admission.
                arrivals.append((now + min(latency, delay) * when, tokens))
                at(now + latency, "end", d.ticket)
            elif d.park is not None:
                parked.setdefault(d.park, []).append(i)
            else:
                at(d.wait_until, "try", (i, False))
        lim.tick(now)
        for group, n in lim.take_unparks():
            waiting = sorted(parked.get(group, []))
            for i in waiting[:n]:
                at(now + 0.001, "try", (i, True))
            parked[group] = waiting[n:]
        if not events and any(parked.values()):
            at(now + 0.05, "tick", None)  # let time pass for parked rate waiters
    assert done == len(tasks)
    arrivals.sort()
    times = [a for a, _ in arrivals]
    for i, t in enumerate(times):
        j = bisect.bisect_left(times, t + 1.0)
        assert j - i <= rps
        if tps is not None:
            assert sum(n for _, n in arrivals[i:j]) <= tps


@settings(max_examples=30, deadline=None)
@given(
    rpm=st.integers(30, 600),
    tasks=st.lists(
        st.tuples(
            st.floats(0, 90),  # arrives at
            st.floats(0.0, 3.0),  # latency of the step
            st.floats(0.0, 1.0),  # when within it the request reaches the server
        ),
        min_size=1,
        max_size=150,
    ),
)
def test_simulated_paced_minutes_never_exceed_the_minute_or_the_pace(
    rpm: int, tasks: list[tuple[float, float, float]]
) -> None:
    # Requests reach the server within min(latency, the pace's send delay) of admission (the
    # tighter of the two bounds the limiter assumes); the server's log is checked over every
    # minute and every pace sub-window that starts at an arrival.
    lim = Limiter([LimitSpec("api", requests_per_minute=rpm)])
    share = -(-rpm // 60)
    sub = 60.0 * share / rpm
    delay = window.PACE_SEND_DELAY * (sub + window.WINDOW_MARGIN_S)
    events: list[tuple[float, int, str, Any]] = []
    seq = 0

    def at(t: float, what: str, data: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, what, data))

    for i, (t, *_) in enumerate(tasks):
        at(T0 + t, "try", (i, False))
    parked: list[int] = []
    arrivals: list[float] = []
    done = 0
    while events:
        now, _, what, data = heapq.heappop(events)
        if what == "end":
            lim.release(data, now)
            done += 1
        elif what == "try":
            i, unparked = data
            _, latency, when = tasks[i]
            d = lim.acquire((i, 0), ["api"], None, None, 0, unparked, now)
            if d.ticket is not None:
                arrivals.append(now + min(latency, delay) * when)
                at(now + latency, "end", d.ticket)
            elif d.park is not None:
                parked.append(i)
            else:
                at(d.wait_until, "try", (i, False))
        lim.tick(now)
        for _, n in lim.take_unparks():
            parked.sort()
            for i in parked[:n]:
                at(now + 0.001, "try", (i, True))
            del parked[:n]
        if not events and parked:
            at(now + 0.25, "tick", None)
    assert done == len(tasks)
    arrivals.sort()
    for k, t in enumerate(arrivals):
        assert bisect.bisect_left(arrivals, t + 60.0) - k <= rpm
        assert bisect.bisect_left(arrivals, t + sub) - k <= share


# --- the engine, with real SQLite -----------------------------------------------------------------

REG = Registry()
gates: dict[str, asyncio.Event] = {}
started: list[tuple[str, int]] = []
in_flight: dict[str, int] = {}
most_in_flight: dict[str, int] = {}


@step(limits=["slow"], retry=RetryPolicy(max_attempts=1), registry=REG)
async def limited(i: int) -> int:
    return i


@step(registry=REG)
async def free(i: int) -> int:
    return i


@step(registry=REG)
async def tenant_work(key: str, i: int) -> int:
    started.append((key, i))
    in_flight[key] = in_flight.get(key, 0) + 1
    most_in_flight[key] = max(most_in_flight.get(key, 0), in_flight[key])
    try:
        gate = gates.get(key)
        if gate is not None:
            await gate.wait()
    finally:
        in_flight[key] -= 1
    return i


@step(limits=["api"], registry=REG)
async def gated(i: int) -> int:
    await gates["api"].wait()
    return i


@workflow(registry=REG)
async def call(ctx: Any, which: str, i: int) -> int:
    fn = {"limited": limited, "free": free, "gated": gated}[which]
    return int(await ctx.step(fn, i))


@workflow(registry=REG)
async def tenant(ctx: Any, key: str, i: int) -> int:
    return int(await ctx.step(tenant_work, key, i))


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    gates.clear()
    started.clear()
    in_flight.clear()
    most_in_flight.clear()


def make_engine(database: Path | str, **kw: Any) -> Engine:
    # Every limit REG's steps name must be configured (an empty table declares it, no quota).
    given = list(kw.pop("limits", []))
    names = {s.name for s in given}
    kw["limits"] = given + [LimitSpec(n) for n in ("slow", "api") if n not in names]
    settings_ = {
        "shards": 1,
        "poll_interval_s": 0.02,
        "lease_s": 1.0,
        "concurrency": kw.pop("concurrency", 2),
        "concurrency_key_cap": kw.pop("key_cap", 0),
    }
    return support.make_engine(REG, database, **settings_, **kw)


@pytest.mark.anyio
async def test_a_waiting_task_holds_no_slot(database: Path | str) -> None:
    # Two slots; rate-limited steps that wait seconds must not keep the free steps out.
    limit = LimitSpec("slow", requests_per_second=2)
    async with make_engine(database, limits=[limit]), Client(database, reg=REG) as c:
        slow = await c.start_many(call, [["limited", i] for i in range(6)])
        fast = await c.start_many(call, [["free", i] for i in range(30)])
        assert [await c.result(r, timeout=10) for r in fast] == list(range(30))
        finished = [(await c.status(r)).finished for r in slow]
        assert finished.count(True) <= 2  # the rest still wait for the next second
        # max_attempts=1: waiting used no attempt.
        assert [await c.result(r, timeout=10) for r in slow] == list(range(6))


@pytest.mark.anyio
async def test_a_key_at_its_cap_does_not_block_other_keys(
    database: Path | str, wait_until: Any
) -> None:
    gates["hot"] = asyncio.Event()
    eng = make_engine(database, concurrency=4, concurrency_keys={"hot": 2}, key_cap=0)
    async with eng, Client(database, reg=REG) as c:
        hot = await c.start_many(
            tenant, [["hot", i] for i in range(200)], concurrency_keys=["hot"] * 200
        )
        others = await c.start_many(
            tenant,
            [[f"t{i}", i] for i in range(20)],
            concurrency_keys=[f"t{i}" for i in range(20)],
        )
        # The hot key's backlog is older, yet every other key's work gets through.
        assert [await c.result(r, timeout=10) for r in others] == list(range(20))
        assert in_flight["hot"] == 2
        assert not any([(await c.status(r)).finished for r in hot])
        stats = await c.stats()
        assert sum(s["parked"] for s in stats["shards"].values()) > 0
        gates["hot"].set()
        assert [await c.result(r, timeout=20) for r in hot] == list(range(200))
    assert most_in_flight["hot"] == 2
    # Oldest first within the key: parked tasks are unparked in the order they were started.
    assert [i for key, i in started if key == "hot"] == list(range(200))


@pytest.mark.anyio
async def test_limits_change_live_and_show_in_stats(database: Path | str, wait_until: Any) -> None:
    gates["api"] = asyncio.Event()
    eng = make_engine(database, concurrency=8, limits=[LimitSpec("api", concurrent=1)])
    async with eng, Client(database, reg=REG) as c:
        runs = await c.start_many(call, [["gated", i] for i in range(4)])

        def api_state(snapshot: dict[str, Any]) -> dict[str, Any]:
            (state,) = [s for s in snapshot["limits"] if s["limit"] == "api"]
            return state

        await wait_until(lambda: api_state(eng.limits_snapshot()).get("parked") == 3, "3 parked")
        # `executor stats` reads what the engine stored, from another connection.
        stored = await wait_until(lambda: stats_limits(c), "the limits snapshot in the database")
        assert stored["parked"] == 3 and stored["concurrent"] == {"configured": 1, "effective": 1}
        eng.set_limits([LimitSpec("api", concurrent=4)])
        await wait_until(lambda: api_state(eng.limits_snapshot())["in_flight"] == 4, "4 running")
        gates["api"].set()
        assert [await c.result(r, timeout=10) for r in runs] == list(range(4))


async def stats_limits(c: Client) -> dict[str, Any] | None:
    stats = await c.stats()
    for engine_state in stats["limits"]:
        for state in engine_state["limits"]:
            if state["limit"] == "api" and state.get("in_flight") == 1:
                return dict(state)
    return None


# --- @step, ctx.step and Client arguments --------------------------------------------------------


def test_step_limits_and_cost_are_checked() -> None:
    reg = Registry()
    with pytest.raises(errors.RegistryError, match="list of limit names"):
        step(limits="api", registry=reg)  # type: ignore[arg-type]
    with pytest.raises(errors.RegistryError, match="name them with limits"):
        step(cost=lambda: 1, registry=reg)
    with pytest.raises(errors.RegistryError, match="function of the arguments"):
        step(limits=["api"], cost=5, registry=reg)  # type: ignore[arg-type]

    @step(limits=["api", "api", "org"], cost=lambda prompt: len(prompt), registry=reg)
    def llm(prompt: str) -> str:
        return prompt

    assert llm.limits == ("api", "org") and llm.cost is not None and llm.cost("abc") == 3


@pytest.mark.anyio
async def test_a_step_naming_an_unconfigured_limit_is_refused_at_start(
    database: Path | str,
) -> None:
    reg = Registry()

    @step(limits=["anthropc"], registry=reg)  # a typo of "anthropic"
    async def complete(prompt: str) -> str:
        return prompt

    @step(limits=["anthropic"], optional_limits=["audit"], registry=reg)
    async def audited(prompt: str) -> str:
        return prompt

    assert audited.limits == ("anthropic", "audit") and audited.optional_limits == ("audit",)
    specs = [LimitSpec("anthropic", requests_per_minute=4000), LimitSpec("search")]
    engine = Engine(EngineConfig(), database_config(database), reg=reg, limits=specs)
    with pytest.raises(ConfigError) as refused:
        await engine.start()
    message = str(refused.value)
    assert "\n" not in message
    assert f"step {complete.name} draws on limit 'anthropc'" in message
    assert "did you mean 'anthropic'?" in message
    if not support.is_postgres(database):
        path = Path(database)
        assert path.name not in [p.name for p in path.parent.iterdir()]  # untouched
    # Declared optional (and no typo elsewhere), the step runs unlimited without the limit.
    del reg.steps[complete.name]
    async with Engine(EngineConfig(), database_config(database), reg=reg, limits=specs[:1]):
        pass


@pytest.mark.anyio
async def test_concurrency_key_must_be_a_string(database: Path | str) -> None:
    async with Client(database, reg=REG) as c:
        with pytest.raises(errors.ExecutorError, match="concurrency_key must not be empty"):
            await c.start(call, "free", 1, concurrency_key="")
        with pytest.raises(errors.ExecutorError, match="concurrency_key must be"):
            await c.start_many(call, [["free", 1]], concurrency_keys=[7])  # type: ignore[list-item]


# --- [limits] and [concurrency_keys] in the config ----------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_limits_load_merge_render_and_reload_live(tmp_path: Path) -> None:
    base = write(
        tmp_path / "executor.toml",
        "[limits.anthropic]\nrequests_per_minute = 4000\ntokens_per_minute = 400000\n"
        '[engine]\nconcurrency_key_cap = 3\n[concurrency_keys]\n"tenant-42" = 5\n',
    )
    dropin = write(
        tmp_path / "executor.d" / "50-limits.toml",
        "[limits.anthropic]\nconcurrent = 200\n[limits.search]\nrequests_per_second = 10\n",
    )
    loaded = load_config(base, env={})
    cfg = loaded.config
    assert cfg.limits == (
        LimitSpec("anthropic", requests_per_minute=4000, tokens_per_minute=400000, concurrent=200),
        LimitSpec("search", requests_per_second=10),
    )
    assert cfg.concurrency_keys == (("tenant-42", 5),)
    assert cfg.engine.concurrency_key_cap == 3
    assert loaded.sources["limits.anthropic.concurrent"] == str(dropin)
    assert loaded.sources["limits.anthropic.requests_per_minute"] == str(base)
    rendered = write(tmp_path / "rendered" / "r.toml", config_mod.render_config(loaded))
    assert load_config(rendered, env={}).config == cfg
    live, restart = config_mod.diff_live(config_mod.Config(), cfg)
    assert restart == []
    assert live == [
        "engine.concurrency_key_cap",
        "limits.anthropic",
        "limits.search",
        "concurrency_keys",
    ]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[limits.a]\nrpm = 5\n",
            "limits.a.rpm: unknown key (did you mean limits.a.requests_per_minute?)",
        ),
        (
            "[limits.a]\nrequests_per_second = 0\n",
            "limits.a.requests_per_second: expected an integer from 1",
        ),
        (
            "[limits.a]\ntokens_per_minute = 1.5\n",
            "limits.a.tokens_per_minute: expected an integer",
        ),
        ("[limits.a]\nconcurrent = true\n", "limits.a.concurrent: expected an integer"),
        ("[limits]\na = 5\n", "limits.a: expected a table [limits.a] with any of"),
        ('[limits."a.b"]\n', 'limits."a.b": a limit name may only hold letters, digits, _ and -'),
        ("limits = 5\n", "limits: expected tables like [limits.NAME]"),
        ('[concurrency_keys]\n"t" = -1\n', "concurrency_keys.t: expected an integer from 0 to"),
        ('[concurrency_keys]\n"" = 1\n', 'concurrency_keys."": a concurrency key cannot be empty'),
        ("[engine]\nconcurrency_key_cap = -1\n", "engine.concurrency_key_cap: expected an integer"),
    ],
)
def test_bad_limits_name_file_and_key(tmp_path: Path, toml: str, message: str) -> None:
    path = write(tmp_path / "executor.toml", toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.message.startswith(f"{path}: {message}"), info.value.message


# --- the 429 helper ----------------------------------------------------------------------------


def http_error(status: int, **headers: str) -> urllib.error.HTTPError:
    msg = Message()
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    return urllib.error.HTTPError("http://api.test/v1", status, "x", msg, io.BytesIO(b""))


class Response:
    """The shape of a requests/httpx response: status_code and a headers mapping."""

    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers


class SdkError(Exception):
    """The shape of an SDK's RateLimitError: the response on the exception."""

    def __init__(self, response: Response) -> None:
        super().__init__("rate limited")
        self.response = response


def test_429_responses_and_errors_become_rate_limited() -> None:
    with http_error(429, Retry_After="7") as exc:
        limited = rate_limited_from(exc)
    assert isinstance(limited, errors.RateLimited) and limited.retry_after == 7
    with http_error(500, Retry_After="7") as exc:
        assert rate_limited_from(exc) is None
    assert rate_limited_from(Response(200, {"retry-after": "3"})) is None
    got = rate_limited_from(SdkError(Response(429, {"x-ratelimit-reset-requests": "6m0s"})))
    assert got is not None and got.retry_after == 360
    default = rate_limited_from(Response(429, {}))
    assert default is not None and default.retry_after == 1.0 and "no delay given" in str(default)
    assert rate_limited_from(object()) is None


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "2.5"}, 2.5),
        ({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "1m30.5s"}, 90.5),
        ({"x-ratelimit-reset-tokens": "250ms"}, 0.25),
        # The exhausted resource's reset, not a distant one of a resource with room left.
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "5000",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            2.0,
        ),
        (
            {
                "x-ratelimit-remaining-requests": "10",
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-remaining-tokens": "5000",
                "x-ratelimit-reset-tokens": "6m0s",
            },
            2.0,
        ),
        ({"retry-after": "1", "retry-after-ms": "250"}, 0.25),
        ({"X-RateLimit-Reset": str(int(NOW + 12))}, 12.0),
        ({"X-RateLimit-Reset": "4"}, 4.0),
        ({"anthropic-ratelimit-requests-reset": "2023-11-14T22:13:40Z"}, 20.0),
        ({"Retry-After": "-5"}, 0.0),
        ({"content-type": "text/plain"}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_s(headers, now=NOW) == seconds
