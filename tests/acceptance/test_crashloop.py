"""The crash loop: a daemon SIGKILLed at random moments, again and again, loses nothing.

500 runs of mixed shapes (tests/support/flows.py: sequential steps, fan-out and join,
durable sleeps, steps that fail and are retried, steps that fail for good) run under
`python -m executor run`, which is killed with SIGKILL 20 times and restarted each time. At the end:

- every run finished with the result computed from its arguments alone;
- `executor check` (the library function and the CLI verb) finds nothing broken;
- every step's result is recorded exactly once (one journal row, one seq, no execution began
  after it was recorded);
- every step ran at least once, and each extra execution is explained: the one before it failed
  (a retry), or it ran in a daemon that was killed before the result was recorded.

The test is seeded: it prints its seed, and CRASHLOOP_SEED=<seed> replays the same workload and
kill moments (the timing of the processes themselves cannot be replayed).

The long form runs while CRASHLOOP_ITERATIONS (kills) or CRASHLOOP_SECONDS is set, e.g.
`CRASHLOOP_SECONDS=3600 pytest -m slow tests/acceptance/test_crashloop.py`; it starts another
wave of runs whenever the previous one has finished, and is skipped when neither variable is set.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from executor import Client, check
from tests.support import flows as app
from tests.support.daemon import DaemonProcess, child_env, write_config

SEED_ENV = "CRASHLOOP_SEED"
ITERATIONS_ENV = "CRASHLOOP_ITERATIONS"
SECONDS_ENV = "CRASHLOOP_SECONDS"

RUNS = 500
KILLS = 20
SHARDS = 4
KILL_AFTER_S = (0.05, 1.5)  # a kill lands this long after a start: during startup, or later
FINISH_DEADLINE_S = 60.0  # for the last daemon to finish everything (generous; never waited)
EXIT_DEADLINE_S = 30.0

LEASE_S = 1.0

# The daemon's settings over the shared fast ones (tests/support/daemon.py).
ENGINE = {"shards": SHARDS, "concurrency": 2, "lease_s": LEASE_S}


# --- the workload --------------------------------------------------------------------------------


def workload(rng: random.Random, n: int) -> list[tuple[str, list[Any]]]:
    """n runs of mixed shapes, from the seed alone."""
    out: list[tuple[str, list[Any]]] = []
    for _ in range(n):
        shape = rng.random()
        value = rng.randrange(1000)
        if shape < 0.30:
            out.append(("crashloop.sequential", [value, rng.randint(1, 6)]))
        elif shape < 0.55:
            out.append(("crashloop.fanout", [value, rng.randint(2, 8)]))
        elif shape < 0.75:
            out.append(("crashloop.sleeper", [value, round(rng.uniform(0.05, 0.8), 3)]))
        elif shape < 0.85:
            out.append(("crashloop.flaky", [value, rng.randint(1, 3)]))
        elif shape < 0.90:
            out.append(("crashloop.review", [value, rng.random() < 0.8]))
        elif shape < 0.95:
            out.append(("crashloop.tree", [value, rng.randint(1, 4)]))
        else:
            out.append(("crashloop.doomed", [rng.random() < 0.5]))
    return out


async def _start(db: Path, runs: list[tuple[str, list[Any]]]) -> list[str]:
    by_name: dict[str, list[int]] = collections.defaultdict(list)
    for i, (name, _) in enumerate(runs):
        by_name[name].append(i)
    ids: list[str] = [""] * len(runs)
    async with Client(db, shards=SHARDS) as client:
        for name, indexes in by_name.items():
            started = await client.start_many(name, [runs[i][1] for i in indexes])
            for i, run_id in zip(indexes, started, strict=True):
                ids[i] = run_id
    return ids


def start_runs(db: Path, runs: list[tuple[str, list[Any]]]) -> dict[str, tuple[str, list[Any]]]:
    ids = asyncio.run(_start(db, runs))
    return dict(zip(ids, runs, strict=True))


def send_signals(db: Path, runs: dict[str, tuple[str, list[Any]]], share: float, seed: int) -> int:
    """Signal a share of the review runs that wait for one (all of them with share=1), from this
    process, whether a daemon runs or not. Each send has a key: a repeat is a no-op."""
    rng = random.Random(seed)
    chosen = [
        (run_id, args[0])
        for run_id, (name, args) in runs.items()
        if name == "crashloop.review" and args[1] and rng.random() < share
    ]

    async def go() -> int:
        async with Client(db, shards=SHARDS) as client:
            for run_id, value in chosen:
                payload = app.review_payload(value)
                if not await client.signal(run_id, app.REVIEW_TOPIC, payload, key="approve-1"):
                    # Refused: the run has finished, on a signal an earlier call sent it.
                    assert (await client.status(run_id)).finished
        return len(chosen)

    return asyncio.run(go())


# --- the daemon ----------------------------------------------------------------------------------


@dataclass
class Harness:
    tmp: Path
    db: Path
    config: Path
    env: dict[str, str]
    incarnations: int = 0
    kills: dict[int, float] = field(default_factory=dict)  # pid -> when it was SIGKILLed

    @property
    def log(self) -> Path:
        """The steps' log (tests/support/flows.py writes it)."""
        return self.tmp / "steps.log"

    @classmethod
    def create(cls, tmp: Path) -> Harness:
        config = write_config(
            tmp,
            engine=ENGINE,
            daemon={"workflows": ["tests.support.flows"]},
            log={"format": "json"},
        )
        state = tmp / "state"
        state.mkdir()
        env = child_env(**{app.LOG_ENV: str(tmp / "steps.log"), app.STATE_ENV: str(state)})
        return cls(tmp, tmp / "executor.sqlite", config, env)

    def spawn(self) -> DaemonProcess:
        self.incarnations += 1
        log = self.tmp / f"daemon-{self.incarnations:03d}.log"
        return DaemonProcess(self.config, log, env=self.env, cwd=self.tmp)

    def kill(self, d: DaemonProcess) -> None:
        if d.proc.poll() is not None:
            raise AssertionError(
                f"the daemon exited by itself ({d.proc.returncode}):\n{self.tail()}"
            )
        self.kills[d.pid] = time.time()
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(EXIT_DEADLINE_S)

    def stop(self, d: DaemonProcess) -> int:
        d.send(signal.SIGTERM)
        return d.wait_exit(EXIT_DEADLINE_S)

    def tail(self, lines: int = 40) -> str:
        path = self.tmp / f"daemon-{self.incarnations:03d}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def unfinished(self) -> int:
        with contextlib.closing(sqlite3.connect(self.db, timeout=10)) as conn:
            return int(
                conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
            )

    def wait_finished(self, d: DaemonProcess, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while self.unfinished():
            if d.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({d.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.unfinished()} runs still running after {deadline_s}s:\n"
                    + check.check(self.db, lease_s=LEASE_S).summary()
                )
            time.sleep(0.05)


# --- the verdict ---------------------------------------------------------------------------------


@dataclass
class Execution:
    pid: int
    began: float
    end: str | None = None  # ok | fail | None (killed before it ended)


def executions(log: Path) -> dict[tuple[str, str], list[Execution]]:
    """Per (run, label): each execution, in order, with how it ended."""
    found: dict[tuple[str, str], list[Execution]] = collections.defaultdict(list)
    open_: dict[tuple[str, str, int], list[Execution]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        ev = json.loads(line)
        key = (ev["run"], ev["label"])
        if ev["ev"] == "begin":
            ex = Execution(ev["pid"], ev["t"])
            found[key].append(ex)
            open_[(*key, ev["pid"])].append(ex)
        else:
            # One daemon runs one attempt of a step at a time: an end closes its oldest begin.
            open_[(*key, ev["pid"])].pop(0).end = ev["ev"]
    for exs in found.values():
        exs.sort(key=lambda e: e.began)
    return found


def verdict(h: Harness, runs: dict[str, tuple[str, list[Any]]]) -> dict[str, int]:
    """Assert everything the module docstring promises; return counts for the test's output."""
    for run_id, (name, args) in list(runs.items()):
        runs |= app.children(run_id, name, args)  # children are runs of their own
    with contextlib.closing(sqlite3.connect(h.db)) as conn:
        run_rows = {r[0]: r[1:] for r in conn.execute("SELECT id, status, result, error FROM runs")}
        step_rows = conn.execute(
            "SELECT r.id, s.name, s.status, s.args, s.attempts, s.finished_at, s.seq"
            " FROM steps AS s JOIN runs AS r ON r.rid = s.run_rid WHERE s.kind = 'step'"
        ).fetchall()
    assert set(run_rows) == set(runs)

    wrong = []
    for run_id, (name, args) in runs.items():
        status, result, error = run_rows[run_id]
        want_status, want = app.expected(name, args)
        got = json.loads(result) if status == "succeeded" else json.loads(error or "{}").get("type")
        if (status, got) != (want_status, want):
            wrong.append(
                f"{run_id} {name}{args}: {status} {got!r}, expected {want_status} {want!r}"
            )
    assert not wrong, f"{len(wrong)} runs ended wrong:\n" + "\n".join(wrong[:20])

    recorded: dict[tuple[str, str], tuple[str, int, float]] = {}
    for run_id, _name, status, args, attempts, finished_at, seq in step_rows:
        label = json.loads(args)[1]
        assert (run_id, label) not in recorded, f"{run_id}/{label} is in the journal twice"
        assert status in ("succeeded", "failed") and seq is not None, (run_id, label, status)
        recorded[(run_id, label)] = (status, attempts, finished_at)
    want_steps = {
        (r, label) for r, (name, args) in runs.items() for label in app.labels(name, args)
    }
    assert set(recorded) == want_steps, (
        f"missing {sorted(want_steps - set(recorded))[:10]},"
        f" unexpected {sorted(set(recorded) - want_steps)[:10]}"
    )

    ran = executions(h.log)
    unexplained = []
    counts = collections.Counter[str]()
    for key, (status, attempts, finished_at) in recorded.items():
        exs = ran.get(key, [])
        counts["steps"] += 1
        counts["executions"] += len(exs)
        if not exs:
            unexplained.append(f"{key}: recorded ({status}) but never ran")
            continue
        if len(exs) > attempts:
            unexplained.append(f"{key}: {len(exs)} executions but only {attempts} claims")
        late = [e for e in exs if e.began >= finished_at]
        if late:
            unexplained.append(f"{key}: {len(late)} executions began after the result was recorded")
        want_end = "ok" if status == "succeeded" else "fail"
        if not any(e.end == want_end for e in exs):
            unexplained.append(f"{key}: recorded {status}, but no execution ended {want_end}")
        for before, again in itertools.pairwise(exs):
            if before.end == "fail":
                counts["retried"] += 1
            elif before.pid in h.kills and h.kills[before.pid] < finished_at:
                counts["rerun_after_kill"] += 1
            else:
                unexplained.append(
                    f"{key}: ran again at {again.began:.3f} (pid {again.pid}) after an execution"
                    f" that ended {before.end} in pid {before.pid}, which was"
                    + (" not killed" if before.pid not in h.kills else " killed after recording")
                )
    assert not unexplained, f"{len(unexplained)} problems:\n" + "\n".join(unexplained[:20])
    return dict(counts)


# --- the tests -----------------------------------------------------------------------------------


def crash_loop(tmp: Path, *, kills: int | None, seconds: float | None) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    print(f"crash loop seed: {seed} (replay with {SEED_ENV}={seed})")
    rng = random.Random(seed)
    h = Harness.create(tmp)
    started = time.monotonic()
    runs = start_runs(h.db, workload(rng, RUNS))
    killed = 0
    progress: list[int] = []  # runs unfinished after each kill
    while True:
        if kills is not None and killed >= kills:
            break
        if seconds is not None and time.monotonic() - started >= seconds:
            break
        if seconds is not None and not h.unfinished():
            runs |= start_runs(h.db, workload(rng, RUNS))  # the long form: another wave
        daemon = h.spawn()
        # The random moment of the kill is the point of the test, not a stand-in for waiting.
        time.sleep(rng.uniform(*KILL_AFTER_S))
        if rng.random() < 0.5:
            send_signals(h.db, runs, 0.2, rng.randrange(2**32))  # while a daemon runs
        h.kill(daemon)
        if rng.random() < 0.5:
            send_signals(h.db, runs, 0.2, rng.randrange(2**32))  # while none runs
        killed += 1
        progress.append(h.unfinished())
    # Right after a kill, its claims are stale until the next daemon's heartbeat reclaims them.
    after_kill = check.check(h.db, lease_s=LEASE_S)
    assert {p.kind for p in after_kill.problems} <= {check.STALE_CLAIM}, after_kill.summary()

    send_signals(h.db, runs, 1.0, 0)  # the rest (and repeats, which change nothing)
    last = h.spawn().wait_registered(h.db, EXIT_DEADLINE_S)
    h.wait_finished(last, FINISH_DEADLINE_S)
    assert h.stop(last) == 0, h.tail()

    report = check.check(h.db, lease_s=LEASE_S)
    assert report.ok, report.summary()
    cli = subprocess.run(
        [sys.executable, "-m", "executor", "check", "--config", str(h.config), "--json"],
        env=h.env,
        capture_output=True,
        text=True,
        timeout=EXIT_DEADLINE_S,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert json.loads(cli.stdout)["ok"] is True

    counts = verdict(h, runs)
    print(
        f"crash loop: {len(runs)} runs, {killed} kills, {h.incarnations} daemons,"
        f" {time.monotonic() - started:.1f}s; {counts}; unfinished after each kill: {progress}"
    )


@pytest.mark.slow
def test_crash_loop(tmp_path: Path) -> None:
    crash_loop(tmp_path, kills=KILLS, seconds=None)


@pytest.mark.slow
@pytest.mark.timeout(0)  # as long as asked for
@pytest.mark.skipif(
    not (os.environ.get(ITERATIONS_ENV) or os.environ.get(SECONDS_ENV)),
    reason=f"the long crash loop runs when {ITERATIONS_ENV} or {SECONDS_ENV} is set",
)
def test_crash_loop_long(tmp_path: Path) -> None:
    iterations = os.environ.get(ITERATIONS_ENV)
    seconds = os.environ.get(SECONDS_ENV)
    crash_loop(
        tmp_path,
        kills=int(iterations) if iterations else None,
        seconds=float(seconds) if seconds else None,
    )
