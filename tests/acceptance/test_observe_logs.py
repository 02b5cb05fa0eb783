"""Logs worth reading: one line when a step fails for good, when a run fails or is parked, the
loaded workflows at start, and per-logger levels ([log.levels]) applied live on SIGHUP."""

from __future__ import annotations

import io
import logging
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from executor import Client, Registry, RetryPolicy, step, workflow
from executor.daemon import logs
from executor.errors import ConfigError
from tests.support.daemon import Daemons, cli, daemons_in, write_config

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory, WaitUntil


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ["aiosqlite", "chatty", "chatty.child", "quiet"]
    before = {name: logging.getLogger(name).level for name in names}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name, old in before.items():
        logging.getLogger(name).setLevel(old)
    logs._configured.clear()


def _engine_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "executor.engine"]


@pytest.mark.anyio
async def test_a_failed_step_and_run_and_a_parked_run_are_one_line_each(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="executor")
    reg = Registry()

    @step(registry=reg, name="fetch", retry=RetryPolicy(max_attempts=2, initial_backoff_s=0))
    async def fetch(url: str) -> str:
        raise ConnectionError(f"cannot reach {url}")

    @workflow(registry=reg, name="crawl")
    async def crawl(ctx: Any, url: str) -> str:
        return await fetch(url)

    async with engine_factory(reg):
        runs = [await client.start(crawl, f"http://h/{i}") for i in range(3)]
        for run in runs:
            await wait_until(
                lambda r=run: dbfile.value("SELECT status FROM runs WHERE id = ?", r) == "failed",
                "the run to fail",
            )
    lines = _engine_lines(caplog)
    for i, run in enumerate(runs):
        step_lines = [line for line in lines if line.startswith(f"step fetch of run {run} ")]
        assert step_lines == [
            f"step fetch of run {run} (crawl) failed for good after 2 attempts:"
            f" ConnectionError: cannot reach http://h/{i}"
        ]
        (run_line,) = [line for line in lines if line.startswith(f"run {run} ")]
        assert run_line.startswith(f"run {run} (crawl) failed at step fetch: StepFailed: ")
        assert f"cannot reach http://h/{i}" in run_line
    failed = [r for r in caplog.records if r.getMessage().startswith(f"run {runs[0]} ")]
    assert failed[0].levelno == logging.ERROR
    assert failed[0].__dict__["run"] == runs[0] and failed[0].__dict__["workflow"] == "crawl"

    # Parked: the code no longer matches the journal.
    v2 = Registry()

    @step(registry=v2, name="fetch2")
    async def fetch2(url: str) -> str:
        return url

    @workflow(registry=v2, name="crawl")
    async def crawl2(ctx: Any, url: str) -> str:
        return await fetch2(url)

    parked = runs[0]
    dbfile.execute("UPDATE runs SET status = 'parked' WHERE id = ?", parked)
    assert await client.resume(parked)
    caplog.clear()
    async with engine_factory(v2):
        await wait_until(
            lambda: dbfile.value("SELECT status FROM runs WHERE id = ?", parked) == "parked",
            "the run to be parked again",
        )
    (line,) = [line for line in _engine_lines(caplog) if line.startswith(f"run {parked} ")]
    assert line.startswith(f"run {parked} (crawl) parked: NonDeterminismError: run {parked}:")


def test_levels_per_logger(restore_loggers: None) -> None:
    stream = io.StringIO()
    logs.setup_logging("info", "text", stream, levels=[("chatty", "warning"), ("quiet", "debug")])
    logging.getLogger("chatty.child").info("hidden: below its parent's level")
    logging.getLogger("chatty").warning("shown")
    logging.getLogger("quiet").debug("shown at debug although the root says info")
    logging.getLogger("other").debug("hidden: the root's level")
    text = stream.getvalue()
    assert "hidden" not in text
    assert "chatty: shown" in text and "quiet: shown at debug" in text

    # A logger dropped from [log.levels] goes back to the root's level.
    logs.set_level("info", [("quiet", "error")])
    assert logging.getLogger("chatty").level == logging.NOTSET
    assert logging.getLogger("quiet").level == logging.ERROR
    # The floor for aiosqlite stays, unless [log.levels] names it.
    assert logging.getLogger("aiosqlite").level == logging.INFO
    logs.set_level("debug", [("aiosqlite", "debug")])
    assert logging.getLogger("aiosqlite").level == logging.DEBUG
    with pytest.raises(ConfigError, match=r"log\.levels\.x: expected one of"):
        logs.set_level("info", [("x", "loud")])


def test_daemon_logs_its_workflows_and_applies_levels_on_sighup(
    tmp_path: Path, daemons: Daemons
) -> None:
    config = write_config(tmp_path, **{"log.levels": {"tests.support.chatty": "warning"}})
    daemon = daemons.start(config).ready()
    found = daemon.wait_for_log(r"loaded (\d+) workflows from tests\.support\.flows: ([^;]*);")
    names = found.group(2).split(", ")
    assert {"echo", "chatty", "step_fails"} <= set(names) and len(names) == int(found.group(1))

    def run(tag: str) -> None:
        done = cli(config, "start", "chatty", "--args", f'["{tag}"]', "--wait")
        assert done.returncode == 0, done.stderr

    run("one")
    daemon.wait_for_log("chatty warning one")
    assert "chatty info one" not in daemon.log()

    write_config(tmp_path, **{"log.levels": {"tests.support.chatty": "info"}})
    daemon.send(signal.SIGHUP)
    daemon.wait_for_log(
        r"levels changed to tests\.support\.chatty=info \(log\.levels, applied live\)"
    )
    run("two")
    daemon.wait_for_log("chatty info two")

    failed = cli(config, "start", "step_fails", "--args", '["boom"]')
    run_id = failed.stdout.strip()
    daemon.wait_for_log(
        rf"step tests\.support\.flows\.broken of run {run_id} \(step_fails\) failed for good"
        r" after 2 attempts:"
        r" ValueError: boom"
    )
    daemon.wait_for_log(
        rf"run {run_id} \(step_fails\) failed at step tests\.support\.flows\.broken: StepFailed: "
    )
    assert len(re.findall(rf"engine: run {run_id} ", daemon.log())) == 1
    assert daemon.stop() == 0
