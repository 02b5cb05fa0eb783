"""The dashboard in a real headless browser: `executor serve` as a child process on a file an
engine filled (runs that succeeded, failed in two ways, were parked or still run), every page
loaded, a run's page reached by clicking from the failures page, a screenshot of each page.

Chromium is Debian's (/usr/bin/chromium, installed by .ci/run); playwright only drives it, it
downloads no browser. Screenshots go to $DASHBOARD_SCREENSHOTS (not an EXECUTOR_* name: those
are settings), else the test's temp folder.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from executor import Client, Registry, RetryPolicy, step, workflow
from tests.support.daemon import child_env, write_config
from tests.support.engine import make_engine

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NO_RETRY = RetryPolicy(max_attempts=1)


def _fill(path: Path) -> dict[str, list[str]]:
    """Runs in every state, and an engine's samples for the plots."""
    reg = Registry()
    gate = asyncio.Event()

    @step(registry=reg, name="fetch", retry=RetryPolicy(max_attempts=2, initial_backoff_s=0))
    async def fetch(i: int) -> int:
        if i % 4 == 1:
            raise ConnectionError(f"upstream <b>{i}</b> refused")  # markup must be escaped
        return i

    @step(registry=reg, name="summarize", retry=NO_RETRY)
    async def summarize(i: int) -> int:
        if i % 4 == 2:
            raise ValueError("no summary")
        return i * 2

    @step(registry=reg, name="wait_here", retry=NO_RETRY)
    async def wait_here() -> None:
        await gate.wait()

    @workflow(registry=reg, name="pipeline")
    async def pipeline(ctx: Any, i: int) -> int:
        a = await fetch(i)
        await ctx.sleep(0.01)
        return await summarize(a)

    @workflow(registry=reg, name="stuck")
    async def stuck(ctx: Any) -> None:
        await wait_here()

    async def go() -> dict[str, list[str]]:
        async with Client(path, shards=2) as client:
            engine = make_engine(reg, path)
            await engine.start()
            try:
                ids = await client.start_many(
                    pipeline, [[i] for i in range(16)], labels={"batch": "b1"}
                )
                running = await client.start(stuck)
                deadline = asyncio.get_running_loop().time() + 20
                while True:
                    done = [(await client.status(r)).finished for r in ids]
                    if all(done):
                        break
                    assert asyncio.get_running_loop().time() < deadline, "runs did not finish"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)  # a few more samples
            finally:
                engine.request_stop("test")
                gate.set()
                await engine.wait()
            statuses = {r: (await client.status(r)).status for r in ids}
        return {
            "failed": [r for r, s in statuses.items() if s == "failed"],
            "succeeded": [r for r, s in statuses.items() if s == "succeeded"],
            "running": [running],
        }

    return asyncio.run(go())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, list[str]], Path]]:
    db = tmp_path / "executor.sqlite"
    runs = _fill(db)
    config = write_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "executor", "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
        yield found.group(0), runs, db
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err  # SIGTERM stops it cleanly


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_every_page_in_a_browser(
    served: tuple[str, dict[str, list[str]], Path], screenshots: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    base, runs, db = served
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as pw:
        # A fresh profile folder per test (playwright passes it as --user-data-dir).
        browser = pw.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=CHROMIUM,
            headless=True,
            args=BROWSER_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            failed_requests: list[str] = []
            page.on("requestfailed", lambda r: failed_requests.append(r.url))
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(base) else outside.append(r.url))

            # Overview: cards, every plot drawn from the samples, the stylesheet applied.
            page.goto(base)
            assert page.title() == "overview · executor"
            card = page.locator(".card.failed .n")
            assert int(card.inner_text()) == len(runs["failed"])
            assert page.locator("svg.chart").count() == 7
            # Steps, runs and slots at least: a line, or a dot while the history is one bucket.
            assert page.locator("svg.chart polyline, svg.chart circle").count() >= 3
            colour = page.eval_on_selector("header", "e => getComputedStyle(e).backgroundColor")
            assert colour == "rgb(29, 35, 48)"
            page.screenshot(path=str(screenshots / "overview.png"), full_page=True)

            # Failures: two groups (fetch/ConnectionError, summarize/ValueError), each with its
            # count and the exact retry command; the error text is escaped, not markup.
            page.goto(base + "failures")
            groups = page.locator("section.group")
            assert groups.count() == 2
            text = page.locator("main").inner_text()
            assert "fetch · ConnectionError" in text and "summarize · ValueError" in text
            assert "upstream <b>" in text  # shown as text
            commands = page.locator("pre.command").all_inner_texts()
            assert any(
                c.startswith(
                    "executor runs retry --workflow pipeline --status failed --step fetch"
                    " --error ConnectionError --since "
                )
                and c.endswith(" --dry-run")
                for c in commands
            ), commands
            counts = sorted(int(c) for c in page.locator(".group .count").all_inner_texts())
            assert sum(counts) == len(runs["failed"])
            page.screenshot(path=str(screenshots / "failures.png"), full_page=True)

            # A run's page, reached by clicking its link on the failures page.
            link = page.locator("a.run").first
            run_id = link.inner_text()
            link.click()
            page.wait_for_url(f"**/runs/{run_id}")
            assert run_id in runs["failed"]
            assert page.locator("h1 .status").inner_text() == "failed"
            assert page.locator("table.journal tbody tr").count() >= 1
            assert page.locator("svg.timeline rect").count() >= 1
            assert "finished" in page.locator("ul.waiting").inner_text()
            page.screenshot(path=str(screenshots / "run.png"), full_page=True)

            # The runs list with a filter chosen in the form.
            page.goto(base + "runs")
            page.select_option("select[name=status]", "succeeded")
            page.click("button[type=submit]")
            page.wait_for_url("**/runs?status=succeeded**")
            shown = page.locator("table.runs tbody a.run").all_inner_texts()
            assert sorted(shown) == sorted(runs["succeeded"])
            page.screenshot(path=str(screenshots / "runs.png"), full_page=True)

            # RunFilter's options in the form: failed runs of the batch that failed at fetch.
            page.goto(base + "runs")
            page.select_option("select[name=status]", "failed")
            page.fill("input[name=error]", "connectionerror")
            page.fill("input[name=step]", "fetch")
            page.fill("input[name=label]", "batch=b1")
            page.click("button[type=submit]")
            page.wait_for_url("**/runs?**label=batch%3Db1**")
            shown = page.locator("table.runs tbody a.run").all_inner_texts()
            conn = sqlite3.connect(db)
            expected = [
                r
                for (r,) in conn.execute(
                    "SELECT id FROM runs WHERE status = 'failed'"
                    " AND CAST(error AS TEXT) LIKE '%ConnectionError%'"
                )
            ]
            conn.close()
            assert sorted(shown) == sorted(expected) and len(expected) == 4
            assert "label batch=b1" in page.locator("h1 small").inner_text()
            page.goto(base + "runs?since=yesterday-ish")
            assert "--since" in page.locator("p.error").inner_text()

            # The running run says what it waits on.
            page.goto(base + "runs/" + runs["running"][0])
            assert page.locator("ul.waiting li").count() >= 1
            page.screenshot(path=str(screenshots / "run-running.png"), full_page=True)

            # An unknown page and an unknown run are 404s with a message.
            response = page.goto(base + "runs/nope")
            assert response is not None and response.status == 404
            assert "no run with id 'nope'" in page.locator("p.error").inner_text()

            assert not failed_requests and not outside, (failed_requests, outside)
        finally:
            browser.close()

    # /metrics from the same process, parsed by prometheus_client.
    with urllib.request.urlopen(base + "metrics", timeout=10) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    finished = {
        s.labels["status"]: s.value
        for s in families["executor_runs_finished"].samples
        if s.name == "executor_runs_finished_total"
    }
    assert finished == {"failed": len(runs["failed"]), "succeeded": len(runs["succeeded"])}
    assert db.exists()
