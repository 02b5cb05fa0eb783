"""Prometheus metrics: scraped, parsed with prometheus_client's own parser, and checked against
the database; the label policy (no run ids, keys or tenants); the daemon's opt-in endpoint bound
to loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from executor import Client, Registry, RetryPolicy, errors, step, workflow
from executor.exporter import registry_for
from executor.store import samples as stored_samples
from executor.store.reader import database_config
from tests.support.daemon import Daemons, daemons_in, poll, with_client, write_config

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support.engine import DbFile, EngineFactory, WaitUntil

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample by (name, sorted labels), through prometheus_client's parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_name(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def scrape_file(database: Path | str) -> str:
    return generate_latest(registry_for(database_config(database))).decode()


def file_size(path: Path | str) -> int:
    return os.stat(path).st_size


@pytest.fixture
def database(database_url: str) -> str:
    """The tests with a database run on SQLite and on PostgreSQL."""
    return database_url


@pytest.mark.anyio
async def test_metrics_match_the_database(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    reg = Registry()
    tries: dict[int, int] = {}

    @step(registry=reg, name="work", retry=RetryPolicy(max_attempts=3, initial_backoff_s=0))
    async def work(i: int) -> int:
        tries[i] = tries.get(i, 0) + 1
        if i % 3 == 0 and tries[i] < 2:
            raise ValueError("once")  # retried, then succeeds
        if i % 5 == 0:
            raise KeyError("always")  # fails for good after 3 attempts
        return i

    @step(registry=reg, name="limited")
    async def limited() -> None:
        raise errors.RateLimited(retry_after=60)

    @workflow(registry=reg, name="jobs")
    async def jobs(ctx: Any, i: int) -> int:
        return await work(i) + await work(i + 1)

    @workflow(registry=reg, name="hits_429")
    async def hits_429(ctx: Any) -> None:
        await limited()

    async with engine_factory(reg) as engine:
        runs = [
            await client.start(jobs, i, concurrency_key=f"tenant-{i}", idempotency_key=f"k{i}")
            for i in range(12)
        ]
        waiting = await client.start(hits_429)
        for run in runs:
            await wait_until(
                lambda r=run: dbfile.value("SELECT finished_at FROM runs WHERE id = ?", r),
                "the run to finish",
            )
        await wait_until(
            lambda: dbfile.value("SELECT count(*) FROM tasks WHERE not_before > ?", time.time()),
            "the 429 to send its step back to the queue",
        )
        last = time.time()
        await wait_until(
            lambda: dbfile.value("SELECT coalesce(max(updated_at), 0) FROM engine_metrics") > last,
            "a heartbeat after the last finish",
        )
        # Scraped while the engine runs, from another connection (read-only).
        samples = parse(await asyncio.to_thread(scrape_file, dbfile.path))
        engine_id = engine.engine_id

    # Runs, from SQL.
    expected_runs = {
        (("status", s), ("workflow", w)): n
        for w, s, n in dbfile.query("SELECT workflow, status, count(*) FROM runs GROUP BY 1, 2")
    }
    assert by_name(samples, "executor_runs") == expected_runs
    assert by_name(samples, "executor_runs_started_total") == {
        (("workflow", "jobs"),): 12,
        (("workflow", "hits_429"),): 1,
    }
    finished = by_name(samples, "executor_runs_finished_total")
    assert finished == {k: v for k, v in expected_runs.items() if k[0][1] != "running"}

    # Steps, against the journal: a step that succeeded or failed for good counts once as such;
    # every other attempt it used was retried.
    journal = dbfile.query(
        "SELECT r.workflow, s.name, s.status, s.attempts FROM steps AS s"
        " JOIN runs AS r ON r.rid = s.run_rid WHERE s.status != 'pending'"
    )
    expected_steps: dict[tuple[str, str, str], int] = {}
    for wf, name, status, attempts in journal:
        for outcome, n in ((status, 1), ("retried", attempts - 1)):
            if n:
                key = (wf, name, outcome)
                expected_steps[key] = expected_steps.get(key, 0) + n
    expected_steps[("hits_429", "limited", "rate_limited")] = dbfile.value(
        "SELECT attempts FROM steps WHERE name = 'limited'"
    )
    steps = {
        (dict(k)["workflow"], dict(k)["step"], dict(k)["outcome"]): v
        for k, v in by_name(samples, "executor_steps_total").items()
    }
    assert steps == expected_steps
    assert expected_steps[("jobs", "work", "failed")] > 0
    assert expected_steps[("jobs", "work", "retried")] > 0

    # The duration histogram counts every attempt, buckets cumulative.
    attempts = dbfile.value("SELECT sum(attempts) FROM steps WHERE name = 'work'")
    assert samples[("executor_step_duration_seconds_count", (("step", "work"),))] == attempts
    assert samples[
        ("executor_step_duration_seconds_bucket", (("le", "+Inf"), ("step", "work")))
    ] == (attempts)
    assert samples[("executor_flush_batch_size_count", ())] >= 1

    # Queues, from SQL: the 429'd step waits; nothing else is queued.
    tasks = by_name(samples, "executor_tasks")
    waiting_now = dbfile.value("SELECT count(*) FROM tasks WHERE not_before > ?", time.time())
    assert sum(v for k, v in tasks.items() if dict(k)["state"] == "waiting") == waiting_now == 1
    assert sum(v for k, v in tasks.items() if dict(k)["state"] == "in_flight") == 0
    assert samples[("executor_epoch", ())] == dbfile.value(
        "SELECT value FROM meta WHERE key = 'epoch'"
    )
    if dbfile.postgres:  # the server's count of the database's size, which the engine grows
        assert (
            0
            < samples[("executor_db_size_bytes", ())]
            <= dbfile.value("SELECT pg_database_size(current_database())")
        )
        assert by_name(samples, "executor_db_wal_bytes") == {}  # the cluster's, not ours
    else:
        assert samples[("executor_db_size_bytes", ())] == file_size(dbfile.path)
    (age,) = by_name(samples, "executor_engine_heartbeat_age_seconds").values()
    assert 0 <= age < 5
    # Once the engine has stopped: no heartbeat age, and its counters stay.
    after = parse(scrape_file(dbfile.path))
    assert by_name(after, "executor_engine_heartbeat_age_seconds") == {}
    assert (
        by_name(after, "executor_steps_total")[
            (("outcome", "succeeded"), ("step", "work"), ("workflow", "jobs"))
        ]
        >= steps[("jobs", "work", "succeeded")]
    )
    # ... but while it ran, a sample row per heartbeat.
    assert dbfile.value("SELECT count(*) FROM samples WHERE engine_id = ?", engine_id) >= 1

    # Labels never carry run ids, idempotency keys or concurrency keys (tenants).
    text = scrape_file(dbfile.path)
    for forbidden in [*runs, waiting, "tenant-", 'k1"']:
        assert forbidden not in text


def test_sampling_off_writes_no_samples(tmp_path: Path) -> None:
    from executor import DatabaseConfig, Engine, EngineConfig

    async def go() -> int:
        engine = Engine(
            EngineConfig(shards=1, heartbeat_interval_s=0.01, lease_s=1.0),
            DatabaseConfig(path=tmp_path / "x.sqlite"),
            reg=Registry(),
            samples=False,
        )
        await engine.start()
        deadline = time.monotonic() + 5
        import sqlite3

        while time.monotonic() < deadline:
            conn = sqlite3.connect(tmp_path / "x.sqlite")
            beats = conn.execute("SELECT heartbeat_at - started_at FROM engines").fetchone()[0]
            rows = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
            conn.close()
            if beats > 0.05:
                break
            await asyncio.sleep(0.01)
        await engine.stop()
        assert engine.telemetry is None
        return int(rows)

    assert asyncio.run(go()) == 0


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    yield from daemons_in(tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening_on(port: int) -> list[str]:
    """Local addresses of TCP sockets listening on `port` (from /proc/net/tcp)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":
            found.append(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_daemon_endpoint_is_opt_in_and_on_loopback(tmp_path: Path, daemons: Daemons) -> None:
    port = _free_port()
    config = write_config(tmp_path, metrics={"port": port})
    daemon = daemons.start(config).ready()
    daemon.wait_for_log(rf"metrics: http://127\.0\.0\.1:{port}/metrics")
    assert _listening_on(port) == ["127.0.0.1"]

    db = tmp_path / "executor.sqlite"

    async def go(client: Client) -> list[Any]:
        ids = await client.start_many("echo", [[i] for i in range(5)])
        return [await client.result(i, timeout=20) for i in ids]

    assert len(with_client(db, go)) == 5

    def scrape() -> Samples | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            samples = parse(r.read().decode())
        done = samples.get(
            ("executor_runs_finished_total", (("status", "succeeded"), ("workflow", "echo")))
        )
        steps = sum(by_name(samples, "executor_steps_total").values())
        return samples if done == 5 and steps == 5 else None

    samples = poll(scrape, "the endpoint to count the 5 runs and their steps")
    live = by_name(samples, "executor_engine_heartbeat_age_seconds")
    assert len(live) == 1 and next(iter(live.values())) < 5
    assert samples[("executor_slots", (("state", "total"),))] == 8  # 2 shards x 4
    assert daemon.stop() == 0
    assert _listening_on(port) == []


@pytest.mark.anyio
async def test_a_sample_counts_the_queues_or_carries_the_counts_it_is_given(
    client: Client,
) -> None:
    reg = Registry()

    @workflow(registry=reg, name="idle")
    async def idle(ctx: Any) -> None:
        return None

    await client.start_many(idle, [[]] * 3)  # no engine: three runs waiting for a first replay
    now = time.time()

    def new_sample(at: float) -> stored_samples.Sample:
        return stored_samples.Sample(1, at, 0, 0, 0, 0, 10, 0)

    counted = await client.db.run(stored_samples.record, new_sample(now), 4, b"{}")
    assert (counted.queued, counted.replay_backlog, counted.oldest_created_at) == (0, 3, None)
    assert counted.cost_s > 0
    # Earlier counts are stored as given, with the oldest queued age as of the new sample.
    given = stored_samples.QueueCounts(7, now - 5.0, 2, 0.5)
    assert await client.db.run(stored_samples.record, new_sample(now + 1), 4, b"{}", given) is given
    rows = await client.db.run(stored_samples.read, now - 1)
    assert [(s.queued, s.replay_backlog, s.oldest_queued_s) for s in rows] == [
        (0, 3, None),
        (7, 2, 6.0),
    ]
