"""A throwaway PostgreSQL cluster for tests: initdb in a temp folder, a Unix socket only, no fsync.

conftest.py starts one per session (`pg_cluster`, only when a test asks for it) and gives each
test a fresh database of it (`pg_url`, `database_url`). The binaries are Debian's
(/usr/lib/postgresql/<newest>/bin; `EXECUTOR_PG_BIN` overrides); `.ci/run` installs them. A
missing PostgreSQL is an error, never a skip: a test that asked for PostgreSQL and did not get it
must not pass.

initdb and postgres refuse to run as root, so as root they run as the `postgres` user that
Debian's package creates (`runuser -u postgres --`), in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

# Per-test databases are copies of this one (CREATE DATABASE ... TEMPLATE): cheaper than
# creating and migrating each. What it holds is up to `prepare_template`.
TEMPLATE = "executor_template"
_SERVER_OPTIONS = [
    "listen_addresses=''",  # the Unix socket only: no port clashes, nothing on the network
    "fsync=off",  # a test cluster dies with the test session: durability buys nothing here
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
    "deadlock_timeout=100ms",
]


# A memory file system where there is one with room (a container's may have 64 MB): creating a
# database writes a few hundred small files, ten times faster there than on a disk (measured).
_TMPFS = Path("/dev/shm")
_TMPFS_ROOM = 1 << 30


def _temp_parent() -> str | None:
    try:
        fs = os.statvfs(_TMPFS)
    except OSError:
        return None
    return str(_TMPFS) if fs.f_bavail * fs.f_frsize >= _TMPFS_ROOM else None


class PostgresMissing(RuntimeError):
    pass


def find_bin() -> Path:
    """The folder of the newest installed PostgreSQL's initdb/pg_ctl."""
    override = os.environ.get("EXECUTOR_PG_BIN")
    if override:
        folder = Path(override)
        if not (folder / "initdb").exists():
            raise PostgresMissing(f"EXECUTOR_PG_BIN={override}: no initdb there")
        return folder
    candidates = sorted(
        (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresMissing(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH):"
        " the tests parametrized over PostgreSQL need it. Install Debian's `postgresql`"
        " (.ci/run does), or set EXECUTOR_PG_BIN to the folder holding initdb and pg_ctl."
    )


class Cluster:
    """One running test cluster. `url(name)` is a libpq URL for a database of it."""

    def __init__(self, root: Path, bindir: Path) -> None:
        self.root = root
        self.bindir = bindir
        self.data = root / "data"
        self.log = root / "server.log"
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresMissing(
                    "running as root, and there is no `postgres` user to run initdb as"
                    " (Debian's postgresql package creates it)"
                ) from None
            os.chown(root, owner.pw_uid, owner.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count(1)
        self.started_s = 0.0

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._prefix, *argv], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise PostgresMissing(
                f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}\n{tail}"
            )

    def start(self) -> None:
        started = time.monotonic()
        self._run(
            str(self.bindir / "initdb"),
            "--no-sync",
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "-D",
            str(self.data),
        )
        options = " ".join(f"-c {option}" for option in _SERVER_OPTIONS)
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            f"{options} -k {self.root}",
            "start",
        )
        self.started_s = time.monotonic() - started

    def stop_argv(self) -> list[str]:
        # immediate: the cluster is thrown away, a clean shutdown would only write checkpoints.
        return [
            *self._prefix,
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            "immediate",
            "stop",
        ]

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(self.stop_argv(), capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self, template: str | None = None) -> str:
        """A new, empty (or copied from `template`) database; returns its name."""
        name = f"t_{next(self._names)}"
        with self.admin() as conn:
            if template is None:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
            else:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a daemon a test left running (or killed mid-transaction) must not keep it alive.
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """A started cluster in a fresh temp folder, stopped and removed afterwards."""
    bindir = find_bin()
    # Not pytest's tmp_path: its folders are private to the current user, and the server may
    # run as another one. A short path, too: a Unix socket's path is limited to ~107 bytes.
    root = Path(tempfile.mkdtemp(prefix="executor-pg-", dir=_temp_parent()))
    cluster = Cluster(root, bindir)
    # pg_ctl's server outlives us: if this process dies without its finally (SIGKILL, `timeout`),
    # the reaper stops the cluster. It waits for the end of a pipe only this process holds.
    read_end, write_end = os.pipe()
    reaper = subprocess.Popen(
        [sys.executable, "-c", _REAPER, json.dumps(cluster.stop_argv()), str(root)],
        stdin=read_end,
        start_new_session=True,  # not in the terminal's process group: ^C reaches only us
    )
    os.close(read_end)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        os.close(write_end)
        reaper.wait(60)


# The reaper (see running_cluster): blocks until the test process's end of the pipe closes,
# however it ended, then stops the cluster if it still runs and removes its folder.
_REAPER = """
import json, os, shutil, subprocess, sys
sys.stdin.buffer.read()
argv, root = json.loads(sys.argv[1]), sys.argv[2]
if os.path.exists(os.path.join(root, "data", "postmaster.pid")):
    subprocess.run(argv, capture_output=True, timeout=60, check=False)
shutil.rmtree(root, ignore_errors=True)
"""


def prepare_template(cluster: Cluster) -> None:
    """The template every `pg_url` database copies: executor's schema, migrated once, with no
    shard count yet (each test's first open records its own)."""
    from executor.store import pgdatabase

    with cluster.admin() as conn:
        conn.execute(f'CREATE DATABASE "{TEMPLATE}" TEMPLATE template0')
    url = cluster.url(TEMPLATE)
    with psycopg.connect(url, autocommit=True) as raw:
        pgdatabase.migrate(pgdatabase.PgConn(raw), url)
