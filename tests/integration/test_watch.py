"""`executor watch`: a batch followed live until none of its runs is running; a rich progress bar
on a terminal, JSON lines otherwise."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from rich.console import Console

from executor import Client, Registry, RetryPolicy, step, workflow
from executor.cli import main, progress
from executor.store.overview import BatchProgress
from tests.support.engine import database_toml

if TYPE_CHECKING:
    from tests.support.engine import EngineFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


async def test_watch_follows_a_batch_to_its_end(
    engine_factory: EngineFactory,
    client: Client,
    database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reg = Registry()
    gate = asyncio.Event()

    @step(registry=reg, name="slow", retry=RetryPolicy(max_attempts=1))
    async def slow(i: int) -> int:
        await gate.wait()
        if i == 99:
            await asyncio.Event().wait()
        if i == 3:
            raise ValueError("three")
        return i

    @workflow(registry=reg, name="batch")
    async def batch(ctx: Any, i: int) -> int:
        return await slow(i)

    @workflow(registry=reg, name="other")
    async def other(ctx: Any) -> None:
        await asyncio.Event().wait()  # never finishes: not part of the batch

    config = tmp_path / "executor.toml"
    config.write_text(database_toml(database))
    await client.start_many(batch, [[i] for i in range(10)], labels={"batch": "nightly"})
    await client.start(batch, 99)  # same workflow, not in the batch: it never finishes
    await client.start(other)
    # A short drain: the run outside the batch never finishes.
    async with engine_factory(reg, drain_timeout_s=0.5):
        watching = asyncio.create_task(
            asyncio.to_thread(
                main,
                [
                    "--config",
                    str(config),
                    "watch",
                    "--label",
                    "batch=nightly",
                    "--interval",
                    "0.05",
                ],
            )
        )
        await asyncio.sleep(0.2)  # a few readings while every run waits
        gate.set()
        code = await asyncio.wait_for(watching, timeout=20)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # one run failed
    assert len(lines) >= 2
    assert lines[0]["total"] == 10 and lines[0]["runs"].get("running", 0) > 0
    last = lines[-1]
    assert last["total"] == 10 and last["finished"] == 10
    assert last["runs"] == {"succeeded": 9, "failed": 1}
    assert all(a["at"] <= b["at"] for a, b in itertools.pairwise(lines))

    # Nothing matches: one error line, exit 1.
    assert await asyncio.to_thread(main, ["--config", str(config), "watch", "--workflow", "x"]) == 1
    assert "no runs match (workflow=x)" in capsys.readouterr().err


async def test_watch_on_a_terminal_draws_a_progress_bar() -> None:
    readings = [
        BatchProgress({"running": 4}, 0),
        BatchProgress({"running": 2, "succeeded": 1, "failed": 1}, 6),
        BatchProgress({"succeeded": 3, "failed": 1}, 12),
    ]

    async def read() -> BatchProgress:
        return readings.pop(0)

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    last = await progress.watch(
        read, title="nightly", interval_s=0.01, terminal=True, console=console
    )
    assert last.finished == 4 and not readings
    screen = out.getvalue()
    assert "nightly" in screen and "4/4" in screen and "100%" in screen
    assert "succeeded 3  failed 1" in screen and "steps/s" in screen


def test_rates_and_eta() -> None:
    meter = progress.RateMeter()
    meter.add(100.0, BatchProgress({"running": 10}, 0))
    rates = meter.add(110.0, BatchProgress({"running": 5, "succeeded": 5}, 20))
    assert rates.steps_per_s == 2.0 and rates.runs_per_s == 0.5
    assert rates.eta_s == 10.0  # 5 left at 0.5 runs/s
