"""Schedules on real SQLite files and PostgreSQL databases: catch-up and overlap policies with a
chosen clock, at most one run per tick across restarts and with two processes firing the same
database, and the Client and config APIs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from executor import Client, config, errors, schedules
from executor.store import repository
from executor.store import schedules as stored
from executor.store.conn import Conn
from executor.vocabulary import RunState

if TYPE_CHECKING:
    from tests.support.engine import DbFile

pytestmark = pytest.mark.anyio
BASE = 1_800_000_000.0  # a whole hour (UTC)
H = 3600.0


@pytest.fixture
def database(database_url: str) -> str:
    """Every test here runs on SQLite and on PostgreSQL."""
    return database_url


@pytest.fixture
def conn(dbfile: DbFile, client: Client) -> Iterator[Conn]:
    """A connection of the store's own kind (the client created the database)."""
    with dbfile.connect() as c:
        yield c


def make(conn: Conn, name: str, *, catchup: str = "skip", overlap: str = "allow") -> None:
    spec = schedules.ScheduleSpec(name, "nightly", "0 * * * *", "UTC", ("x",), catchup, overlap)
    stored.put(conn, schedules.validate(spec, "test"), BASE + 1)  # first tick: BASE + H


def runs_of(dbfile: DbFile, name: str) -> list[tuple[str, bytes]]:
    rows = dbfile.query("SELECT id, args FROM runs WHERE id LIKE ? ORDER BY id", f"{name}@%")
    return [(run_id, bytes(args)) for run_id, args in rows]


@pytest.mark.parametrize(
    ("catchup", "late_s", "fired", "skipped"),
    [
        ("skip", 30, 1, 9),  # the latest tick is on time: it runs, the missed ones do not
        ("skip", 90, 0, 10),  # every tick was missed
        ("once", 90, 1, 9),  # the latest missed tick runs once
        ("all", 90, 10, 0),  # every missed tick runs
    ],
)
async def test_catch_up_policies(
    conn: Conn, dbfile: DbFile, catchup: str, late_s: float, fired: int, skipped: int
) -> None:
    make(conn, "s", catchup=catchup)
    now = BASE + 10 * H + late_s  # ten ticks (BASE+H .. BASE+10H) passed without an engine
    started = stored.fire_due(conn, now)
    assert len(started) == fired
    row = stored.get(conn, "s")
    assert row is not None
    assert (row.fired, row.skipped) == (fired, skipped)
    assert row.next_fire_at == BASE + 11 * H
    if fired:
        assert started[-1] == schedules.tick_id("s", BASE + 10 * H)
        assert runs_of(dbfile, "s")[-1][1] == f'[{BASE + 10 * H},"x"]'.encode()
    assert stored.fire_due(conn, now) == []  # nothing more is due


async def test_a_tick_starts_one_run_across_restarts_and_two_processes(
    conn: Conn, dbfile: DbFile
) -> None:
    make(conn, "s", catchup="all")
    with dbfile.connect() as other:  # a second engine on the database
        first = stored.fire_due(conn, BASE + 2 * H + 5)
        assert first == [schedules.tick_id("s", BASE + H), schedules.tick_id("s", BASE + 2 * H)]
        assert stored.fire_due(other, BASE + 2 * H + 5) == []
        # An engine that planned from a stale next tick (it read the schedule before the other
        # fired): the tick's run id refuses a second run.
        dbfile.execute("UPDATE schedules SET next_fire_at = ?", BASE + H)
        assert stored.fire_due(other, BASE + 2 * H + 5) == []
        assert len(runs_of(dbfile, "s")) == 2
        assert stored.fire_due(other, BASE + 3 * H + 5) == [schedules.tick_id("s", BASE + 3 * H)]


async def test_overlap_policies(conn: Conn, dbfile: DbFile) -> None:
    make(conn, "skip", overlap="skip", catchup="all")
    make(conn, "cancel", overlap="cancel", catchup="all")
    make(conn, "allow", overlap="allow", catchup="all")
    first = stored.fire_due(conn, BASE + H + 5)
    assert len(first) == 3  # nothing ran before
    second = stored.fire_due(conn, BASE + 4 * H + 5)  # three more ticks; the first runs still run
    assert sorted(r.split("@")[0] for r in second) == ["allow"] * 3 + ["cancel"]
    by_name = {n: stored.get(conn, n) for n in ("skip", "cancel", "allow")}
    assert by_name["skip"] is not None and by_name["skip"].skipped == 3
    cancelled = repository.get_run(conn, schedules.tick_id("cancel", BASE + H))
    assert cancelled is not None and cancelled.status == RunState.CANCELLED
    # Once the previous run has finished, `skip` starts the next tick again.
    dbfile.execute("UPDATE runs SET status = 'succeeded' WHERE id LIKE 'skip@%'")
    later = stored.fire_due(conn, BASE + 5 * H + 5)
    assert schedules.tick_id("skip", BASE + 5 * H) in later


async def test_client_and_config_schedules(client: Client, conn: Conn, tmp_path: Path) -> None:
    info = await client.schedule("hourly", "report", "0 * * * *", "eu", timezone="Europe/Paris")
    assert info.source == "client" and info.args == ["eu"] and not info.paused
    assert await client.pause_schedule("hourly") is True
    assert await client.pause_schedule("hourly") is False
    assert stored.fire_due(conn, info.next_fire_at + 1) == []  # paused
    assert await client.resume_schedule("hourly") is True
    run_id = await client.trigger_schedule("hourly")
    assert run_id.startswith("hourly@") and (await client.status(run_id)).workflow == "report"
    with pytest.raises(errors.ScheduleNotFound):
        await client.pause_schedule("nope")
    for bad in (
        {"cron": "61 * * * *"},
        {"timezone": "Mars/Olympus"},
        {"catchup": "sometimes"},
        {"overlap": "queue"},
    ):
        kwargs = {"cron": "* * * * *", **bad}
        cron = kwargs.pop("cron")
        with pytest.raises(errors.ExecutorError, match=next(iter(bad))):
            await client.schedule("bad", "report", cron, **kwargs)

    path = tmp_path / "executor.toml"
    path.write_text(
        '[schedules.nightly]\nworkflow = "evals"\ncron = "0 3 * * *"\nargs = ["suite-a"]\n'
        'catchup = "once"\n'
    )
    loaded = config.load_config(path, env={})
    (spec,) = loaded.config.schedules
    assert (spec.name, spec.workflow, spec.args, spec.catchup) == (
        "nightly",
        "evals",
        ("suite-a",),
        "once",
    )
    assert "[schedules.nightly]" in config.render_config(loaded)
    stored.reconcile(conn, [spec], BASE)
    assert {s.name: s.source for s in await client.schedules()} == {
        "hourly": "client",
        "nightly": "config",
    }
    assert stored.reconcile(conn, [], BASE) == ["nightly"]  # left the config: deleted
    assert [s.name for s in await client.schedules()] == ["hourly"]

    path.write_text('[schedules.x]\nworkflow = "w"\ncron = "* * *"\n')
    with pytest.raises(errors.ConfigError, match=r"executor.toml: schedules.x.cron: invalid cron"):
        config.load_config(path, env={})
    path.write_text('[schedules.x]\nworkflow = "w"\n')
    with pytest.raises(errors.ConfigError, match=r"schedules.x.cron: missing"):
        config.load_config(path, env={})


@pytest.mark.parametrize(
    ("nickname", "fields"),
    [("@daily", "0 0 * * *"), ("@HOURLY", "0 * * * *"), ("@weekly", "0 0 * * 0")],
)
def test_cron_nicknames_mean_their_fields(nickname: str, fields: str) -> None:
    spec = schedules.ScheduleSpec("n", "nightly", nickname, "Europe/Paris", (), "all", "allow")
    assert schedules.validate(spec, "test") is spec
    by_name = schedules.plan(nickname, "Europe/Paris", "all", BASE, BASE + 30 * 86400)
    by_fields = schedules.plan(fields, "Europe/Paris", "all", BASE, BASE + 30 * 86400)
    assert by_name == by_fields and len(by_name.fire) > 1
