"""Benchmark limits: the engine against a local API that enforces a quota.

A server process on 127.0.0.1 plays the API: HTTP/1.1 with keep-alive, POST /v1/call answered
after --latency-ms, 429 with Retry-After for any request that would put more than the quota in
its own sliding window. The engine runs one step per call through a shared keep-alive client,
with `[limits.bench]` set to exactly the server's quota, and a backlog of --seconds worth of
calls. The report (one JSON object) compares what the server saw with the quota:

    achieved_pct         the sustained request rate (after the first window) / the quota
    over_quota           requests the server had to refuse: the target is 0
    most_in_any_window   the highest count over every window that starts at an arrival

Run: `python -m executor.bench_limits --rps 200 --seconds 10` (or `executor bench --workload
quota` where the bench dispatches to `main` here).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from executor import config, errors, registry, resources
from executor.client import Client
from executor.engine.engine import Engine
from executor.ratelimit import rate_limited_from

TARGET_PCT = 95.0
WINDOW_S = 1.0
START_BATCH = 1000


# --- the API server (its own process, so it does not share our GIL) -----------------------------


class _Quota:
    """The server's own sliding windows: what a provider would enforce."""

    def __init__(self, rps: int | None, tps: int | None) -> None:
        self.rps = rps
        self.tps = tps
        self.recent: deque[tuple[float, int]] = deque()
        self.tokens = 0
        self.log: list[tuple[float, int, int]] = []  # (arrival, tokens, status)

    def admit(self, now: float, tokens: int) -> bool:
        while self.recent and self.recent[0][0] <= now - WINDOW_S:
            self.tokens -= self.recent.popleft()[1]
        ok = (self.rps is None or len(self.recent) < self.rps) and (
            self.tps is None or self.tokens + tokens <= self.tps
        )
        if ok:
            self.recent.append((now, tokens))
            self.tokens += tokens
        self.log.append((now, tokens, 200 if ok else 429))
        return ok


async def _serve(rps: int | None, tps: int | None, latency_s: float) -> None:
    quota = _Quota(rps, tps)
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readline()
                if not request:
                    return
                now = time.time()
                headers = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                extra = ""
                if request.startswith(b"GET /log"):
                    status, reply = 200, json.dumps(quota.log).encode()
                elif request.startswith(b"POST /quit"):
                    status, reply = 200, b"{}"
                    done.set()
                else:
                    tokens = int(json.loads(body or b"{}").get("tokens", 0))
                    ok = quota.admit(now, tokens)
                    if latency_s:
                        await asyncio.sleep(latency_s)
                    status, reply = (200, b'{"ok":true}') if ok else (429, b'{"error":"quota"}')
                    extra = "" if ok else "Retry-After: 0.5\r\n"
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(reply)}\r\n{extra}\r\n".encode()
                    + reply
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # the client went away, or we are shutting down
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    async with server:
        await done.wait()


# --- the client side ------------------------------------------------------------------------------


class _Api:
    """A keep-alive connection pool to the bench server (the shared client of the steps)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        body = b"" if payload is None else json.dumps(payload).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        data = await reader.readexactly(int(headers.get("content-length", "0")))
        self.idle.append((reader, writer))
        return status, _Reply(status, headers, data)

    async def aclose(self) -> None:
        for _, writer in self.idle:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        self.idle.clear()


class _Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


REG = registry.Registry()


def _cost(port: int, tokens: int) -> int:
    return tokens


@registry.step(limits=["bench"], cost=_cost, name="bench_limits.call", registry=REG)
async def call(port: int, tokens: int) -> int:
    async with resources.use(_Api, port=port) as api:
        status, reply = await api.request("POST", "/v1/call", {"tokens": tokens})
    limited = rate_limited_from(reply)
    if limited is not None:
        raise limited
    return status


@registry.workflow(name="bench_limits.one_call", registry=REG)
async def one_call(ctx: Any, port: int, tokens: int) -> int:
    return int(await call(port, tokens))


@contextlib.asynccontextmanager
async def _server(rps: int | None, tps: int | None, latency_ms: float) -> AsyncIterator[int]:
    cmd = [sys.executable, "-m", "executor.bench_limits", "--serve"]
    cmd += ["--rps", str(rps or 0), "--tps", str(tps or 0), "--latency-ms", str(latency_ms)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise errors.ExecutorError("the bench server did not start")
        yield int(line)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


def _sustained(arrivals: list[tuple[float, int]]) -> float:
    """The rate kept up after the first window (whose burst used a quota left idle): the
    least-squares slope of the cumulative amount over time, so a part-filled last window
    barely moves it."""
    if not arrivals:
        return 0.0
    start = arrivals[0][0] + WINDOW_S
    points: list[tuple[float, float]] = []
    total = 0.0
    for t, amount in arrivals:
        total += amount
        if t >= start:
            points.append((t, total))
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_c = sum(c for _, c in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (c - mean_c) for t, c in points)
    return cov / var if var > 0 else 0.0


def _most_in_window(times: list[float], amounts: list[int]) -> int:
    sums = [0]
    for a in amounts:
        sums.append(sums[-1] + a)
    best = 0
    for i, t in enumerate(times):
        j = bisect.bisect_left(times, t + WINDOW_S)
        best = max(best, sums[j] - sums[i])
    return best


async def run(
    rps: int | None,
    tps: int | None,
    seconds: float,
    latency_ms: float,
    shards: int,
    concurrency: int,
) -> dict[str, Any]:
    if rps is None and tps is None:
        raise errors.ExecutorError("give a quota: --rps and/or --tps")
    avg_cost = 100 if tps else 0
    per_s = min(x for x in (rps, (tps / avg_cost) if tps else None) if x is not None)
    calls = int(per_s * (seconds + WINDOW_S))
    costs = [(avg_cost // 2 + (i * 37) % (avg_cost + 1)) if tps else 0 for i in range(calls)]
    limit = config.LimitSpec("bench", requests_per_second=rps, tokens_per_second=tps)
    async with _server(rps, tps, latency_ms) as port:
        with tempfile.TemporaryDirectory(prefix="bench-limits-") as tmp:
            db = config.DatabaseConfig(path=Path(tmp) / "bench.sqlite")
            cfg = config.EngineConfig(shards=shards, concurrency=concurrency)
            finished = 0
            all_done = asyncio.Event()

            def on_finish(run_id: str, status: str) -> None:
                nonlocal finished
                finished += 1
                if finished == calls:
                    all_done.set()

            cpu0 = _cpu_s()
            started = time.time()
            engine = Engine(cfg, db, reg=REG, on_finish=on_finish, limits=[limit])
            async with engine, Client(db, reg=REG, shards=shards) as client:
                for i in range(0, calls, START_BATCH):
                    batch = [[port, c] for c in costs[i : i + START_BATCH]]
                    await client.start_many(one_call, batch)
                await asyncio.wait_for(all_done.wait(), timeout=seconds * 10 + 60)
                elapsed = time.time() - started
                runs = (await client.stats())["runs"]
                load = engine.load()
                snapshot = engine.limits_snapshot()
            cpu = _cpu_s() - cpu0
        async with resources.use(_Api, port=port) as api:
            _, reply = await api.request("GET", "/log")
            log = json.loads(reply.body)
            await api.request("POST", "/quit")
        await resources.default_registry.aclose()
    log.sort()
    times = [t for t, _, _ in log]
    ok = [(t, n) for t, n, status in log if status == 200]
    report: dict[str, Any] = {
        "workload": "quota",
        "quota": {"requests_per_second": rps, "tokens_per_second": tps},
        "calls": calls,
        "latency_ms": latency_ms,
        "shards": shards,
        "concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "cpu_s": round(cpu, 2),
        "succeeded": runs.get("succeeded", 0),
        "over_quota": sum(1 for _, _, status in log if status == 429),
        "requests_seen": len(log),
        "limiter": {k: v for k, v in load.items() if k.startswith(("limit", "rate"))},
        "factor": snapshot["limits"][0].get("factor") if snapshot["limits"] else None,
    }
    if rps is not None:
        achieved = _sustained([(t, 1) for t, _ in ok])
        report["most_in_any_window"] = _most_in_window(times, [1] * len(times))
        report["achieved_rps"] = round(achieved, 2)
        report["achieved_pct"] = round(100 * achieved / rps, 2)
    if tps is not None:
        achieved_t = _sustained(ok)
        report["most_tokens_in_any_window"] = _most_in_window(times, [n for _, n, _ in log])
        report["achieved_tps"] = round(achieved_t, 1)
        pct_t = round(100 * achieved_t / tps, 2)
        report["achieved_tokens_pct"] = pct_t
        report["achieved_pct"] = max(report.get("achieved_pct", 0.0), pct_t)
    report["target_met"] = report["over_quota"] == 0 and report["achieved_pct"] >= TARGET_PCT
    return report


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _quota(text: str) -> int | None:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m executor.bench_limits",
        description="Achieved rate against a quota, measured by a local API server.",
    )
    parser.add_argument("--rps", type=_quota, default=None, help="requests per second quota")
    parser.add_argument("--tps", type=_quota, default=None, help="tokens per second quota")
    parser.add_argument("--seconds", type=float, default=10.0, help="backlog, in seconds of quota")
    parser.add_argument("--latency-ms", type=float, default=2.0, help="server time per call")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=100, help="slots per shard")
    parser.add_argument("--json-indent", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="exit 1 unless the target is met")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the quota benchmark and print one JSON object (see the module docstring)."""
    ns = build_parser().parse_args(argv)
    if ns.serve:
        asyncio.run(_serve(ns.rps, ns.tps, ns.latency_ms / 1000))
        return 0
    if ns.rps is None and ns.tps is None:
        ns.rps = 200
    try:
        report = asyncio.run(
            run(ns.rps, ns.tps, ns.seconds, ns.latency_ms, ns.shards, ns.concurrency)
        )
    except errors.ExecutorError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=ns.json_indent))
    ok = report["succeeded"] == report["calls"] and report["over_quota"] == 0
    if ns.check:
        ok = ok and report["target_met"]
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
