"""A Client opened in the engine's own process (the daemon's retention task does this) must not
disturb the engine's connection. Opening and closing a descriptor of the database file drops
every POSIX lock the process holds on it; a probe that did so (to name why a file cannot be
written) left the engine blind to commits made by other processes: runs started from the CLI
stayed queued for ever."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from executor import Client, Registry, workflow
from tests.support.daemon import child_env
from tests.support.engine import SHARDS, EngineFactory

pytestmark = pytest.mark.anyio

REG = Registry()


@workflow(registry=REG, name="same_process_echo")
async def echo(ctx: Any, value: int) -> int:
    return value


def start_elsewhere(db: Path, value: int) -> str:
    """`executor start` in another process: its commit must reach the engine here."""
    done = subprocess.run(
        [sys.executable, "-m", "executor", "start", "same_process_echo", "--args", f"[{value}]"],
        env=child_env(EXECUTOR_DATABASE_PATH=str(db), EXECUTOR_ENGINE_SHARDS=str(SHARDS)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_clients_in_the_engines_process_leave_its_locks_alone(
    db_path: Path, engine_factory: EngineFactory
) -> None:
    async with engine_factory(REG, instance_cache_size=0):
        for value in range(3):
            # Open and close a client here each time, as the retention task does.
            async with Client(db_path) as client:
                await client.stats()
            run_id = start_elsewhere(db_path, value)
            async with Client(db_path) as client:
                assert await client.result(run_id, timeout=20) == value
