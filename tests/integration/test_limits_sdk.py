"""rate_limited_from with the real SDKs and HTTP clients, pointed at the quota server.

The anthropic and openai SDKs raise their own RateLimitError on a 429 (max_retries=0: the SDK's own
retries would sleep in the slot, out of the limiter's sight); httpx and aiohttp hand back a response
or raise their own error. Each must become a RateLimited with the server's Retry-After. Then a step
with the anthropic SDK runs through the engine against a provider that refuses what is over its
own quota, lower than the one configured: the limit adapts and every run succeeds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import httpx
import openai
import pytest

from benchmarks.quota_server import QuotaServer, Window
from executor import (
    Client,
    DatabaseConfig,
    Engine,
    EngineConfig,
    Registry,
    RetryPolicy,
    errors,
    resources,
    step,
    workflow,
)
from executor.config import LimitSpec
from executor.ratelimit import rate_limited_from

pytestmark = pytest.mark.anyio


@pytest.fixture
async def refusing() -> AsyncIterator[QuotaServer]:
    """A server that refuses key "spent" for a minute, with Retry-After: 7."""
    async with QuotaServer.running() as server:
        await server.refuse("spent", 60.0, "7")
        yield server


def expect_rate_limited(exc: BaseException | object, seconds: float) -> None:
    limited = rate_limited_from(exc)
    assert isinstance(limited, errors.RateLimited), exc
    assert limited.retry_after == pytest.approx(seconds)


async def test_the_anthropic_sdk(refusing: QuotaServer) -> None:
    sdk = anthropic.AsyncAnthropic(api_key="spent", base_url=refusing.base_url, max_retries=0)
    async with sdk:
        with pytest.raises(anthropic.RateLimitError) as caught:
            await sdk.messages.create(
                model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
        expect_rate_limited(caught.value, 7.0)
        ok = anthropic.AsyncAnthropic(api_key="fine", base_url=refusing.base_url, max_retries=0)
        reply = await ok.messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert rate_limited_from(reply) is None  # a parsed reply: not a 429, whatever it is
        await ok.close()


async def test_the_openai_sdk(refusing: QuotaServer) -> None:
    base = refusing.base_url + "/v1"
    async with openai.AsyncOpenAI(api_key="spent", base_url=base, max_retries=0) as sdk:
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        expect_rate_limited(caught.value, 7.0)
    # Without Retry-After, the reset of the exhausted resource (x-ratelimit-remaining-* = 0).
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-remaining-tokens": "90000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    response = httpx.Response(429, headers=headers, request=httpx.Request("POST", base))
    expect_rate_limited(openai.RateLimitError("slow down", response=response, body=None), 1.5)


async def test_httpx_responses_and_errors(refusing: QuotaServer) -> None:
    async with httpx.AsyncClient(base_url=refusing.base_url) as http:
        reply = await http.post("/v1/call", headers={"x-api-key": "spent"}, json={})
        expect_rate_limited(reply, 7.0)
        with pytest.raises(httpx.HTTPStatusError) as caught:
            reply.raise_for_status()
        expect_rate_limited(caught.value, 7.0)
        fine = await http.post("/v1/call", headers={"x-api-key": "fine"}, json={})
        assert fine.status_code == 200 and rate_limited_from(fine) is None


async def test_aiohttp_responses_and_errors(refusing: QuotaServer) -> None:
    async with aiohttp.ClientSession(refusing.base_url) as http:
        async with http.post("/v1/call", headers={"x-api-key": "spent"}, json={}) as reply:
            expect_rate_limited(reply, 7.0)
            with pytest.raises(aiohttp.ClientResponseError) as caught:
                reply.raise_for_status()
            expect_rate_limited(caught.value, 7.0)
        async with http.post("/v1/call", headers={"x-api-key": "fine"}, json={}) as fine:
            assert fine.status == 200 and rate_limited_from(fine) is None


# --- the anthropic SDK in a step --------------------------------------------------------------

REG = Registry()


def make_sdk(api_key: str, base_url: str) -> anthropic.AsyncAnthropic:
    # max_retries=0: a 429 goes to the limiter (which slows the key down and requeues the step
    # without holding a slot) instead of being slept on inside the SDK.
    return anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0)


@step(limits=["llm"], retry=RetryPolicy(max_attempts=1), registry=REG)
async def complete(base_url: str, api_key: str, prompt: str) -> str:
    async with resources.use(make_sdk, api_key=api_key, base_url=base_url) as sdk:
        try:
            reply = await sdk.messages.create(
                model="m", max_tokens=10, messages=[{"role": "user", "content": prompt}]
            )
        except anthropic.RateLimitError as exc:
            raise rate_limited_from(exc) or exc from exc
    block = reply.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    return block.text


@workflow(registry=REG)
async def ask(ctx: Any, base_url: str, api_key: str, prompt: str) -> str:
    return str(await ctx.step(complete, base_url, api_key, prompt, limit_key=api_key))


async def test_a_step_with_the_anthropic_sdk_adapts_to_a_lower_provider_quota(
    db_path: Path,
) -> None:
    # Configured 40/s; the provider allows 10 per 0.5 s (20/s) and says Retry-After: 0.5.
    limit = LimitSpec("llm", requests_per_second=40)
    cfg = EngineConfig(shards=1, concurrency=40, poll_interval_s=0.05, heartbeat_interval_s=0.1)
    async with QuotaServer.running([Window(0.5, 10)], retry_after="0.5") as server:
        started = time.time()
        async with (
            Engine(cfg, DatabaseConfig(path=db_path), reg=REG, limits=[limit]) as engine,
            Client(db_path, reg=REG, shards=1) as client,
        ):
            ids = await client.start_many(
                ask, [[server.base_url, "k", f"q{i}"] for i in range(120)]
            )
            for run_id in ids:  # max_attempts=1: no 429 used an attempt
                assert await client.result(run_id, timeout=60) == "ok"
            (state,) = engine.limits_snapshot()["limits"]
        log = await server.log()
    assert state["rate_limited"] > 0 and state["factor"] < 1.0  # it slowed down
    ok = [a for a in log if a.status == 200]
    assert len(ok) == 120
    # And the provider's quota was still used well: 120 calls at 20/s take 6 s.
    assert time.time() - started < 20
