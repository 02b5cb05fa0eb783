"""Fill a database with a realistic few minutes of work for the dashboard, and screenshot it.

    python scripts/dashboard_demo.py --db /tmp/demo.sqlite --screenshot docs/dashboard.png

An in-process engine runs LLM-like steps (random latency, timeouts that are retried, bad inputs
that fail, 429s under a rate limit) while batches of runs start every few seconds. With
--screenshot, the overview is then served (executor/web) and captured with Debian's chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from executor import (
    Client,
    DatabaseConfig,
    Engine,
    EngineConfig,
    RateLimited,
    Registry,
    RetryPolicy,
    step,
    workflow,
)
from executor.config import LimitSpec

reg = Registry()
rng = random.Random(7)


@step(registry=reg, name="fetch_document")
async def fetch_document(doc: int) -> str:
    await asyncio.sleep(rng.uniform(0.02, 0.2))
    return f"document {doc}"


@step(
    registry=reg,
    name="call_model",
    limits=["llm"],
    retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.5),
)
async def call_model(text: str) -> str:
    await asyncio.sleep(rng.uniform(0.2, 1.5))
    roll = rng.random()
    if roll < 0.03:
        raise RateLimited(retry_after=1.0)
    if roll < 0.08:
        raise TimeoutError("the model did not answer in time")
    if roll < 0.095:
        raise ValueError("the prompt is over the context window")
    return text.upper()


@step(registry=reg, name="store_summary", retry=RetryPolicy(max_attempts=1))
async def store_summary(summary: str) -> int:
    await asyncio.sleep(rng.uniform(0.01, 0.05))
    if rng.random() < 0.01:
        raise PermissionError("bucket is read-only")
    return len(summary)


@workflow(registry=reg, name="summarize")
async def summarize(ctx: Any, doc: int) -> int:
    text = await fetch_document(doc)
    summary = await call_model(text)
    return await store_summary(summary)


@workflow(registry=reg, name="classify")
async def classify(ctx: Any, doc: int) -> str:
    return await call_model(await fetch_document(doc))


async def fill(db: Path, minutes: float) -> None:
    cfg = EngineConfig(shards=2, concurrency=60, heartbeat_interval_s=2.0)
    engine = Engine(cfg, DatabaseConfig(path=db), reg=reg, limits=[LimitSpec("llm", 60)])
    await engine.start()
    try:
        async with Client(db) as client:
            deadline = time.monotonic() + minutes * 60
            n = 0
            while time.monotonic() < deadline:
                # Load rises, then falls: a batch every 5 s, bigger in the middle.
                phase = 1 - abs(1 - 2 * (deadline - time.monotonic()) / (minutes * 60))
                size = int(20 + 120 * phase)
                await client.start_many(summarize, [[n + i] for i in range(size)])
                await client.start_many(classify, [[n + i] for i in range(size // 3)])
                n += size
                await asyncio.sleep(5)
            await asyncio.sleep(20)  # let most of the last batch finish
    finally:
        await engine.stop("demo finished")


def screenshot(db: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    from executor.web.app import make_server

    server = make_server(db, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.screenshot(path=str(out), full_page=False)
            browser.close()
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    if args.minutes > 0:
        asyncio.run(fill(args.db, args.minutes))
    if args.screenshot is not None:
        screenshot(args.db, args.screenshot)


if __name__ == "__main__":
    main()
