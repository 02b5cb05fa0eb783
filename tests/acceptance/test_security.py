"""What the daemon exposes: database files readable by the owner only (or the group when asked),
no network socket at all, only the modules the config names are imported, and payloads that stay
data (JSON), never code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from executor import Client, Registry, errors, step, workflow
from tests.support.daemon import DaemonProcess, child_env

if TYPE_CHECKING:
    from tests.support.engine import EngineFactory


INET_TABLES = ("tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6")


@contextlib.contextmanager
def daemon(
    tmp: Path, config: str, *, umask: int = 0o022, pythonpath: Path | None = None
) -> Iterator[DaemonProcess]:
    """`executor run` on a config (TOML text), stopped with SIGTERM (it must exit 0)."""
    path = tmp / "executor.toml"
    path.write_text(config)
    env = child_env(pythonpath=pythonpath, CRASHLOOP_LOG=str(tmp / "steps.log"))
    d = DaemonProcess(path, tmp / "daemon.log", env=env, cwd=tmp, umask=umask)
    try:
        d.ready()
        yield d
    finally:
        code = d.stop()
    assert code == 0, d.log()


def _config(db: Path, *, group_readable: bool = False, modules: tuple[str, ...] = ()) -> str:
    listed = ", ".join(f'"{m}"' for m in modules)
    return (
        f'[database]\npath = "{db}"\ngroup_readable = {str(group_readable).lower()}\n\n'
        "[engine]\nshards = 2\npoll_interval_s = 0.02\nheartbeat_interval_s = 0.2\n"
        f"lease_s = 1.0\n\n[daemon]\nworkflows = [{listed}]\n"
    )


async def _start(db: Path, name: str, *args: Any) -> str:
    async with Client(db) as c:
        return await c.start(name, *args)


async def _outcome(db: Path, run_id: str) -> tuple[str, Any]:
    async with Client(db) as c:
        try:
            return "succeeded", await c.result(run_id, timeout=20)
        except errors.WorkflowFailed as exc:
            return "failed", exc.error
        except errors.RunParked as exc:
            return "parked", exc.message


# --- file modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("group_readable", "mode"), [(False, 0o600), (True, 0o640)])
@pytest.mark.parametrize("umask", [0o000, 0o022], ids=["umask000", "umask022"])
def test_database_files_are_private_whatever_the_umask(
    tmp_path: Path, group_readable: bool, mode: int, umask: int
) -> None:
    db = tmp_path / "executor.sqlite"
    with daemon(tmp_path, _config(db, group_readable=group_readable), umask=umask):
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert modes == dict.fromkeys(modes, oct(mode))


# --- no network ----------------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed since we listed it
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _inet_sockets(pid: int) -> dict[int, str]:
    """Inodes of the process's namespace's TCP/UDP/raw sockets -> their table line."""
    found: dict[int, str] = {}
    for table in INET_TABLES:
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            found[int(fields[9])] = f"{table}: {line.strip()}"
    return found


def test_the_daemon_opens_no_network_socket(tmp_path: Path) -> None:
    db = tmp_path / "executor.sqlite"
    with daemon(tmp_path, _config(db, modules=("tests.support.flows",))) as d:
        run = asyncio.run(_start(db, "crashloop.sequential", 1, 3))
        assert asyncio.run(_outcome(db, run))[0] == "succeeded"  # it really worked meanwhile
        mine = _socket_inodes(d.proc.pid)
        inet = _inet_sockets(d.proc.pid)
    # Sockets it may have are unix ones (sd_notify); none is in a TCP, UDP or raw table.
    assert not {i: inet[i] for i in mine & set(inet)}


# --- what gets imported ------------------------------------------------------------------------


MODULE = """\
from __future__ import annotations
import os
from pathlib import Path
from executor import workflow

Path(os.environ["MARKERS"], "{name}").write_text("imported")


@workflow(name="{name}.flow")
async def flow(ctx, x):
    return ["{name}", x]
"""


def test_only_the_modules_the_config_names_are_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "code"
    markers = tmp_path / "markers"
    code.mkdir()
    markers.mkdir()
    for name in ("listed_flows", "unlisted_flows"):
        (code / f"{name}.py").write_text(MODULE.format(name=name))
    db = tmp_path / "executor.sqlite"
    monkeypatch.setenv("MARKERS", str(markers))  # inherited by the daemon
    with daemon(tmp_path, _config(db, modules=("listed_flows",)), pythonpath=code):
        listed = asyncio.run(_start(db, "listed_flows.flow", 1))
        # A run naming a module the config does not list: the engine looks the name up in its
        # registry, and never imports anything to find it.
        unlisted = asyncio.run(_start(db, "unlisted_flows.flow", 2))
        by_module = asyncio.run(_start(db, "unlisted_flows", 3))
        assert asyncio.run(_outcome(db, listed)) == ("succeeded", ["listed_flows", 1])
        for run in (unlisted, by_module):
            status, error = asyncio.run(_outcome(db, run))
            # Parked (a deploy mistake, resumable), never imported.
            assert status == "parked" and "is not registered" in error, error
    assert sorted(p.name for p in markers.iterdir()) == ["listed_flows"]


# --- payloads are data ---------------------------------------------------------------------------


PAYLOADS: list[Any] = [
    {"__reduce__": ["os.system", ["touch {marker}"]], "__class__": "subprocess.Popen"},
    "__import__('os').system('touch {marker}')",
    "cos\nsystem\n(S'touch {marker}'\ntR.",  # a protocol-0 pickle, as text
    {"py/object": "os.system", "$type": "System.Diagnostics.Process", "!!python/object": 1},
    ["eval", "exec", "compile", "{{{{7*7}}}}"],
]


@pytest.mark.anyio
async def test_arguments_and_results_stay_plain_data(
    engine_factory: EngineFactory, client: Client, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    payloads = [p.replace("{marker}", str(marker)) if isinstance(p, str) else p for p in PAYLOADS]
    payloads[0]["__reduce__"][1] = [f"touch {marker}"]
    reg = Registry()

    @step(registry=reg, name="keep")
    async def keep(value: Any) -> Any:
        return value

    @workflow(registry=reg, name="carry")
    async def carry(ctx: Any, *values: Any) -> Any:
        return [await keep(v) for v in values]

    async with engine_factory(reg):
        run = await client.start(carry, *payloads)
        assert await client.result(run, timeout=15) == payloads
    assert not marker.exists()
