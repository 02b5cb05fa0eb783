"""Limits against a real HTTP API: benchmarks/quota_server.py, a provider in its own process.

The server's own log is the referee: request and token counts are checked over every window
that starts at an arrival (the windows where a count can be highest), and throughput is the
rate the server accepted. Steps call it through a shared keep-alive client (executor.resources).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from benchmarks.quota_server import (
    ApiClient,
    Arrival,
    QuotaServer,
    Window,
    most_in_any_window,
    sustained_rate,
)
from executor import (
    Client,
    Engine,
    Registry,
    RetryPolicy,
    WorkflowFailed,
    resources,
    step,
    workflow,
)
from executor.config import LimitSpec
from executor.ratelimit import rate_limited_from
from tests.support.cpu import CpuStall
from tests.support.engine import make_engine

pytestmark = pytest.mark.anyio

DEADLINE_S = 60.0
# A measurement during which some task waited for a CPU this share of the time or more was
# starved: the rates it saw are the machine's, not the limiter's (see tests/support/cpu.py).
STARVED = 0.10

T = TypeVar("T")


@pytest.fixture(autouse=True)
def fresh_clients() -> Iterator[None]:
    ApiClient.made.clear()
    yield
    ApiClient.made.clear()


REG = Registry()


# max_attempts=1: any attempt used by waiting or by a 429 would fail the run.
@step(
    limits=["api"],
    cost=lambda port, key, tokens: tokens,
    retry=RetryPolicy(max_attempts=1),
    registry=REG,
)
async def complete(port: int, key: str, tokens: int) -> int:
    async with resources.use(ApiClient, port=port, api_key=key) as client:
        reply = await client.post("/v1/complete", {"tokens": tokens})
    if (limited := rate_limited_from(reply)) is not None:
        raise limited
    if reply.status != 200:
        raise RuntimeError(f"HTTP {reply.status}")
    return tokens


@workflow(registry=REG)
async def one_call(ctx: Any, port: int, key: str, tokens: int, per_key: bool) -> int:
    return await ctx.step(complete, port, key, tokens, limit_key=key if per_key else None)


@pytest.fixture
async def client(db_path: Path) -> AsyncIterator[Client]:
    async with Client(db_path, reg=REG, shards=2) as c:
        yield c


def engine(db_path: Path, *limits: LimitSpec, **settings: Any) -> Engine:
    settings = {"concurrency": 16, "poll_interval_s": 0.05, "lease_s": 1.0, **settings}
    return make_engine(REG, db_path, limits=limits, **settings)


async def run_all(client: Client, args: list[list[Any]]) -> list[Any]:
    ids = await client.start_many(one_call, args)
    return [await client.result(run_id, timeout=DEADLINE_S) for run_id in ids]


async def measured(measure: Callable[[], Awaitable[T]], good: Callable[[T], bool]) -> T:
    """`measure()`, taken once more if and only if it missed (`good` is false) while the machine
    was starved of CPU. The caller asserts on what is returned, so a miss on a machine that let
    the test run, or two misses, still fail."""
    with CpuStall() as stall:
        value = await measure()
    if good(value) or stall.share < STARVED:
        return value
    print(f"missed while starved ({stall.share:.0%} of the time waiting for a CPU); once more")
    return await measure()


def accepted(log: list[Arrival], key: str | None = None) -> list[Arrival]:
    return [a for a in log if a.status == 200 and (key is None or a.key == key)]


# --- tests --------------------------------------------------------------------------------------


async def test_request_and_token_rates_are_never_exceeded_over_any_window(db_path: Path) -> None:
    limit = LimitSpec("api", requests_per_second=20, tokens_per_second=2000)
    tokens = [50 + (i * 37) % 201 for i in range(36)]  # 50 to 250: either budget can bind
    attempt = 0

    async def measure() -> tuple[list[Any], list[Arrival]]:
        # The server referees arrivals, not sends: on a machine starved of CPU, requests the
        # limiter spaced can reach it bunched and be refused (and retried). So a miss is
        # measured once more if, and only if, the machine was starved; the assertions below
        # are the same either way.
        nonlocal attempt
        attempt += 1
        path = db_path.with_name(f"{attempt}.sqlite")
        ApiClient.made.clear()
        async with QuotaServer.running([Window(1.0, 20, 2000)]) as server:
            async with engine(path, limit), Client(path, reg=REG, shards=2) as c:
                ids = await c.start_many(one_call, [[server.port, "k", n, False] for n in tokens])
                results: list[Any] = []
                for run_id in ids:
                    try:
                        results.append(await c.result(run_id, timeout=DEADLINE_S))
                    except WorkflowFailed as failed:
                        results.append(failed)
            return results, await server.log()

    def good(measurement: tuple[list[Any], list[Arrival]]) -> bool:
        results, log = measurement
        return (
            results == tokens
            and len(log) == len(tokens)
            and {a.status for a in log} == {200}
            and most_in_any_window(log, 1.0) <= 20
            and most_in_any_window(log, 1.0, tokens=True) <= 2000
        )

    results, log = await measured(measure, good)
    assert results == tokens
    assert len(log) == len(tokens) and {a.status for a in log} == {200}
    assert most_in_any_window(log, 1.0) <= 20
    assert most_in_any_window(log, 1.0, tokens=True) <= 2000
    # The budget was used, not just respected: some second was full to within one request.
    assert most_in_any_window(log, 1.0, tokens=True) > 2000 - 250 or (
        most_in_any_window(log, 1.0) == 20
    )
    # One shared client served every call over a few kept-alive connections, closed on drain.
    (api,) = ApiClient.made
    assert api.closed and api.connections < len(tokens)


async def test_a_per_minute_quota_alone_sustains_a_provider_that_enforces_it_per_second(
    db_path: Path, client: Client
) -> None:
    # The LLM case of issue 14: only requests_per_minute configured, against a provider that
    # enforces the same quota per second too. Paced, it is spent evenly: no burst of the whole
    # minute's quota refused by the per-second window, no collapse of the adaptive rate.
    rpm, seconds = 6000, 4.0
    calls = int(rpm / 60 * (seconds + 1))
    windows = [Window(60.0, rpm), Window(1.0, rpm // 60)]

    attempt = 0

    async def measure() -> list[Arrival]:
        nonlocal attempt
        attempt += 1
        path = db_path.with_name(f"{attempt}.sqlite")
        async with QuotaServer.running(windows, latency_ms=20) as server:
            limit = LimitSpec("api", requests_per_minute=rpm)
            async with engine(path, limit, concurrency=50), Client(path, reg=REG, shards=2) as c:
                await run_all(c, [[server.port, "k", 1, False]] * calls)
            return await server.log()

    log = await measured(
        measure, lambda log: sustained_rate(accepted(log), skip_s=1.0) >= 0.9 * rpm / 60
    )
    ok = accepted(log)
    assert len(ok) == calls
    rate = sustained_rate(ok, skip_s=1.0)
    assert rate >= 0.9 * rpm / 60, rate
    assert most_in_any_window(ok, 60.0) <= rpm
    refused = [a for a in log if a.status == 429]
    assert len(refused) <= 0.01 * calls, refused[:5]


async def test_sporadic_429s_far_from_the_quota_cost_little_throughput(
    db_path: Path, client: Client
) -> None:
    # A pipeline bound by its slots and the API's latency (about 26 calls/s here, against a
    # quota of 30/s), and a provider that refuses 3% of calls at random with Retry-After: 2.
    # Each such 429 used to halve the rate and pause the key, which halved the throughput.
    # Asserted on the mechanism, not on a throughput ratio (which the machine's load moves):
    # the limiter saw every refusal, and none of them lowered the adaptive rate or paused the
    # bucket, sampled all through the run; a refused step only waits for its own Retry-After
    # (in the queue, not in its slot: runner.py releases it).
    limit = LimitSpec("api", requests_per_second=30)
    factors: list[float] = []
    paused: list[float] = []
    async with QuotaServer.running(latency_ms=150, random_429=0.03, seed=7) as server:
        async with engine(db_path, limit, concurrency=2) as e:
            lim = e.limiter

            async def sample() -> None:
                while True:
                    for b in lim.snapshot(time.time())["limits"]:
                        if not b.get("idle"):
                            factors.append(b["factor"])
                            paused.append(b["paused_for_s"])
                    await asyncio.sleep(0.01)

            sampler = asyncio.create_task(sample())
            try:
                results = await run_all(client, [[server.port, "k", 1, False]] * 120)
            finally:
                sampler.cancel()
            counters = dict(lim.counters)
        log = await server.log()
    refused = [a for a in log if a.status == 429]
    assert results == [1] * 120
    assert refused and all(a.why == "random" for a in refused)
    # Every refusal reached the limiter ...
    assert counters["rate_limited"] == len(refused), (counters, len(refused))
    # ... and none was taken for the quota: no decrease, no pause.
    assert counters["rate_limited_slowed"] == 0, counters
    assert factors and min(factors) == 1.0, min(factors)
    assert max(paused) == 0.0, max(paused)


async def test_a_retry_after_on_one_key_does_not_slow_another(
    db_path: Path, client: Client
) -> None:
    # Per-key budgets (limit_key): the provider refuses k1 for a second with Retry-After: 1.
    # k1 pauses; k2 keeps its whole quota.
    attempt = 0

    async def measure() -> tuple[float, list[Arrival]]:
        nonlocal attempt
        attempt += 1
        path = db_path.with_name(f"{attempt}.sqlite")
        async with QuotaServer.running(latency_ms=5) as server:
            limit = LimitSpec("api", requests_per_second=20)
            async with engine(path, limit, concurrency=40), Client(path, reg=REG, shards=2) as c:
                await server.refuse("k1", 1.0, "1")
                started = time.time()
                await run_all(
                    c, [[server.port, key, 1, True] for _ in range(40) for key in ("k1", "k2")]
                )
            return started, await server.log()

    def k2_at_quota(m: tuple[float, list[Arrival]]) -> bool:
        k2 = accepted(m[1], "k2")
        return bool(k2) and k2[-1].at - m[0] < 2.5 and most_in_any_window(k2, 1.0) == 20

    started, log = await measured(measure, k2_at_quota)
    k2 = accepted(log, "k2")
    assert len(k2) == 40
    # k2 ran at its quota from the start, refused k1 or not: 40 calls at 20/s.
    assert k2[-1].at - started < 2.5
    assert most_in_any_window(k2, 1.0) == 20
    k1_refused = [a for a in log if a.key == "k1" and a.status == 429]
    # k1's first window went out at once, into the refusal; then k1 paused for the Retry-After
    # rather than sending its next windows into it too.
    assert 0 < len(k1_refused) <= 20 + 5
    assert len(accepted(log, "k1")) == 40


async def test_each_limit_key_has_its_own_budget_and_client(db_path: Path, client: Client) -> None:
    async with QuotaServer.running() as server:
        async with engine(db_path, LimitSpec("api", requests_per_second=10)):
            await run_all(
                client, [[server.port, key, 1, True] for _ in range(20) for key in ("k1", "k2")]
            )
        log = await server.log()
    for key in ("k1", "k2"):
        mine = [a for a in log if a.key == key]
        assert len(mine) == 20
        assert most_in_any_window(mine, 1.0) <= 10
    # Two budgets: together the keys went faster than one key's quota.
    assert most_in_any_window(log, 1.0) > 10
    # One client per key (never shared across keys), reused across calls, closed on drain.
    by_key = {c.api_key: c for c in ApiClient.made}
    assert sorted(by_key) == ["k1", "k2"] and len(ApiClient.made) == 2
    for api in by_key.values():
        assert api.closed and api.connections < 20
