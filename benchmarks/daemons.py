"""noop with `--daemons N`: the runs started through the Client, then N real daemon processes
(`python -m executor run`) on one PostgreSQL database, each with its own connection and its share
of the shards (leases); the report of the rate and of each process's CPU.

Steps/s is over the wall from the moment the first daemon is launched (so it includes their
start-up: imports, connecting, taking leases) to the last run's `finished_at`. A daemon's CPU is
read from /proc just before it is stopped (so it includes its start-up too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import pgserver
from benchmarks.options import Options
from executor import config, errors
from executor.client import Client

FLOWS = "benchmarks.daemonflows"  # imported by the daemons (and here, only to start runs)
REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.1  # how often the runs' statuses are read while the daemons work
STOP_S = 60.0  # a daemon's drain after SIGTERM before it is killed


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--daemons",
        type=int,
        default=0,
        metavar="N",
        help="PostgreSQL only: start the W runs first, then run them in N daemon processes"
        " (`python -m executor run`) on the --database instead of the in-process engine;"
        " steps/s over the wall from the first daemon's launch to the last finish, with each"
        " daemon's CPU and the server's (default: 0, in-process)",
    )


def check(opts: Options, daemons: int) -> None:
    if daemons < 1:
        raise errors.ExecutorError(f"--daemons must be at least 1, got {daemons}")
    if not opts.database:
        raise errors.ExecutorError(
            "--daemons needs --database postgresql://...: daemon processes share one database"
            " only on PostgreSQL (one SQLite file has one daemon)"
        )
    if opts.workload != "noop":
        raise errors.ExecutorError(f"--daemons runs the noop workload only, not {opts.workload}")


def _config_text(opts: Options, url: str) -> str:
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "\n".join(
        [
            "[database]",
            f"url = {quoted(url)}",
            "[engine]",
            f"shards = {opts.shards}",
            f"concurrency = {opts.concurrency}",
            f"poll_interval_s = {opts.poll_interval!r}",
            f"instance_cache_size = {opts.instance_cache}",
            "[daemon]",
            f"workflows = [{quoted(FLOWS)}]",
            "[log]",
            'format = "text"',
            'level = "warning"',
            "[metrics]",
            f"samples = {'true' if opts.metrics else 'false'}",
            "",
        ]
    )


async def _start_runs(opts: Options, url: str) -> float:
    """Start the W runs (migrating the database first); the seconds it took."""
    from benchmarks.daemonflows import sequential

    t0 = time.perf_counter()
    async with Client(config.DatabaseConfig(url=url), shards=opts.shards) as client:
        for first in range(0, opts.workflows, opts.batch):
            n = min(opts.batch, opts.workflows - first)
            await client.start_many(sequential, [[opts.steps, first + i] for i in range(n)])
    return time.perf_counter() - t0


def _counts(url: str) -> tuple[dict[str, int], float | None]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
        last = conn.execute("SELECT max(finished_at) FROM runs").fetchone()
    return {str(s): int(n) for s, n in rows}, None if last is None else last[0]


def run(opts: Options, daemons: int, folder: Path) -> dict[str, Any]:
    check(opts, daemons)
    url = opts.database
    assert url is not None
    pgserver.check_fresh(url)
    start_s = asyncio.run(_start_runs(opts, url))
    server = pgserver.postmaster_pid(url)
    cfg = folder / "executor.toml"
    cfg.write_text(_config_text(opts, url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXECUTOR_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    procs: list[subprocess.Popen[bytes]] = []
    cpu: list[float] = []
    codes: list[int | None] = []
    crashed: str | None = None
    counts: dict[str, int] = {}
    last: float | None = None
    server0 = pgserver.server_cpu_s(server) if server else None
    t0_wall = time.time()
    deadline = time.monotonic() + opts.timeout
    try:
        with contextlib.ExitStack() as logs:
            for n in range(daemons):
                log = logs.enter_context((folder / f"daemon-{n}.log").open("wb"))
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "executor", "run", "--config", str(cfg)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        env=env,
                        cwd=folder,
                    )
                )
        while time.monotonic() < deadline:
            counts, last = _counts(url)
            if counts.get("running", 0) == 0:
                break
            dead = [p.pid for p in procs if p.poll() is not None]
            if dead:
                crashed = f"daemon process {dead} exited before the runs finished"
                break
            time.sleep(POLL_S)
        server_used = pgserver.server_cpu_s(server) - server0 if server and server0 else None
        cpu = [pgserver.process_cpu_s(p.pid) if p.poll() is None else float("nan") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                codes.append(p.wait(STOP_S))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
    if crashed is not None:
        crashed += ": " + " | ".join(
            (folder / f"daemon-{n}.log").read_text(errors="replace")[-2000:] for n in range(daemons)
        )
    steps = opts.workflows * opts.steps
    finished = sum(n for s, n in counts.items() if s != "running")
    wall = (last - t0_wall) if last is not None else None
    return {
        "database": "postgresql",
        "daemons": daemons,
        "workflows": opts.workflows,
        "steps_per_workflow": opts.steps,
        "steps": steps,
        "completed": finished == opts.workflows,
        "succeeded": counts.get("succeeded", 0),
        "failed": finished - counts.get("succeeded", 0),
        "engine_crashed": crashed,
        "start_s": round(start_s, 4),
        "wall_s": None if wall is None else round(wall, 4),
        "steps_per_s": round(steps / wall, 1) if wall and finished == opts.workflows else None,
        "daemon_cpu_s": [round(c, 3) for c in cpu],
        "daemon_cpu_us_per_step": round(sum(cpu) / steps * 1e6, 1) if cpu else None,
        "daemon_exit_codes": codes,
        "server_cpu_s": None if server_used is None else round(server_used, 3),
        "server_cpu_us_per_step": (
            None if server_used is None else round(server_used / steps * 1e6, 1)
        ),
    }
