"""Faults the engine must ride out: a database it cannot write for a while, a write lock held by
someone else, steps that hang, user code raising what asyncio treats as fatal, and workflow code
blocking the event loop.

How "the database cannot be written" is made here, since the tests run as root and chmod does not
stop root: `chattr +i` (the immutable attribute, which even root's already-open descriptors
cannot write through) on the database file and its WAL. The test is skipped where the file
system has no such attribute. (`PRAGMA max_page_count` does not work from another connection: it
is a limit of the connection that sets it, not of the file.) The lock fault is a second sqlite3
connection doing BEGIN IMMEDIATE and holding it past busy_timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from executor import (
    Client,
    DatabaseConfig,
    Engine,
    EngineCrashed,
    Registry,
    RetryPolicy,
    StepFailed,
    check,
    errors,
    step,
    workflow,
)
from executor.store.database import Database
from tests.support.engine import make_engine, write_lock

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory, WaitUntil

pytestmark = pytest.mark.anyio


BUSY_TIMEOUT_S = 0.1
FAULT_S = 1.0  # how long a fault lasts in the tests that recover from it
CANNOT_WRITE = "cannot write the database"
PENDING_GATED = "SELECT count(*) FROM steps WHERE name = 'gated' AND status = 'pending'"
STEP_SEQ = "SELECT seq FROM steps WHERE run_rid = ? AND pos = ?"


# --- making the database unwritable -------------------------------------------------------------


def _chattr(flag: str, *paths: Path) -> bool:
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return True
    done = subprocess.run(["chattr", flag, *existing], capture_output=True, check=False)
    return done.returncode == 0


@contextlib.contextmanager
def immutable(db: Path) -> Iterator[None]:
    """The database file and its WAL cannot be written, even by root, until the block ends."""
    files = (db, db.with_name(db.name + "-wal"))
    try:
        if not _chattr("+i", *files):
            pytest.skip("chattr +i does not work on this file system")
        yield
    finally:
        _chattr("-i", *files)  # always: an immutable file cannot even be deleted by pytest


def _have_chattr(tmp: Path) -> bool:
    probe = tmp / "chattr-probe"
    probe.write_text("x")
    try:
        return shutil.which("chattr") is not None and _chattr("+i", probe)
    finally:
        _chattr("-i", probe)
        probe.unlink()


# --- a workload whose steps we release by hand --------------------------------------------------


class Gate:
    """Steps that wait until the test opens the gate, counting how many are waiting."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.waiting = 0


def gated_registry(gate: Gate) -> Registry:
    reg = Registry()

    @step(registry=reg, name="gated")
    async def gated(x: int) -> int:
        gate.waiting += 1
        await gate.open.wait()
        return x * 10

    @step(registry=reg, name="after")
    async def after(x: int) -> int:
        return x + 1

    @workflow(registry=reg, name="gated_flow")
    async def gated_flow(ctx: Any, x: int) -> int:
        got = await gated(x)
        await ctx.sleep(0.01)
        return await after(got)

    return reg


def _engine(db: Path, reg: Registry, **settings: Any) -> Engine:
    return make_engine(reg, db, database={"busy_timeout_s": BUSY_TIMEOUT_S}, **settings)


@pytest.fixture
def engine_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="executor")
    return caplog


def _cannot_write_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("executor.engine")
    ]


FAULTS = ["write_lock", "immutable"]


@contextlib.contextmanager
def fault(kind: str, db: Path) -> Iterator[None]:
    if kind == "write_lock":
        with write_lock(db):
            yield
    else:
        with immutable(db):
            yield


@pytest.fixture(params=FAULTS)
def fault_kind(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind: str = request.param
    if kind == "immutable" and not _have_chattr(tmp_path):
        pytest.skip("chattr +i does not work here")
    return kind


async def test_a_write_fault_holds_results_logs_once_and_loses_nothing(
    db_path: Path,
    client: Client,
    fault_kind: str,
    engine_log: pytest.LogCaptureFixture,
    wait_until: WaitUntil,
    dbfile: DbFile,
) -> None:
    gate = Gate()
    engine = _engine(db_path, gated_registry(gate), write_failure_limit_s=60.0)
    runs = await client.start_many("gated_flow", [[i] for i in range(6)])
    await engine.start()
    try:
        await wait_until(lambda: gate.waiting == 6, "every gated step to be in flight")
        with fault(fault_kind, db_path):
            gate.open.set()
            # The steps finish; their results cannot be written, so the engine holds them.
            await wait_until(lambda: _cannot_write_errors(engine_log), "the flush to fail")
            await asyncio.sleep(FAULT_S)  # the fault lasts a while: the flush keeps retrying
            assert dbfile.value(PENDING_GATED) == 6  # nothing written (reads still work)
            assert engine.fatal is None and not engine.draining
        results = [await client.result(r, timeout=15) for r in runs]
        assert results == [i * 10 + 1 for i in range(6)]
    finally:
        await engine.stop("test finished")
    errors_logged = _cannot_write_errors(engine_log)
    assert len(errors_logged) == 1, [r.getMessage() for r in errors_logged]
    assert CANNOT_WRITE in errors_logged[0].getMessage()
    assert str(db_path) in errors_logged[0].getMessage()
    assert any("writable again" in r.getMessage() for r in engine_log.records)
    report = check.check(db_path)
    assert report.ok, report.summary()


async def test_a_write_fault_past_the_limit_stops_the_engine_and_loses_nothing(
    db_path: Path,
    client: Client,
    fault_kind: str,
    engine_log: pytest.LogCaptureFixture,
    wait_until: WaitUntil,
) -> None:
    gate = Gate()
    reg = gated_registry(gate)
    engine = _engine(db_path, reg, write_failure_limit_s=0.5, drain_timeout_s=1.0)
    runs = await client.start_many("gated_flow", [[i] for i in range(6)])
    await engine.start()
    await wait_until(lambda: gate.waiting == 6, "every gated step to be in flight")
    with fault(fault_kind, db_path):
        gate.open.set()
        with pytest.raises(EngineCrashed) as crashed:
            async with asyncio.timeout(30):
                await engine.wait()
    assert isinstance(crashed.value.__cause__, errors.StoreError)
    assert "write_failure_limit_s" in str(crashed.value)
    assert len(_cannot_write_errors(engine_log)) >= 1

    # What the crashed engine held comes back: its claims are reclaimed after the lease, the
    # steps run again (at least once), and every run ends with the right result.
    async with _engine(db_path, reg):
        results = [await client.result(r, timeout=15) for r in runs]
    assert results == [i * 10 + 1 for i in range(6)]
    report = check.check(db_path)
    assert report.ok, report.summary()


# --- steps that hang -----------------------------------------------------------------------------


async def test_a_step_hanging_past_its_timeout_frees_its_slot_and_is_retried(
    engine_factory: EngineFactory, client: Client
) -> None:
    reg = Registry()
    attempts: dict[str, int] = {}
    release_threads = threading.Event()

    @step(registry=reg, name="hangs_once", timeout=0.2, retry=RetryPolicy(initial_backoff_s=0.01))
    async def hangs_once(key: str) -> str:
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] == 1:
            await asyncio.Event().wait()  # never set: only the timeout ends this
        return f"{key} done"

    @step(
        registry=reg,
        name="hangs_once_in_a_thread",
        timeout=0.2,
        retry=RetryPolicy(initial_backoff_s=0.01),
    )
    def hangs_once_in_a_thread(key: str) -> str:
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] == 1:
            release_threads.wait(30)  # a thread cannot be cancelled; the slot is freed anyway
        return f"{key} done"

    @step(registry=reg, name="quick")
    async def quick(x: int) -> int:
        return x

    @workflow(registry=reg, name="hanging")
    async def hanging(ctx: Any, key: str, in_thread: bool) -> str:
        return await (hangs_once_in_a_thread(key) if in_thread else hangs_once(key))

    @workflow(registry=reg, name="quick_flow")
    async def quick_flow(ctx: Any, x: int) -> int:
        return await quick(x)

    try:
        # One slot in one shard: the others get it only if the hung attempt gives it back.
        async with engine_factory(reg, concurrency=1):
            hung = [
                await client.start(hanging, "a", False, shard_key="one"),
                await client.start(hanging, "b", True, shard_key="one"),
            ]
            later = await client.start(quick_flow, 7, shard_key="one")
            assert await client.result(later, timeout=15) == 7
            assert [await client.result(r, timeout=15) for r in hung] == ["a done", "b done"]
    finally:
        release_threads.set()
    assert attempts == {"a": 2, "b": 2}
    status = await client.status(hung[0])
    assert status.status == "succeeded"


# --- user code raising what asyncio treats as fatal -------------------------------------------


def _raise(kind: str) -> None:
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if kind == "SystemExit":
        raise SystemExit(3)
    raise asyncio.CancelledError


@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit", "CancelledError"])
@pytest.mark.parametrize("in_thread", [False, True], ids=["async", "thread"])
async def test_a_step_raising_a_base_exception_is_that_steps_failure(
    engine_factory: EngineFactory, client: Client, kind: str, in_thread: bool
) -> None:
    reg = Registry()
    once = RetryPolicy(max_attempts=1)

    @step(registry=reg, name="bad_async", retry=once)
    async def bad_async() -> None:
        _raise(kind)

    @step(registry=reg, name="bad_sync", retry=once)
    def bad_sync() -> None:
        _raise(kind)

    @step(registry=reg, name="fine")
    async def fine() -> str:
        return "fine"

    @workflow(registry=reg, name="calls_bad")
    async def calls_bad(ctx: Any) -> str:
        try:
            await (bad_sync() if in_thread else bad_async())
        except StepFailed as exc:
            return exc.error_type
        return "no error"

    @workflow(registry=reg, name="calls_fine")
    async def calls_fine(ctx: Any) -> str:
        return await fine()

    async with engine_factory(reg) as engine:
        run = await client.start(calls_bad)
        assert await client.result(run, timeout=15) == kind
        # The engine is still up and working.
        assert await client.result(await client.start(calls_fine), timeout=15) == "fine"
        assert engine.fatal is None and not engine.draining


@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit", "CancelledError"])
async def test_a_workflow_raising_a_base_exception_fails_its_run(
    engine_factory: EngineFactory, client: Client, kind: str
) -> None:
    reg = Registry()

    @step(registry=reg, name="fine")
    async def fine() -> str:
        return "fine"

    @workflow(registry=reg, name="raises")
    async def raises(ctx: Any, after_a_step: bool) -> None:
        if after_a_step:
            await fine()
        _raise(kind)

    @workflow(registry=reg, name="calls_fine")
    async def calls_fine(ctx: Any) -> str:
        return await fine()

    async with engine_factory(reg) as engine:
        for after_a_step in (False, True):
            run = await client.start(raises, after_a_step)
            with pytest.raises(errors.WorkflowFailed) as failed:
                await client.result(run, timeout=15)
            recorded = failed.value.error["type"]
            assert recorded == kind or (kind == "CancelledError" and recorded == "Cancelled")
        assert await client.result(await client.start(calls_fine), timeout=15) == "fine"
        assert engine.fatal is None and not engine.draining
    report = check.check(client.db.path)
    assert report.ok, report.summary()


# --- workflow code blocking the event loop ------------------------------------------------------


async def test_a_workflow_blocking_the_loop_is_logged_by_name(
    engine_factory: EngineFactory, client: Client, engine_log: pytest.LogCaptureFixture
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="blocks_the_loop")
    async def blocks_the_loop(ctx: Any) -> str:
        time.sleep(1.3)  # noqa: ASYNC251 - the bug under test: blocking code in a workflow
        return "done"

    async with engine_factory(reg):
        run = await client.start(blocks_the_loop)
        assert await client.result(run, timeout=15) == "done"
    warnings = [r.getMessage() for r in engine_log.records if r.levelno == logging.WARNING]
    named = [w for w in warnings if "blocks_the_loop" in w and run in w]
    assert named, warnings
    assert any("event loop" in w and "blocked" in w for w in warnings), warnings


# --- a step that finishes while its run is parked ----------------------------------------------


class ParkScenario:
    """A run parked (its code changed under it) while one of its steps is still in flight."""

    def __init__(self) -> None:
        self.changed = False
        self.slow_gate = asyncio.Event()
        self.fast_gate = asyncio.Event()
        self.reg = Registry()

        @step(registry=self.reg, name="slow")
        async def slow() -> str:
            await self.slow_gate.wait()
            return "slow"

        @step(registry=self.reg, name="fast")
        async def fast() -> str:
            await self.fast_gate.wait()
            return "fast"

        @step(registry=self.reg, name="other")
        async def other() -> str:
            return "other"

        @workflow(registry=self.reg, name="parks")
        async def parks(ctx: Any) -> str:
            pending = ctx.step(slow)
            if self.changed:  # a deploy that changed the code under a running run
                await other()
            await fast()
            return str(await pending)

    async def park_with_slow_in_flight(
        self, engine: Engine, client: Client, wait_until: WaitUntil
    ) -> str:
        run = await client.start("parks")
        await wait_until(lambda: engine.load()["in_flight"] == 2, "slow and fast in flight")
        self.changed = True
        self.fast_gate.set()  # its result makes the engine replay the changed code: parked
        await wait_until(lambda: _status_is(client, run, "parked"), "the run to be parked")
        self.slow_gate.set()  # slow finishes while its run is parked
        await wait_until(lambda: engine.load()["in_flight"] == 0, "slow to finish")
        self.changed = False  # the fix is deployed
        return run


async def _status_is(client: Client, run: str, status: str) -> bool:
    return (await client.status(run)).status == status


async def test_a_step_finishing_while_its_run_is_parked_is_kept_for_resume(
    engine_factory: EngineFactory,
    client: Client,
    db_path: Path,
    wait_until: WaitUntil,
    dbfile: DbFile,
) -> None:
    scenario = ParkScenario()
    async with engine_factory(scenario.reg, instance_cache_size=0) as engine:
        run = await scenario.park_with_slow_in_flight(engine, client, wait_until)
        # slow's result is recorded while parked, with a replay entry the engine consumes without
        # running the code. Resume at once, so that it can land between that replay's read of the
        # parked run and its commit: the commit must not delete the entry resume queued.
        await wait_until(
            lambda: dbfile.value(STEP_SEQ, dbfile.rid(run), 0) is not None,
            "slow's result recorded",
        )
        assert await client.resume(run)
        assert await client.result(run, timeout=10) == "slow"
    report = check.check(db_path)
    assert report.ok, report.summary()


# --- durability ----------------------------------------------------------------------------------


def _journal_settings(conn: sqlite3.Connection) -> tuple[str, int]:
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return str(mode), int(conn.execute("PRAGMA synchronous").fetchone()[0])


@pytest.mark.parametrize(("durability", "synchronous"), [("normal", 1), ("full", 2)])
async def test_durability_is_wal_with_the_matching_fsync_policy(
    db_path: Path, durability: Literal["normal", "full"], synchronous: int
) -> None:
    # What a power loss can cost follows from these two settings (docs/RELIABILITY.md): WAL with
    # synchronous=NORMAL never corrupts but may lose the last commits; FULL fsyncs every commit.
    db = await Database.open(DatabaseConfig(path=db_path, durability=durability), shards=2)
    try:
        assert await db.run(_journal_settings) == ("wal", synchronous)
    finally:
        await db.close()


_FAILED_START = """
import asyncio, sys
from pathlib import Path
from executor import Registry, errors
from tests.support.engine import make_engine, write_lock

db = Path(sys.argv[1])
async def main() -> None:
    async with make_engine(Registry(), db):
        pass  # a migrated file: opening it needs no write, so the start fails after opening it
    with write_lock(db):  # the engine's start cannot register itself
        try:
            await make_engine(Registry(), db, database={"busy_timeout_s": 0.1}).start()
        except errors.StoreError as exc:
            print("start failed:", exc, flush=True)
asyncio.run(main())
"""


def test_a_start_that_fails_after_opening_the_database_lets_the_process_exit(
    db_path: Path,
) -> None:
    # A failed start used to leave the database open: its worker thread kept the interpreter
    # alive, and `executor run` hung after printing its error instead of exiting 3.
    done = subprocess.run(
        [sys.executable, "-c", _FAILED_START, str(db_path)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=30,  # generous: a healthy process exits within a second
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "start failed:" in done.stdout and "database is locked" in done.stdout, done.stdout
