"""`executor stats` on a terminal renders each engine's limits as a table, not a JSON blob."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pytest

from executor import Client, Registry, step, workflow
from executor.cli import views
from executor.config import LimitSpec

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory, WaitUntil

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


async def test_limits_render_as_a_table(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()

    @step(registry=reg, name="call", limits=["api"])
    async def call(i: int) -> int:
        return i

    @workflow(registry=reg, name="calls")
    async def calls(ctx: Any, n: int) -> int:
        return sum([await call(i) for i in range(n)])

    spec = LimitSpec(name="api", requests_per_second=50, concurrent=3)
    async with engine_factory(reg, limits=[spec]):
        run = await client.start(calls, 4)
        assert await client.result(run, timeout=15) == 6
        done = time.time()
        await wait_until(
            lambda: dbfile.value("SELECT coalesce(max(updated_at), 0) FROM limit_state") > done,
            "a limits snapshot taken after the run",
        )
        stats = await client.stats()
    text = views.limits_text(stats["limits"])
    lines = text.splitlines()
    assert lines[0].startswith("limits of engine ")
    assert lines[1].split() == [
        "LIMIT",
        "KEY",
        "RATE",
        "IN_FLIGHT",
        "WAITING",
        "PARKED",
        "429S",
        "ADMITTED",
    ]
    row = lines[2]
    assert row.startswith("api ") and "50 req/s" in row and "3 of 3 at once" in row
    assert row.split()[-1] == "4"  # admitted
    assert "{" not in text  # no JSON left
