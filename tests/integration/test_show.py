"""One run, whole: `Client.history`, `executor show` and `executor status` on runs in every state
(queued, in flight, retry wait, quota wait, sleeping, replay, parked, succeeded, failed,
cancelled), against a real engine and file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from executor import Client, Registry, RetryPolicy, errors, step, workflow
from executor import cli as executor_cli
from executor.cli import views
from executor.store import history, sharding
from executor.timetext import when
from tests.support.engine import database_toml

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory, WaitUntil

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


def _shard_key(shard: int) -> str:
    return next(k for k in (f"key-{i}" for i in range(100)) if sharding.shard_of(k, 2) == shard)


SHARD_0, SHARD_1 = _shard_key(0), _shard_key(1)
NO_RETRY = RetryPolicy(max_attempts=1)


def _waits(h: history.RunHistory) -> list[str]:
    return [w.kind for w in h.waiting]


async def test_history_of_runs_in_every_state(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()
    gate = asyncio.Event()

    @step(registry=reg, name="block", retry=NO_RETRY)
    async def block(x: int) -> int:
        await gate.wait()
        return x

    @step(registry=reg, name="flaky", retry=RetryPolicy(max_attempts=3, initial_backoff_s=60))
    async def flaky() -> None:
        raise ValueError("upstream said no")

    @step(registry=reg, name="limited")
    async def limited() -> None:
        raise errors.RateLimited(retry_after=60)

    @step(registry=reg, name="add", retry=NO_RETRY)
    async def add(x: int) -> int:
        if x < 0:
            raise KeyError("negative")
        return x + 1

    @workflow(registry=reg, name="blocking")
    async def blocking(ctx: Any, x: int) -> int:
        return await block(x)

    @workflow(registry=reg, name="calls")
    async def calls(ctx: Any, which: str) -> None:
        await (flaky() if which == "flaky" else limited())

    @workflow(registry=reg, name="sleeper")
    async def sleeper(ctx: Any) -> None:
        await ctx.sleep(60)

    @workflow(registry=reg, name="adds")
    async def adds(ctx: Any, x: int) -> int:
        return await add(await add(x))

    async with engine_factory(reg, concurrency=1):
        # One slot on shard 0: the first run's step holds it, the second one's queues.
        running = await client.start(blocking, 1, shard_key=SHARD_0)
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM tasks WHERE claim_token IS NOT NULL"),
            "the first step to be claimed",
        )
        queued = await client.start(blocking, 2, shard_key=SHARD_0)
        flaky_run = await client.start(calls, "flaky", shard_key=SHARD_1)
        limited_run = await client.start(calls, "limited", shard_key=SHARD_1)
        sleeping = await client.start(sleeper, shard_key=SHARD_1)
        ok = await client.start(adds, 1, shard_key=SHARD_1)
        bad = await client.start(adds, -1, shard_key=SHARD_1)
        cancelled = await client.start(sleeper, shard_key=SHARD_1)
        for run in (ok, bad):
            await wait_until(
                lambda r=run: _finished(client, r),
                f"run {run} to finish",
            )
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM timers") == 2, "both sleepers to sleep"
        )
        assert await client.cancel(cancelled)
        await wait_until(
            lambda: (
                dbfile.value("SELECT count(*) FROM tasks WHERE not_before > ?", time.time()) == 2
            ),
            "the flaky and the rate-limited step to wait",
        )
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM tasks WHERE claim_token IS NULL") == 3,
            "the second blocking step to stay queued",
        )

        h = await client.history(running)
        assert h.status == "running" and _waits(h) == [history.IN_FLIGHT]
        (p,) = h.positions
        assert (p.kind, p.name, p.status, p.state, p.attempts) == (
            "step",
            "block",
            "pending",
            history.IN_FLIGHT,
            1,
        )
        assert p.engine is not None and h.waiting[0].engine == p.engine
        # The run's shard is owned by the engine, by lease.
        assert h.owner is not None and h.owner.startswith(f"engine {p.engine} (pid ")
        assert p.started_at is not None and p.finished_at is None and p.duration_s is None

        h = await client.history(queued)
        assert _waits(h) == [history.QUEUED]
        assert h.positions[0].attempts == 0 and h.positions[0].started_at is None
        assert h.waiting[0].since == h.positions[0].scheduled_at

        h = await client.history(flaky_run)
        assert _waits(h) == [history.RETRY_WAIT]
        (p,) = h.positions
        assert p.state == history.RETRY_WAIT and p.attempts == 1
        assert p.error is not None and p.error["type"] == "ValueError"
        assert p.until is not None and p.until > time.time() + 30
        assert "attempt 2" in h.waiting[0].detail and "upstream said no" in h.waiting[0].detail

        h = await client.history(limited_run)
        assert _waits(h) == [history.QUOTA_WAIT]
        assert h.positions[0].error is not None
        assert h.positions[0].error["type"] == "RateLimited"
        assert "429" in h.waiting[0].detail

        h = await client.history(sleeping)
        assert _waits(h) == [history.SLEEPING]
        (p,) = h.positions
        assert (p.kind, p.state) == ("sleep", history.SLEEPING)
        assert p.until is not None and p.until == pytest.approx(p.scheduled_at + 60, abs=1)

        h = await client.history(ok)
        assert h.status == "succeeded" and _waits(h) == [history.FINISHED]
        assert [(p.pos, p.name, p.status, p.attempts, p.seq) for p in h.positions] == [
            (0, "add", "succeeded", 1, 1),
            (1, "add", "succeeded", 1, 2),
        ]
        for p in h.positions:
            assert p.started_at is not None and p.finished_at is not None
            assert p.scheduled_at <= p.started_at <= p.finished_at
            assert p.duration_s == pytest.approx(p.finished_at - p.started_at)

        h = await client.history(bad)
        assert h.status == "failed" and h.error is not None
        (p,) = h.positions
        assert (p.status, p.error is not None and p.error["type"]) == ("failed", "KeyError")

        h = await client.history(cancelled)
        assert h.status == "cancelled" and _waits(h) == [history.FINISHED]

        # `executor status`: the current step and its last error.
        st = await client.status(flaky_run)
        assert st.current_step is not None
        assert st.current_step["name"] == "flaky" and st.current_step["attempts"] == 1
        assert st.current_step["error"]["message"] == "upstream said no"
        assert (await client.list(limit=1))[0].current_step is None  # lists stay cheap
        gate.set()

    # With no engine, a new run waits for its first replay.
    fresh = await client.start("adds", 3)
    h = await client.history(fresh)
    assert h.positions == () and _waits(h) == [history.REPLAY]

    with pytest.raises(errors.RunNotFound):
        await client.history("no-such-run")


async def _finished(client: Client, run: str) -> bool:
    return (await client.status(run)).finished


def _v1(reg: Registry) -> None:
    @step(registry=reg, name="one")
    async def one() -> int:
        return 1

    @workflow(registry=reg, name="changes")
    async def changes(ctx: Any) -> int:
        await one()
        await ctx.sleep(0.2)
        return await one()


def _v2(reg: Registry) -> None:
    @step(registry=reg, name="two")
    async def two() -> int:
        return 2

    @workflow(registry=reg, name="changes")
    async def changes(ctx: Any) -> int:
        await two()
        return 2


async def test_history_of_a_parked_run_says_why(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    v1, v2 = Registry(), Registry()
    _v1(v1)
    _v2(v2)
    async with engine_factory(v1):
        run = await client.start("changes")
        await wait_until(lambda: dbfile.value("SELECT count(*) FROM timers") == 1, "the sleep")
    async with engine_factory(v2):
        await wait_until(
            lambda: dbfile.value("SELECT status FROM runs WHERE id = ?", run) == "parked",
            "the run to be parked",
        )
    h = await client.history(run)
    assert h.status == "parked" and _waits(h) == [history.PARKED]
    assert "NonDeterminismError" in h.waiting[0].detail
    assert "nondeterminism at position 0" in h.waiting[0].detail
    assert [p.name for p in h.positions] == ["one", "sleep"]


async def test_show_prints_a_table_on_a_terminal_and_json_otherwise(
    engine_factory: EngineFactory,
    client: Client,
    database: str,
    tmp_path: Path,
    wait_until: WaitUntil,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reg = Registry()

    @step(registry=reg, name="twice", retry=RetryPolicy(max_attempts=2, initial_backoff_s=0))
    async def twice(x: int) -> int:
        if x == 0:
            raise RuntimeError("first\nattempt")
        return x

    @workflow(registry=reg, name="shown")
    async def shown(ctx: Any) -> int:
        await twice(1)
        return await twice(0)

    async with engine_factory(reg):
        run = await client.start(shown)
        await wait_until(lambda: _finished(client, run), "the run to fail")

    config = tmp_path / "executor.toml"
    config.write_text(database_toml(database))
    assert await asyncio.to_thread(executor_cli.main, ["--config", str(config), "show", run]) == 0
    doc = json.loads(capsys.readouterr().out)  # stdout is not a terminal here: JSON
    assert doc["id"] == run and doc["status"] == "failed"
    assert [(p["name"], p["status"], p["attempts"]) for p in doc["positions"]] == [
        ("twice", "succeeded", 1),
        ("twice", "failed", 2),
    ]
    assert doc["positions"][1]["error"]["message"] == "first\nattempt"
    assert doc["waiting"] == [
        {
            "kind": "finished",
            "detail": "failed",
            "pos": None,
            "name": None,
            "since": doc["finished_at"],
            "until": None,
            "engine": None,
            "limit": None,
            "child": None,
        }
    ]

    text = views.history_text(await client.history(run), time.time())
    lines = text.splitlines()
    assert lines[0] == f"run:       {run}"
    header = next(line for line in lines if line.startswith("POS"))
    assert header.split() == [
        "POS",
        "KIND",
        "NAME",
        "STATUS",
        "ATTEMPTS",
        "STARTED",
        "FINISHED",
        "TOOK",
        "LAST",
        "ERROR",
    ]
    row = lines[lines.index(header) + 2].split()
    assert row[:5] == ["1", "step", "twice", "failed", "2"]
    assert lines[-2] == "waiting on:"
    assert lines[-1].startswith("  failed, since " + when(doc["finished_at"]))
    assert "RuntimeError: first attempt" in text  # one line per position

    assert (
        await asyncio.to_thread(
            executor_cli.main, ["--config", str(config), "status", run, "--json"]
        )
        == 0
    )
    st = json.loads(capsys.readouterr().out)
    assert st["current_step"]["pos"] == 1 and st["current_step"]["status"] == "failed"

    assert (
        await asyncio.to_thread(executor_cli.main, ["--config", str(config), "show", "nope"]) == 4
    )
    assert "no run with id 'nope'" in capsys.readouterr().err
