"""Replays: the replay invariant under load, nondeterminism detection, parallel steps replaying
identically in any completion order, the hydration cache, and how often payloads are decoded."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor import (
    Client,
    Engine,
    RateLimited,
    Registry,
    RetryPolicy,
    codec,
    errors,
    step,
    vocabulary,
    workflow,
)
from executor.engine.cache import HydrationCache
from executor.engine.instance import RunInfo, WorkflowInstance
from executor.engine.replayer import replay_run
from executor.store import repository as repo

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory, WaitUntil

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


DEADLINE_S = 15.0
LIMIT = codec.DEFAULT_LIMIT_BYTES


async def wait_all(client: Client, ids: list[str]) -> list[Any]:
    return [await client.result(r, timeout=DEADLINE_S) for r in ids]


# --- invariant 2 under a mixed workload ----------------------------------------------------------


class InvariantSampler:
    """Checks for stuck runs from its own thread and connection, at moments unrelated to the
    engine's, for as long as it runs."""

    def __init__(self, stuck_runs: Callable[[], list[str]]) -> None:
        self.stuck_runs = stuck_runs
        self.samples = 0
        self.violations: list[list[str]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="invariant-sampler")

    def _run(self) -> None:
        rng = random.Random(3)
        try:
            while not self._stop.is_set():
                stuck = self.stuck_runs()
                self.samples += 1
                if stuck:
                    self.violations.append(stuck)
                # Sample at irregular moments relative to the engine's own rhythm.
                self._stop.wait(rng.uniform(0, 0.003))
        except BaseException as exc:  # the test checks it
            self.error = exc

    def __enter__(self) -> InvariantSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=DEADLINE_S)


def mixed_workload(reg: Registry) -> dict[str, Any]:
    failures: dict[str, int] = {}

    def fail_first(key: str, times: int) -> bool:
        failures[key] = failures.get(key, 0) + 1
        return failures[key] <= times

    @step(registry=reg, name="inc")
    async def inc(x: int) -> int:
        return x + 1

    @step(registry=reg, name="nap")
    async def nap(x: int, ms: int) -> int:
        await asyncio.sleep(ms / 1000)  # stands in for work of varying length
        return x

    @step(registry=reg, name="flaky", retry=RetryPolicy(initial_backoff_s=0.005, jitter=0))
    async def flaky(key: str) -> str:
        if fail_first(key, 1):
            raise ConnectionError("first attempt fails")
        return key

    @step(registry=reg, name="throttled")
    async def throttled(key: str) -> str:
        if fail_first(key, 1):
            raise RateLimited(retry_after=0.005)
        return key

    @step(registry=reg, name="broken", retry=RetryPolicy(max_attempts=1))
    async def broken() -> None:
        raise RuntimeError("always")

    @workflow(registry=reg, name="mixed")
    async def mixed(ctx: Any, i: int) -> list[Any]:
        x = 0
        for _ in range(3):
            x = await inc(x)
        fan = await asyncio.gather(*(nap(j, (i * 7 + j * 3) % 5) for j in range(3)))
        if i % 3 == 0:
            await ctx.sleep(0.01)
        key = f"{ctx.run_id}"
        got = [await flaky(key + "f"), await throttled(key + "t")]
        try:
            await broken()
        except errors.StepFailed as exc:
            got.append(exc.error_type)
        return [x, list(fan), got == [key + "f", key + "t", "RuntimeError"]]

    return {"mixed": mixed}


@pytest.mark.parametrize("instance_cache_size", [10_000, 0])
async def test_a_running_run_always_has_a_task_a_timer_or_a_replay_entry(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    wait_until: WaitUntil,
    instance_cache_size: int,
) -> None:
    reg = Registry()
    mixed_workload(reg)
    runs = 30
    with InvariantSampler(dbfile.stuck_runs) as sampler:
        ids = await client.start_many("mixed", [[i] for i in range(runs)])
        async with engine_factory(
            reg, concurrency=4, instance_cache_size=instance_cache_size
        ) as first:
            await wait_until(
                lambda: dbfile.value("SELECT count(*) FROM runs WHERE status != 'running'") >= 8,
                "some runs to finish",
            )
        assert first.load()["in_flight"] == 0
        # Stopped mid-way: unfinished runs must still have a way forward.
        assert dbfile.value("SELECT count(*) FROM runs WHERE status = 'running'") > 0
        assert dbfile.stuck_runs() == []
        async with engine_factory(reg, concurrency=4, instance_cache_size=instance_cache_size):
            results = await wait_all(client, ids)
        assert dbfile.stuck_runs() == []
    assert sampler.error is None
    assert sampler.violations == []
    assert sampler.samples >= 20
    assert results == [[3, [0, 1, 2], True]] * runs
    assert dbfile.value("SELECT count(*) FROM tasks") == 0
    assert dbfile.value("SELECT count(*) FROM replays") == 0


# --- nondeterminism ------------------------------------------------------------------------------


def original_code(reg: Registry, calls: list[str]) -> None:
    @step(registry=reg, name="fetch")
    async def fetch(x: int) -> int:
        calls.append("fetch")
        return x + 1

    @step(registry=reg, name="store")
    async def store(x: int) -> int:
        calls.append("store")
        return x * 2

    @workflow(registry=reg, name="nd")
    async def nd(ctx: Any, x: int) -> int:
        a = await fetch(x)
        await ctx.sleep(0.3)
        return await store(a)


def changed_code(reg: Registry, change: str, calls: list[str]) -> None:
    @step(registry=reg, name="fetch")
    async def fetch(x: int) -> int:
        calls.append("fetch")
        return x + 1

    @step(registry=reg, name="store")
    async def store(x: int) -> int:
        calls.append("store")
        return x * 2

    @workflow(registry=reg, name="nd")
    async def nd(ctx: Any, x: int) -> int:
        if change == "other step at 0":
            a = await store(x)
        else:
            a = await fetch(x)
        if change == "returns early":
            return a
        await ctx.sleep(0.5 if change == "other args at 1" else 0.3)
        return await store(a)


@pytest.mark.parametrize(
    ("change", "position", "journal", "code"),
    [
        ("other step at 0", 0, "journal holds step fetch (", "code asked for step store ("),
        ("other args at 1", 1, "journal holds sleep sleep (args", "asked for sleep sleep (args"),
        ("returns early", 1, "journal holds sleep sleep", "code asked for the workflow to return"),
    ],
    ids=["other-step", "other-args", "returns-early"],
)
async def test_changed_code_parks_the_run_until_resumed_or_failed(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    wait_until: WaitUntil,
    change: str,
    position: int,
    journal: str,
    code: str,
) -> None:
    calls: list[str] = []
    v1 = Registry()
    original_code(v1, calls)
    async with engine_factory(v1):
        to_resume = await client.start("nd", 1)
        to_fail = await client.start("nd", 5)
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM timers") == 2, "both runs to sleep"
        )
    assert calls == ["fetch", "fetch"]

    v2 = Registry()
    changed_code(v2, change, calls)
    # Strict: changed arguments park too (by default the recorded result would stand, see
    # test_versioning.py); a changed step or an early return parks under either policy.
    async with engine_factory(v2, replay_args="strict") as engine:
        for run in (to_resume, to_fail):
            await wait_until(
                lambda r=run: dbfile.value("SELECT status FROM runs WHERE id = ?", r) == "parked",
                "the run to be parked",
            )
        assert engine.counters["steps"] == 0
    assert calls == ["fetch", "fetch"]  # never silently re-run

    for run in (to_resume, to_fail):
        status = await client.status(run)
        assert status.status == "parked" and status.error is not None
        assert status.error["type"] == "NonDeterminismError"
        message = status.error["message"]
        assert f"run {run}: nondeterminism at position {position}: " in message
        assert journal in message and code in message
        with pytest.raises(errors.RunParked, match=run):
            await client.result(run, timeout=1)
    assert dbfile.stuck_runs() == []

    assert await client.resume(to_resume) is True
    assert await client.fail(to_fail, "code rolled forward") is True
    assert await client.resume(to_fail) is False
    failed = await client.status(to_fail)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error == {"type": "FailedByOperator", "message": "code rolled forward"}

    v3 = Registry()
    original_code(v3, calls)  # the fix: back to code that matches the journal
    async with engine_factory(v3):
        assert await client.result(to_resume, timeout=DEADLINE_S) == 4
    assert calls == ["fetch", "fetch", "store"]
    with pytest.raises(errors.WorkflowFailed, match="code rolled forward"):
        await client.result(to_fail, timeout=1)
    assert await client.fail(to_resume) is False


# --- parallel steps replay identically in any completion order -----------------------------------

RACE = Registry()


@step(registry=RACE, name="work", retry=RetryPolicy(max_attempts=1))
async def work(i: int, delay_ms: int) -> int:
    await asyncio.sleep(delay_ms / 1000)  # stands in for work of varying length
    if i % 5 == 4:
        raise ValueError(f"step {i} fails")
    return i * 10


@workflow(registry=RACE, name="racer")
async def racer(ctx: Any, delays: list[int]) -> dict[str, Any]:
    """Records the order it sees results in, and starts a follow-up step after some of them."""
    futures = {ctx.step(work, i, d): i for i, d in enumerate(delays)}
    pending = set(futures)
    seen: list[list[Any]] = []
    while pending:
        finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for fut in sorted(finished, key=futures.__getitem__):
            i = futures[fut]
            try:
                seen.append([i, fut.result(), ctx.time()])
            except errors.StepFailed as exc:
                seen.append([i, exc.error_type, ctx.time()])
            if i < 100 and i % 2 == 0:
                follow_up = ctx.step(work, 100 + i, delays[i])
                futures[follow_up] = 100 + i
                pending.add(follow_up)
    both = await asyncio.gather(work(200, 1), work(201, 0))
    return {"seen": seen, "gathered": list(both), "random": ctx.random(), "uuid": str(ctx.uuid())}


async def snapshot(client: Client, run_id: str) -> vocabulary.RunSnapshot:
    """What a full replay of the run would load."""
    row = await client.db.run(repo.get_run, run_id)
    assert row is not None
    return (await client.db.run(repo.load_runs, [row.rid]))[row.rid]


def seq_order(snap: vocabulary.RunSnapshot) -> list[int]:
    """Positions of the run's results in the order they were recorded."""
    done = sorted((e for e in snap.journal if e.seq is not None), key=lambda e: e.seq or 0)
    return [e.pos for e in done]


@pytest.fixture
async def race_engine(engine_factory: EngineFactory) -> Any:
    async with engine_factory(RACE, concurrency=16) as engine:
        yield engine


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(delays=st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=6))
async def test_live_results_equal_a_replay_of_the_journal(
    race_engine: Engine, client: Client, delays: list[int]
) -> None:
    run = await client.start(racer, delays)
    result = await client.result(run, timeout=DEADLINE_S)
    check_against_journal(await snapshot(client, run), result, len(delays))


def check_against_journal(snap: vocabulary.RunSnapshot, result: dict[str, Any], n: int) -> None:
    # What the code saw is the recorded order (the first n positions are the first steps).
    seen_positions = [i if i < 100 else None for i, _, _ in result["seen"]]
    recorded = [p if p < n else None for p in seq_order(snap)][: len(seen_positions)]
    assert seen_positions == recorded
    inst = replay_run(snap, RACE)
    try:
        assert inst.nondeterminism is None
        status, blob, error = inst.outcome()
        assert (status, error) == (vocabulary.RunState.SUCCEEDED, None)
        assert blob is not None and orjson.loads(blob) == result
        assert inst.take_steps() == []
    finally:
        inst.close()


async def test_live_instances_and_full_replays_agree(
    engine_factory: EngineFactory, tmp_path: Path
) -> None:
    rng = random.Random(11)
    workload = [[rng.randrange(0, 6) for _ in range(rng.randrange(1, 6))] for _ in range(12)]
    outcomes = {}
    for size in (10_000, 0):
        path = tmp_path / f"cache-{size}.sqlite"
        async with (
            Client(path, shards=2) as client,
            engine_factory(RACE, path=path, instance_cache_size=size) as engine,
        ):
            ids = await client.start_many(racer, [[d] for d in workload])
            results = await wait_all(client, ids)
            for run, result, delays in zip(ids, results, workload, strict=True):
                check_against_journal(await snapshot(client, run), result, len(delays))
            outcomes[size] = [
                {k: v for k, v in r.items() if k not in ("random", "uuid")} for r in results
            ]
            if size == 0:  # every replay is full: at start, after the first steps, after gather
                assert engine.counters["full_replays"] >= 3 * len(workload)
            else:  # one per run (its start); after that, live delivery only
                assert engine.counters["full_replays"] == len(workload)
    # Timing decides the orders the code saw; everything else must match.
    for live, replayed in zip(outcomes[10_000], outcomes[0], strict=True):
        assert live["gathered"] == replayed["gathered"] == [2000, 2010]
        assert sorted(s[:2] for s in live["seen"]) == sorted(s[:2] for s in replayed["seen"])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(min_value=1, max_value=6))
def test_any_completion_order_replays_identically(data: st.DataObject, n: int) -> None:
    """The engine's part played by hand: deliver results in an order hypothesis picks, then
    rebuild from the journal (and from each prefix of it) and compare."""
    wf = RACE.workflow("racer")
    args = [[0] * n]
    run = RunInfo(7, "run-7", 0, 1000.0)
    live = WorkflowInstance(run, wf, args, RACE, HydrationCache(100, 65536), LIMIT, {})
    journal: dict[int, vocabulary.JournalEntry] = {}
    pending_after: list[list[int]] = [sorted(live.pending)]
    seq = 0
    try:
        while True:
            for s in live.take_steps():
                journal[s.pos] = vocabulary.JournalEntry(
                    s.pos, s.kind, s.name, s.fingerprint, "pending", None, None, None, None
                )
            waiting = sorted(p for p in journal if journal[p].seq is None)
            if not waiting:
                break
            pos = data.draw(st.sampled_from(waiting), label="completes next")
            failed = data.draw(st.booleans(), label="fails")
            seq += 1
            entry = journal[pos]._replace(
                status=vocabulary.StepState.FAILED if failed else vocabulary.StepState.SUCCEEDED,
                result=None if failed else orjson.dumps(pos * 3),
                error=errors.error_blob("IOError", f"pos {pos}") if failed else None,
                seq=seq,
                finished_at=1000.0 + seq,
            )
            journal[pos] = entry
            live.deliver(
                vocabulary.Delivery(
                    live.run.rid, pos, seq, entry.status, entry.result, entry.error, 1000.0 + seq
                )
            )
            pending_after.append(sorted(live.pending))
        assert live.nondeterminism is None
        outcome = live.outcome()
        assert outcome[0] in (
            vocabulary.RunState.SUCCEEDED,
            vocabulary.RunState.FAILED,
        )  # failed: a gathered step failed
    finally:
        live.close()

    entries = list(journal.values())
    random.Random(seq).shuffle(entries)  # replay must order by seq, not by how it is given
    for k in range(seq + 1):
        prefix = [
            e if (e.seq or 0) <= k else e._replace(seq=None, status="pending") for e in entries
        ]
        replayed = WorkflowInstance(
            run, wf, args, RACE, HydrationCache(100, 65536), LIMIT, {e.pos: e for e in prefix}
        )
        try:
            replayed.replay(prefix)
            assert replayed.nondeterminism is None
            assert sorted(replayed.pending) == pending_after[k]
            assert replayed.take_steps() == []  # everything it asked for is in the journal
            if k == seq:
                assert replayed.outcome() == outcome
        finally:
            replayed.close()


# --- the hydration cache -------------------------------------------------------------------------


def test_the_hydration_cache_is_bounded_and_keeps_only_immutable_values() -> None:
    cache = HydrationCache(3, 64)
    for i in range(10):
        assert cache.get(("run", i), orjson.dumps(i)) == i
        assert len(cache) <= 3
    assert len(cache) == 3
    before = codec.stats.decodes
    assert cache.get(("run", 9), b"999") == 9  # a hit: neither decoded nor re-read
    assert codec.stats.decodes == before

    first = cache.get(("run", 20), b'{"a": [1]}')
    first["a"].append(2)
    second = cache.get(("run", 20), b'{"a": [1]}')
    assert second == {"a": [1]} and second is not first
    assert cache.get(("run", 21), orjson.dumps("x" * 100)) == "x" * 100  # over max_bytes
    assert cache.get(("run", 21), b'"fresh"') == "fresh"  # so it was not kept
    assert len(HydrationCache(0, 64)) == 0


def test_a_live_result_is_kept_for_replays_unless_decoding_it_costs_less() -> None:
    """A live workflow's result goes into the hydration cache for a later replay, except a tiny
    one (a small int, a short str), which that replay decodes for less than a put costs; the
    replay then keeps it, and gets the same values either way."""
    reg = Registry()
    sequential(reg)
    small, large = 7, "x" * 40  # 1 and 42 bytes of JSON
    cache = HydrationCache(100, 65536)
    snap = vocabulary.RunSnapshot(
        1, "run-1", "long", None, 0, vocabulary.RunState.RUNNING, b"[2]", 10.0, 0, []
    )
    inst = replay_run(snap, reg, cache)
    journal = []
    for seq, value in ((1, small), (2, large)):
        [pos] = inst.pending
        blob = orjson.dumps(value)
        ok = vocabulary.StepState.SUCCEEDED
        inst.deliver(vocabulary.Delivery(1, pos, seq, ok, blob, None, 11.0, value, True))
        fp = codec.fingerprint(orjson.dumps([pos]))
        journal.append(vocabulary.JournalEntry(pos, "step", "same", fp, ok, blob, None, seq, 11.0))
    assert inst.outcome()[:2] == (vocabulary.RunState.SUCCEEDED, b"2")
    inst.close()
    assert dict(cache._lru.items()) == {(1, 0, 1): large}
    before = codec.stats.decodes
    again = replay_run(snap._replace(journal=journal, last_seq=2), reg, cache)
    try:
        assert again.outcome()[:2] == (vocabulary.RunState.SUCCEEDED, b"2")
    finally:
        again.close()
    assert codec.stats.decodes - before == 2  # the run's arguments and the small result
    assert dict(cache._lru.items()) == {(1, 0, 1): large, (1, 0, 0): small}


async def test_a_workflow_mutating_a_result_does_not_change_a_later_replay(
    engine_factory: EngineFactory, client: Client
) -> None:
    reg = Registry()

    @step(registry=reg, name="settings")
    async def settings_step() -> dict[str, Any]:
        return {"n": 1, "items": [1]}

    @step(registry=reg, name="nothing")
    async def nothing(i: int) -> int:
        return i

    @workflow(registry=reg, name="mutates")
    async def mutates(ctx: Any) -> dict[str, Any]:
        cfg = await settings_step()
        cfg["n"] += 1
        cfg["items"].append(len(cfg["items"]) + 1)
        for i in range(3):  # each result is a full replay, with the same cache
            await nothing(i)
        return cfg

    async with engine_factory(reg, instance_cache_size=0) as engine:
        run = await client.start(mutates)
        assert await client.result(run, timeout=DEADLINE_S) == {"n": 2, "items": [1, 2]}
        assert engine.counters["full_replays"] == 5
        snap = await snapshot(client, run)
        for _ in range(2):
            inst = replay_run(snap, reg, engine.hydration)
            try:
                assert orjson.loads(inst.outcome()[1] or b"null") == {"n": 2, "items": [1, 2]}
            finally:
                inst.close()


async def test_errors_and_containers_are_never_cached(
    engine_factory: EngineFactory, client: Client
) -> None:
    reg = Registry()

    @step(registry=reg, name="number")
    async def number() -> int:
        return 5

    @step(registry=reg, name="listing")
    async def listing() -> list[int]:
        return [1, 2]

    @step(registry=reg, name="fails", retry=RetryPolicy(max_attempts=1))
    async def fails() -> None:
        raise OSError("disk on fire")

    @workflow(registry=reg, name="three_kinds")
    async def three_kinds(ctx: Any) -> list[Any]:
        out: list[Any] = [await number(), await listing()]
        try:
            await fails()
        except errors.StepFailed as exc:
            out.append(exc.error["message"])
        return out

    async with engine_factory(reg):
        run = await client.start(three_kinds)
        assert await client.result(run, timeout=DEADLINE_S) == [5, [1, 2], "disk on fire"]
        snap = await snapshot(client, run)
    cache = HydrationCache(100, 65536)
    decodes = []
    for _ in range(3):
        before = codec.stats.decodes
        inst = replay_run(snap, reg, cache)
        decodes.append(codec.stats.decodes - before)
        try:
            assert orjson.loads(inst.outcome()[1] or b"null") == [5, [1, 2], "disk on fire"]
            # Positions the code has passed are dropped, with their result blobs.
            assert inst.journal == {} and len(snap.journal) == 3
        finally:
            inst.close()
        assert len(cache) == 1  # only the int
    # args + int + list + error the first time; then the int comes from the cache.
    assert decodes == [4, 3, 3]


async def test_the_engines_hydration_cache_stays_within_its_size(
    engine_factory: EngineFactory, client: Client
) -> None:
    reg = Registry()

    @step(registry=reg, name="ident")
    async def ident(i: int) -> int:
        return i

    @workflow(registry=reg, name="counts")
    async def counts(ctx: Any, n: int) -> int:
        total = 0
        for i in range(n):
            total += await ident(i)
        return total

    sizes: list[int] = []
    engine_box: list[Engine] = []

    def on_finish(run_id: str, status: str) -> None:
        sizes.append(len(engine_box[0].hydration))

    async with engine_factory(
        reg, hydration_cache_entries=5, instance_cache_size=0, on_finish=on_finish
    ) as engine:
        engine_box.append(engine)
        ids = await client.start_many(counts, [[10]] * 4)
        assert await wait_all(client, ids) == [45] * 4
        assert len(engine.hydration) == 5
    assert len(sizes) == 4 and max(sizes) <= 5


# --- how often payloads are decoded --------------------------------------------------------------


def sequential(reg: Registry) -> None:
    @step(registry=reg, name="same")
    async def same(i: int) -> int:
        return i

    @workflow(registry=reg, name="long")
    async def long(ctx: Any, n: int) -> int:
        for i in range(n):
            await same(i)
        return n


async def decodes_to_finish(
    engine_factory: EngineFactory, client: Client, wait_until: WaitUntil, n: int, **settings: Any
) -> int:
    reg = Registry()
    sequential(reg)
    run = await client.start("long", n)
    before = codec.stats.decodes
    async with engine_factory(reg, **settings):

        async def finished() -> bool:
            # status() decodes nothing for a run without an error: the count is the engine's.
            return (await client.status(run)).finished

        await wait_until(finished, f"{n} steps to run", timeout_s=60)
        used = codec.stats.decodes - before
    assert await client.result(run, timeout=1) == n
    return used


async def test_a_thousand_step_workflow_decodes_each_payload_once(
    engine_factory: EngineFactory, client: Client, wait_until: WaitUntil
) -> None:
    n = 1000
    used = await decodes_to_finish(
        engine_factory,
        client,
        wait_until,
        n,
        instance_cache_size=10_000,
        hydration_cache_entries=100_000,
    )
    # The bound is 2N. Each step's arguments are decoded once (to call it); an int result
    # reaches the live workflow without a decode (the engine still holds the value); the run's
    # own arguments are decoded once. A mutable result (list, dict) would add one decode per step,
    # so that the workflow gets its own copy: 2N + 1 at most.
    assert used <= n + 1


async def test_full_replays_of_int_results_stay_linear(
    engine_factory: EngineFactory, client: Client, wait_until: WaitUntil
) -> None:
    n = 150
    used = await decodes_to_finish(engine_factory, client, wait_until, n, instance_cache_size=0)
    # Each of the n + 1 full replays decodes the run's arguments; results come from the cache.
    assert used <= 3 * n + 1
    assert used < n * n / 4  # nowhere near one decode per result per replay


async def test_replays_of_a_finished_run_decode_nothing_new(tmp_path: Path) -> None:
    reg = Registry()
    sequential(reg)
    snap = vocabulary.RunSnapshot(
        1,
        "run-1",
        "long",
        None,
        0,
        vocabulary.RunState.RUNNING,
        b"[3]",
        10.0,
        3,
        [
            vocabulary.JournalEntry(
                i,
                "step",
                "same",
                codec.fingerprint(orjson.dumps([i])),
                vocabulary.StepState.SUCCEEDED,
                orjson.dumps(i),
                None,
                i + 1,
                10.0 + i,
            )
            for i in range(3)
        ],
    )
    cache = HydrationCache(100, 65536)
    replay_run(snap, reg, cache).close()
    before = codec.stats.decodes
    inst = replay_run(snap, reg, cache)
    try:
        assert inst.outcome()[:2] == (vocabulary.RunState.SUCCEEDED, b"3")
    finally:
        inst.close()
    assert codec.stats.decodes - before == 1  # the run's arguments only
