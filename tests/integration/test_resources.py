"""The shared-client registry: one client per factory and parameters, reference counted,
bounded (LRU) with an idle time-to-live, closed newest first; and the engine closing it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from executor import Client, Registry, errors, step, workflow
from executor.resources import Resources
from tests.support.engine import EngineFactory

pytestmark = pytest.mark.anyio

closed: list[str] = []


class SyncClient:
    """Closed with close(), like http.client or requests.Session."""

    def __init__(self, api_key: str = "", base_url: str = "") -> None:
        self.name = f"{api_key}@{base_url}"
        self.open = True

    def close(self) -> None:
        self.open = False
        closed.append(self.name)


class AsyncClient:
    """Closed with await aclose(), like httpx.AsyncClient."""

    made = 0

    def __init__(self, api_key: str) -> None:
        self.name = api_key
        self.open = True
        AsyncClient.made += 1

    async def aclose(self) -> None:
        await asyncio.sleep(0)
        self.open = False
        closed.append(self.name)


async def make_async(api_key: str) -> AsyncClient:
    await asyncio.sleep(0.01)  # slow enough for concurrent first uses to overlap
    return AsyncClient(api_key)


@pytest.fixture(autouse=True)
def fresh() -> None:
    closed.clear()
    AsyncClient.made = 0


async def test_one_client_per_factory_and_parameters() -> None:
    reg = Resources()
    async with reg.use(SyncClient, api_key="a", base_url="u") as a1:
        async with reg.use(SyncClient, base_url="u", api_key="a") as a2:
            assert a1 is a2  # same parameters, any order: the same client
        async with reg.use(SyncClient, api_key="b", base_url="u") as b:
            assert b is not a1  # another key never shares a client
        async with reg.use(make_async, api_key="a") as other:
            assert isinstance(other, AsyncClient)  # another factory: its own client
    assert len(reg) == 3 and reg.created == 3
    await reg.aclose()
    assert sorted(closed) == ["a", "a@u", "b@u"]


async def test_concurrent_first_uses_create_one_client() -> None:
    reg = Resources()

    async def use() -> AsyncClient:
        async with reg.use(make_async, api_key="k") as c:
            await asyncio.sleep(0.01)
            return c

    clients = await asyncio.gather(*(use() for _ in range(20)))
    assert len({id(c) for c in clients}) == 1 and AsyncClient.made == 1
    await reg.aclose()
    assert closed == ["k"]


async def test_the_least_recently_used_idle_client_is_evicted_and_closed() -> None:
    reg = Resources(max_clients=2)
    for key in ("a", "b"):
        async with reg.use(SyncClient, api_key=key):
            pass
    async with reg.use(SyncClient, api_key="a"):  # a is now more recent than b
        pass
    async with reg.use(SyncClient, api_key="c"):
        pass
    assert closed == ["b@"] and len(reg) == 2


async def test_a_client_in_use_is_closed_only_after_its_last_user() -> None:
    reg = Resources(max_clients=1)
    async with reg.use(SyncClient, api_key="busy") as busy:
        async with reg.use(SyncClient, api_key="other"):
            # Over the bound with every client in use: the oldest leaves the registry...
            assert busy.open and closed == []
        async with reg.use(SyncClient, api_key="busy") as again:
            assert again is not busy  # ...so a new user gets a fresh client,
        assert busy.open  # but the step still using the old one keeps it open
    assert "busy@" in closed and not busy.open
    await reg.aclose()


async def test_idle_clients_expire() -> None:
    reg = Resources(idle_ttl_s=0.05)
    async with reg.use(SyncClient, api_key="idle") as c:
        pass
    deadline = time.monotonic() + 5
    while c.open and time.monotonic() < deadline:
        await reg.aclose_entries(reg.sweep())
        await asyncio.sleep(0.01)
    assert not c.open and len(reg) == 0


async def test_aclose_closes_newest_first_with_the_right_closer() -> None:
    reg = Resources()
    custom: list[str] = []
    async with reg.use(SyncClient, api_key="first"):
        pass
    async with reg.use(make_async, api_key="second"):
        pass
    async with reg.use(dict, closer=lambda d: custom.append(d["name"]), name="third"):
        pass
    async with reg.use(object):  # nothing to close: left alone
        pass
    await reg.aclose()
    assert custom == ["third"]
    assert closed == ["second", "first@"]
    assert reg.closed == 4 and len(reg) == 0


async def test_a_failing_factory_raises_and_leaves_nothing_behind() -> None:
    reg = Resources()
    calls = 0

    def flaky(api_key: str) -> SyncClient:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("connection refused")
        return SyncClient(api_key)

    with pytest.raises(OSError, match="refused"):
        async with reg.use(flaky, api_key="k"):
            pass
    async with reg.use(flaky, api_key="k") as c:
        assert c.open
    with pytest.raises(errors.ExecutorError, match="not hashable"):
        async with reg.use(SyncClient, api_key=object.__new__(Unhashable)):
            pass
    await reg.aclose()


class Unhashable:
    __hash__ = None  # type: ignore[assignment]


def test_plain_steps_in_threads_share_clients_too() -> None:
    reg = Resources()
    seen: list[int] = []

    def work() -> None:
        for _ in range(50):
            with reg.use_sync(SyncClient, api_key="t") as c:
                seen.append(id(c))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and reg.created == 1
    with (
        pytest.raises(errors.ExecutorError, match="is async"),
        reg.use_sync(make_async, api_key="x"),
    ):
        pass
    asyncio.run(reg.aclose())
    assert closed == ["t@"]


# --- the engine closes the process-wide registry when it drains ---------------------------------

REG = Registry()
used: list[AsyncClient] = []


@step(registry=REG)
async def call_api(key: str) -> str:
    from executor import resources

    async with resources.use(make_async, api_key=key) as client:
        used.append(client)
        return client.name


@workflow(registry=REG)
async def calls(ctx: Any, keys: list[str]) -> list[str]:
    return list(await asyncio.gather(*(call_api(k) for k in keys)))


async def test_steps_reuse_clients_per_key_and_the_engine_closes_them_on_drain(
    db_path: Path, engine_factory: EngineFactory
) -> None:
    used.clear()
    async with engine_factory(REG, shards=1, concurrency=4, poll_interval_s=0.02):
        async with Client(db_path, reg=REG) as c:
            run = await c.start(calls, ["a", "b", "a", "b", "a"] * 4)
            assert await c.result(run, timeout=10) == ["a", "b", "a", "b", "a"] * 4
        assert len(used) == 20 and len({id(x) for x in used}) == 2
        assert all(x.open for x in used)
    assert sorted(closed) == ["a", "b"] and not any(x.open for x in used)
