"""Limits against a real HTTP API: a server on 127.0.0.1 in a thread that logs every arrival.

The server's own log is the referee: request and token counts are checked over every window
that starts at an arrival (the windows where a count can be highest). Steps use stdlib HTTP/1.1
over asyncio streams through a shared, keep-alive client from executor.resources.
"""

from __future__ import annotations

import asyncio
import bisect
import http.server
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from executor import (
    Client,
    DatabaseConfig,
    Engine,
    EngineConfig,
    Registry,
    RetryPolicy,
    resources,
    step,
    workflow,
)
from executor.config import LimitSpec
from executor.engine import limits
from executor.ratelimit import rate_limited_from

pytestmark = pytest.mark.anyio

DEADLINE_S = 30.0


# --- the API server ---------------------------------------------------------------------------


@dataclass
class Arrival:
    at: float  # time.time() when the request line was read
    key: str
    tokens: int
    connection: tuple[str, int]
    status: int


class QuotaServer:
    """A JSON API on an ephemeral port. `storm = n` answers the next n requests with 429."""

    def __init__(self, retry_after: str = "0.2") -> None:
        self.arrivals: list[Arrival] = []
        self.lock = threading.Lock()
        self.storm = 0
        self.retry_after = retry_after
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections

            def do_POST(self) -> None:
                at = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                tokens = int(json.loads(body or b"{}").get("tokens", 0))
                with owner.lock:
                    limited = owner.storm > 0
                    owner.storm -= 1 if limited else 0
                    status = 429 if limited else 200
                    owner.arrivals.append(Arrival(at, key, tokens, self.client_address, status))
                reply = b'{"error": "rate_limit"}' if limited else b'{"ok": true}'
                self.send_response(status)
                if limited:
                    self.send_header("Retry-After", owner.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            # socketserver's default listen backlog is 5: a burst of new connections overflows
            # it and the kernel drops SYNs, which the client retries a whole second later.
            request_queue_size = 128
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="quota-server")

    def __enter__(self) -> QuotaServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def log(self, key: str | None = None, status: int | None = None) -> list[Arrival]:
        with self.lock:
            return [
                a
                for a in self.arrivals
                if (key is None or a.key == key) and (status is None or a.status == status)
            ]


@pytest.fixture
def server() -> Iterator[QuotaServer]:
    with QuotaServer() as s:
        yield s


def most_in_any_window(arrivals: list[Arrival], window_s: float, tokens: bool = False) -> int:
    """The largest request (or token) count over every window [t, t + window_s) from an arrival."""
    arrivals = sorted(arrivals, key=lambda a: a.at)
    times = [a.at for a in arrivals]
    amounts = [a.tokens if tokens else 1 for a in arrivals]
    sums = [0]
    for amount in amounts:
        sums.append(sums[-1] + amount)
    best = 0
    for i, t in enumerate(times):
        j = bisect.bisect_left(times, t + window_s)
        best = max(best, sums[j] - sums[i])
    return best


# --- the client: stdlib HTTP/1.1 over asyncio streams, shared through executor.resources ----------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class ApiClient:
    """A keep-alive connection pool to the API for one key (what an SDK client would be)."""

    made: ClassVar[list[ApiClient]] = []

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.api_key = api_key
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.connections = 0
        self.closed = False
        ApiClient.made.append(self)

    async def post(self, path: str, payload: dict[str, Any]) -> Reply:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.connections += 1
        body = json.dumps(payload).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        data = await reader.readexactly(int(headers.get("content-length", "0")))
        self.idle.append((reader, writer))
        return Reply(int(status_line.split()[1]), headers, data)

    async def aclose(self) -> None:
        self.closed = True
        for _, writer in self.idle:
            writer.close()
            await writer.wait_closed()
        self.idle.clear()


@pytest.fixture(autouse=True)
def fresh_clients() -> Iterator[None]:
    ApiClient.made.clear()
    yield
    ApiClient.made.clear()


# --- the steps ------------------------------------------------------------------------------------

REG = Registry()


# max_attempts=1: any attempt used by waiting or by a 429 would fail the run.
@step(
    limits=["api"],
    cost=lambda port, key, tokens: tokens,
    retry=RetryPolicy(max_attempts=1),
    registry=REG,
)
async def complete(port: int, key: str, tokens: int) -> int:
    async with resources.use(ApiClient, port=port, api_key=key) as client:
        reply = await client.post("/v1/complete", {"tokens": tokens})
    limited = rate_limited_from(reply)
    if limited is not None:
        raise limited
    if reply.status != 200:
        raise RuntimeError(f"HTTP {reply.status}")
    return tokens


@workflow(registry=REG)
async def one_call(ctx: Any, port: int, key: str, tokens: int, per_key: bool) -> int:
    return await ctx.step(complete, port, key, tokens, limit_key=key if per_key else None)


@pytest.fixture
async def client(db_path: Path) -> AsyncIterator[Client]:
    async with Client(db_path, reg=REG, shards=2) as c:
        yield c


def engine(db_path: Path, *limits: LimitSpec, **settings: Any) -> Engine:
    cfg = EngineConfig(
        **{
            "shards": 2,
            "concurrency": 16,
            "poll_interval_s": 0.05,
            "heartbeat_interval_s": 0.1,
            "lease_s": 1.0,
            **settings,
        }
    )
    return Engine(cfg, DatabaseConfig(path=db_path), reg=REG, limits=limits)


async def run_all(client: Client, args: list[list[Any]]) -> list[Any]:
    ids = await client.start_many(one_call, args)
    return [await client.result(run_id, timeout=DEADLINE_S) for run_id in ids]


# --- tests --------------------------------------------------------------------------------------


async def test_request_and_token_rates_are_never_exceeded_over_any_window(
    db_path: Path, client: Client, server: QuotaServer
) -> None:
    limit = LimitSpec("api", requests_per_second=20, tokens_per_second=2000)
    tokens = [50 + (i * 37) % 201 for i in range(36)]  # 50 to 250: either budget can bind
    async with engine(db_path, limit):
        results = await run_all(client, [[server.port, "k", n, False] for n in tokens])
    assert results == tokens
    log = server.log()
    assert len(log) == len(tokens) and {a.status for a in log} == {200}
    assert most_in_any_window(log, 1.0) <= 20
    assert most_in_any_window(log, 1.0, tokens=True) <= 2000
    # The budget was used, not just respected: some second was full to within one request.
    assert most_in_any_window(log, 1.0, tokens=True) > 2000 - 250 or (
        most_in_any_window(log, 1.0) == 20
    )
    # One shared client served every call over a few kept-alive connections, closed on drain.
    (api,) = ApiClient.made
    assert api.closed
    assert len({a.connection for a in log}) == api.connections < len(tokens)


async def test_a_429_storm_slows_the_limit_down_and_it_recovers(
    db_path: Path, client: Client, server: QuotaServer, wait_until: Any
) -> None:
    quota = 30
    async with engine(db_path, LimitSpec("api", requests_per_second=quota)) as eng:
        ids = await client.start_many(one_call, [[server.port, "k", 1, False]] * 90)
        await wait_until(lambda: len(server.log()) >= quota, "the first window's requests")
        with server.lock:
            server.storm = 6
        stats = await wait_until(
            lambda: (s := eng.limits_snapshot()["limits"][0])["rate_limited"] and s,
            "a 429 to reach the limiter",
        )
        assert stats["factor"] <= 0.5
        # Every run succeeds with max_attempts=1: neither 429s nor waits used an attempt.
        for run_id in ids:
            assert await client.result(run_id, timeout=DEADLINE_S) == 1
        storm = server.log(status=429)
        assert len(storm) == 6
        # The 429s hit the second window's burst (all sent before the first reply came back);
        # the next window gets half the quota (the rate halved; a quiet window may have given
        # one step back by then), where an unadapted limiter would send all of it again.
        first = storm[0].at
        after = [a for a in server.log() if first + 0.2 < a.at < first + 1.2]
        slowed = int(quota * (limits.DECREASE_FACTOR + limits.INCREASE_STEP))
        assert 0 < len(after) <= slowed < quota, len(after)
        assert most_in_any_window(server.log(), 1.0) <= quota
        # Quiet windows give the rate back, up to (never above) the configured quota.
        await wait_until(
            lambda: eng.limits_snapshot()["limits"][0]["factor"] == 1.0,
            "the rate to recover",
            timeout_s=DEADLINE_S,
        )
        recovered = time.time()
        await run_all(client, [[server.port, "k", 1, False]] * quota)
    later = [a for a in server.log() if a.at > recovered]
    assert most_in_any_window(later, 1.0) == quota  # the whole quota is usable again
    assert most_in_any_window(server.log(), 1.0) <= quota


async def test_each_limit_key_has_its_own_budget_and_client(
    db_path: Path, client: Client, server: QuotaServer
) -> None:
    async with engine(db_path, LimitSpec("api", requests_per_second=10)):
        await run_all(
            client, [[server.port, key, 1, True] for _ in range(20) for key in ("k1", "k2")]
        )
    for key in ("k1", "k2"):
        assert len(server.log(key)) == 20
        assert most_in_any_window(server.log(key), 1.0) <= 10
    # Two budgets: together the keys went faster than one key's quota.
    assert most_in_any_window(server.log(), 1.0) > 10
    # One client per key (never shared across keys), reused across calls, closed on drain.
    by_key = {c.api_key: c for c in ApiClient.made}
    assert sorted(by_key) == ["k1", "k2"] and len(ApiClient.made) == 2
    for key, api in by_key.items():
        assert api.closed
        connections = {a.connection for a in server.log(key)}
        assert len(connections) == api.connections < 20
