"""Changing code while runs are in flight: the argument policy (an edited prompt), patches
(`ctx.patched`, `ctx.deprecate_patch`) and `replay-check`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from executor import Client, Registry, RetryPolicy, errors, replaycheck, step, workflow
from executor.vocabulary import RunState

if TYPE_CHECKING:
    from conftest import DbFile, EngineFactory, WaitUntil

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL (replay-check reads both)."""
    return database_url


GATES: dict[str, asyncio.Event] = {}
POLISHED: dict[str, int] = {}
TEMPLATE = {"text": "Summarize this document: {doc}"}


def gate_event(key: str) -> asyncio.Event:
    return GATES.setdefault(key, asyncio.Event())


def registry_v1() -> Registry:
    """The code as deployed first: complete(prompt), then a gate, then answer the result."""
    reg = Registry()

    @step(registry=reg, name="complete")
    async def complete(prompt: str) -> str:
        return f"completion of <{prompt}>"

    @step(registry=reg, name="gate")
    async def gate(key: str) -> None:
        await gate_event(key).wait()

    # For document "a", its first attempt fails and is retried an hour later: a run past the
    # gate that stays in flight.
    @step(registry=reg, name="polish", retry=RetryPolicy(max_attempts=2, initial_backoff_s=3600))
    async def polish(text: str) -> str:
        POLISHED[text] = POLISHED.get(text, 0) + 1
        if POLISHED[text] == 1 and text.endswith(": a>"):
            raise RuntimeError("the first attempt fails")
        return text.upper()

    @step(registry=reg, name="shorten")
    async def shorten(text: str) -> str:
        return text[:10]

    @workflow(registry=reg, name="summarize")
    async def summarize(ctx: Any, doc: str) -> str:
        answer = await complete(TEMPLATE["text"].format(doc=doc))
        await gate(ctx.run_id)
        return str(await polish(answer))

    return reg


def registry_v2(patched: bool) -> Registry:
    """The next deploy: shorten instead of polish, either blindly or behind ctx.patched."""
    reg = registry_v1()
    polish, shorten = reg.steps["polish"], reg.steps["shorten"]
    complete, gate = reg.steps["complete"], reg.steps["gate"]

    async def summarize(ctx: Any, doc: str) -> str:
        answer = await complete(TEMPLATE["text"].format(doc=doc))
        await gate(ctx.run_id)
        if not patched:
            return str(await shorten(answer))
        if ctx.patched("shorten"):
            return str(await shorten(answer))
        return str(await polish(answer))

    reg.workflows.pop("summarize")
    workflow(registry=reg, name="summarize")(summarize)
    return reg


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATES.clear()
    POLISHED.clear()
    TEMPLATE["text"] = "Summarize this document: {doc}"


async def _held_at_gate(
    client: Client, dbfile: DbFile, wait_until: WaitUntil, docs: list[str]
) -> list[str]:
    runs = [await client.start("summarize", d) for d in docs]
    for run in runs:
        await wait_until(
            lambda run=run: dbfile.value(
                "SELECT count(*) FROM steps WHERE run_rid = ? AND name = 'gate'", dbfile.rid(run)
            ),
            f"run {run} at its gate",
        )
    return runs


# --- the argument policy -------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["log", "strict"])
async def test_a_prompt_edit_keeps_runs_going_by_default_and_parks_them_under_strict(
    engine_factory: EngineFactory,
    client: Client,
    dbfile: DbFile,
    wait_until: WaitUntil,
    policy: str,
) -> None:
    reg = registry_v1()
    # No live instances: every result replays the run from its journal, as after a restart.
    async with engine_factory(reg, instance_cache_size=0, replay_args=policy) as engine:
        (run,) = await _held_at_gate(client, dbfile, wait_until, ["doc-1"])
        TEMPLATE["text"] = "Summarize this document in one line: {doc}"  # the deploy
        gate_event(run).set()
        status = await wait_until(
            lambda: _finished(dbfile, run), "the run to finish or park", timeout_s=15
        )
        changed = engine.counters["replay_args_changed"]
    if policy == "log":
        assert status == RunState.SUCCEEDED
        # The paid completion was kept: its prompt is the old one.
        assert await client.result(run) == "COMPLETION OF <SUMMARIZE THIS DOCUMENT: DOC-1>"
        assert changed >= 1
    else:
        assert status == RunState.PARKED
        error = (await client.status(run)).error
        assert error is not None
        assert "nondeterminism at position 0" in error["message"]
        assert "engine.replay_args is strict" in error["message"]
        assert changed == 0


def _finished(dbfile: DbFile, run: str) -> str | None:
    status = dbfile.value("SELECT status FROM runs WHERE id = ?", run)
    return None if status == RunState.RUNNING else str(status)


async def test_a_renamed_step_still_parks_under_the_default_policy(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    async with engine_factory(registry_v1(), instance_cache_size=0, drain_timeout_s=0.2):
        (run,) = await _held_at_gate(client, dbfile, wait_until, ["doc"])
    # Started again with code that calls another step first.
    reg = registry_v1()
    first = reg.steps["shorten"]
    gate = reg.steps["gate"]

    async def summarize(ctx: Any, doc: str) -> str:
        await first(doc)
        await gate(ctx.run_id)
        return "done"

    reg.workflows.pop("summarize")
    workflow(registry=reg, name="summarize")(summarize)
    async with engine_factory(reg, instance_cache_size=0):
        gate_event(run).set()
        assert await wait_until(lambda: _finished(dbfile, run), "parked") == RunState.PARKED
    error = (await client.status(run)).error
    assert error is not None and "the journal holds step complete" in error["message"]


# --- patches and replay-check --------------------------------------------------------------------


async def test_replay_check_finds_a_divergence_and_passes_after_a_patch(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    async with engine_factory(registry_v1(), instance_cache_size=0, drain_timeout_s=0.2):
        past, waiting = await _held_at_gate(client, dbfile, wait_until, ["a", "b"])
        # One gets past the gate under the old code: its polish is in the journal, retried later.
        gate_event(past).set()
        await wait_until(
            lambda: dbfile.value(
                "SELECT count(*) FROM tasks WHERE run_rid = ? AND attempt = 2", dbfile.rid(past)
            ),
            "polish waiting for its retry",
        )

    # The blind change: the run past the gate would be parked; the other is fine.
    report = replaycheck.replay_check(dbfile.path, registry_v2(patched=False))
    (d,) = report.divergences
    assert (d.run_id, d.position, d.status) == (past, 2, "running")
    assert d.journal.startswith("step polish") and d.code.startswith("step shorten")
    assert f"run {past} (summarize, running): at position 2" in report.summary()
    assert report.checked == 2 and report.rate > 0

    # The same change behind ctx.patched passes.
    patched = registry_v2(patched=True)
    report = replaycheck.replay_check(dbfile.path, patched)
    assert report.ok and report.checked == 2, report.summary()

    # Deployed: the run past the gate keeps the old branch, the other takes the new one.
    async with engine_factory(patched, instance_cache_size=0):
        dbfile.execute("UPDATE tasks SET not_before = 0")  # the retry is due now
        gate_event(waiting).set()
        for run in (past, waiting):
            await wait_until(lambda run=run: _finished(dbfile, run), f"run {run} done")
    assert await client.result(past) == "COMPLETION OF <SUMMARIZE THIS DOCUMENT: A>"
    assert await client.result(waiting) == "completion"
    markers = dbfile.query("SELECT run_rid, pos, name, status, seq FROM steps WHERE kind = 'patch'")
    assert markers == [(dbfile.rid(waiting), 2, "shorten", "succeeded", None)]
    # Replaying the finished runs with the patched code takes the branch each recorded.
    report = replaycheck.replay_check(dbfile.path, patched, statuses=["succeeded"])
    assert report.ok and report.checked == 2, report.summary()

    # Deprecating the patch (the old branch deleted) is safe for runs that recorded the
    # marker, and replay-check says which runs still need the old branch.
    deprecated = registry_v1()
    shorten, complete, gate = (deprecated.steps[n] for n in ("shorten", "complete", "gate"))

    async def summarize(ctx: Any, doc: str) -> str:
        answer = await complete(TEMPLATE["text"].format(doc=doc))
        await gate(ctx.run_id)
        ctx.deprecate_patch("shorten")
        return str(await shorten(answer))

    deprecated.workflows.pop("summarize")
    workflow(registry=deprecated, name="summarize")(summarize)
    report = replaycheck.replay_check(dbfile.path, deprecated, statuses=["succeeded"])
    assert [d.run_id for d in report.divergences] == [past]


async def test_replay_check_reports_unknown_workflows_and_bad_statuses(
    client: Client, dbfile: DbFile
) -> None:
    run = await client.start("nobody-knows-me", 1)
    report = replaycheck.replay_check(dbfile.path, Registry())
    (d,) = report.divergences
    assert d.run_id == run and d.position is None and "unknown workflow" in d.code
    with pytest.raises(errors.ExecutorError, match="unknown status 'runing'"):
        replaycheck.replay_check(dbfile.path, Registry(), statuses=["runing"])


async def test_an_edited_prompt_is_listed_by_replay_check(
    engine_factory: EngineFactory, client: Client, dbfile: DbFile, wait_until: WaitUntil
) -> None:
    async with engine_factory(registry_v1(), drain_timeout_s=0.2):
        runs = await _held_at_gate(client, dbfile, wait_until, ["x", "y", "z"])
    TEMPLATE["text"] = "TL;DR: {doc}"
    report = replaycheck.replay_check(dbfile.path, registry_v1())
    assert report.ok and {a.run_id for a in report.args_changed} == set(runs)
    assert "with changed step arguments" in report.summary()
    strict = replaycheck.replay_check(dbfile.path, registry_v1(), strict=True)
    assert {d.run_id for d in strict.divergences} == set(runs)


# --- the command ---------------------------------------------------------------------------------

V1 = """
from executor import step, workflow

@step(name="complete")
async def complete(prompt: str) -> str:
    return "completion"

@step(name="polish")
async def polish(text: str) -> str:
    return text.upper()

@step(name="shorten")
async def shorten(text: str) -> str:
    return text[:4]

@workflow(name="summarize")
async def summarize(ctx, doc: str) -> str:
    answer = await complete("Summarize: " + doc)
    return await {final}
"""
FINAL_V1 = "polish(answer)"
FINAL_BLIND = "shorten(answer)"
FINAL_PATCHED = "(shorten(answer) if ctx.patched('shorten') else polish(answer))"


@pytest.mark.slow
def test_the_replay_check_command(tmp_path: Path) -> None:
    db = tmp_path / "flows.sqlite"
    (tmp_path / "executor.toml").write_text(
        f'[database]\npath = "{db}"\n[engine]\nshards = 2\n[daemon]\nworkflows = ["flows"]\n'
    )
    # A run recorded by v1 up to its polish step (pending): a journal the blind change breaks.
    seed = textwrap.dedent(
        """
        import asyncio, time
        from executor import Client, codec
        from executor.store.repository import commit_replays
        from executor.vocabulary import NewStep, ReplayOutput, StepKind

        async def main():
            async with Client("flows.sqlite", shards=2) as c:
                run = await c.start("summarize", "doc")
                rid = await c.db.run(
                    lambda conn: conn.execute("SELECT rid FROM runs").fetchone()[0]
                )
                def steps(name, args):
                    blob = codec.encode(args)
                    fp = codec.fingerprint(blob)
                    return NewStep(len(out), StepKind.STEP, name, fp, blob, None)
                out = []
                out.append(steps("complete", ["Summarize: doc"]))
                await c.db.run(commit_replays, [ReplayOutput(rid, 0, 0, out)], time.time())
                # complete's result recorded (its task done), then v1 asked for polish.
                def record(conn):
                    conn.execute("DELETE FROM tasks")
                    conn.execute(
                        "UPDATE steps SET status = 'succeeded', result = ?, seq = 1,"
                        " finished_at = ? WHERE pos = 0", (codec.encode("completion"), time.time())
                    )
                    conn.execute("UPDATE runs SET last_seq = 1")
                await c.db.run(record)
                out.append(steps("polish", ["completion"]))
                await c.db.run(commit_replays, [ReplayOutput(rid, 0, 1, out[1:])], time.time())
                print(run)

        asyncio.run(main())
        """
    )
    run_id = subprocess.run(
        [sys.executable, "-c", seed], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()

    def check(final: str, *extra: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / "flows.py").write_text(V1.format(final=final))
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXECUTOR_")}
        return subprocess.run(
            [sys.executable, "-m", "executor", "replay-check", "--config", "executor.toml", *extra],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = check(FINAL_V1)  # stdout is a pipe: the report comes as JSON
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["checked"] == 1 and report["runs_per_s"] > 0
    blind = check(FINAL_BLIND)
    assert blind.returncode == 1, blind.stderr
    (d,) = json.loads(blind.stdout)["divergences"]
    assert (d["run_id"], d["position"]) == (run_id, 1)
    assert d["journal"].startswith("step polish")
    assert d["code"].startswith("step shorten")
    patched = check(FINAL_PATCHED)
    assert patched.returncode == 0, patched.stdout + patched.stderr
    assert json.loads(patched.stdout)["ok"]
