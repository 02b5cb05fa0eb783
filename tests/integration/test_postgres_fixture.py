"""The PostgreSQL test fixtures themselves: one cluster per session, a fresh database per test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.support import REPO, postgres

_seen: list[str] = []


@pytest.mark.parametrize("round", [1, 2])
def test_each_test_gets_its_own_fresh_database(pg_url: str, round: int) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        assert name is not None
        # Nothing a previous test wrote is here: each database is a new copy of the template.
        conn.execute("CREATE TABLE mine (x int)")
        assert name[0] not in _seen
        _seen.append(name[0])


def test_the_empty_database_has_no_tables(pg_empty_url: str) -> None:
    with psycopg.connect(pg_empty_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog',"
            " 'information_schema')"
        ).fetchone()
        assert row == (0,)


def test_the_cluster_listens_on_its_socket_only(pg_cluster: postgres.Cluster) -> None:
    with pg_cluster.admin() as conn:
        row = conn.execute("SHOW listen_addresses").fetchone()
        assert row == ("",)
        assert conn.info.host == str(pg_cluster.root)


def test_database_url_is_a_path_or_a_postgres_url(database_url: str) -> None:
    if database_url.startswith("postgresql://"):
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    else:
        assert database_url.endswith(".sqlite")


def test_a_missing_postgres_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECUTOR_PG_BIN", "/nonexistent")
    with pytest.raises(postgres.PostgresMissing, match="EXECUTOR_PG_BIN"):
        postgres.find_bin()


_HOLD_A_CLUSTER = """
import sys
from tests.support import postgres
with postgres.running_cluster() as cluster:
    print(cluster.root, flush=True)
    sys.stdin.read()
"""


def test_a_killed_test_session_leaves_no_server_behind(tmp_path: Path) -> None:
    # A session killed without its teardown (SIGKILL, `timeout`): the reaper stops the cluster.
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_A_CLUSTER],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        root = Path(proc.stdout.readline().strip())
        pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
        proc.kill()
    deadline = time.monotonic() + 30
    while root.exists() or _alive(pid):
        assert time.monotonic() < deadline, f"cluster {root} (pid {pid}) still there"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
