"""A fake API provider on 127.0.0.1 that enforces quotas the way the big providers do.

One implementation, shared by the limits tests and the quota benchmark. The server runs in its own
process (so it does not share the engine's GIL or event loop), speaks HTTP/1.1 with keep-alive,
and answers every POST after `latency` (a lognormal around a median, if asked):

- quotas per API key (the `Authorization: Bearer` or `x-api-key` header): any number of sliding
  windows of requests and tokens, e.g. 6,000 requests a minute *and* 100 a second, enforced
  together the way providers say a per-minute quota "may be enforced over shorter intervals".
  A request over any window gets 429 with Retry-After and does not count;
- random 429s (a share of the requests that fit, with their own Retry-After), as providers send
  under load far from any quota;
- `POST /control` refuses one key for a while with a given Retry-After (a quota spent elsewhere);
- replies shaped like the Anthropic Messages and OpenAI Chat Completions APIs on their paths, so
  the real SDKs parse them, with `anthropic-ratelimit-*` / `x-ratelimit-*` headers on 429s;
- `GET /log` returns every arrival: [time, key, tokens, status, reason], the referee of the tests.

Run: `python -m benchmarks.quota_server --window 60:6000 --window 1:100` prints its port, then
serves until `POST /quit`. In Python: `async with QuotaServer.running(...) as server:`.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime as dt
import json
import math
import random
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# --- the quota ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    seconds: float
    requests: int | None = None
    tokens: int | None = None

    @classmethod
    def parse(cls, text: str) -> Window:
        """'60:6000' (requests), '1:t20000' (tokens), '60:6000:t400000' (both)."""
        seconds, *limits = text.split(":")
        requests = tokens = None
        for part in limits:
            if part.startswith("t"):
                tokens = int(part[1:])
            else:
                requests = int(part)
        return cls(float(seconds), requests, tokens)

    def __str__(self) -> str:
        parts = [f"{self.seconds:g}"]
        parts += [] if self.requests is None else [str(self.requests)]
        parts += [] if self.tokens is None else [f"t{self.tokens}"]
        return ":".join(parts)


class _KeyQuota:
    """One key's sliding windows over the requests it was allowed."""

    def __init__(self, windows: Sequence[Window]) -> None:
        self.windows = windows
        self.recent: list[deque[tuple[float, int]]] = [deque() for _ in windows]
        self.tokens = [0] * len(windows)
        self.refused_until = 0.0
        self.refused_retry_after = "1"

    def fits(self, now: float, tokens: int) -> Window | None:
        """None if the request fits every window, else the first window it would overflow."""
        for i, w in enumerate(self.windows):
            recent = self.recent[i]
            while recent and recent[0][0] <= now - w.seconds:
                self.tokens[i] -= recent.popleft()[1]
            if w.requests is not None and len(recent) >= w.requests:
                return w
            if w.tokens is not None and self.tokens[i] + tokens > w.tokens:
                return w
        return None

    def take(self, now: float, tokens: int) -> None:
        for i, recent in enumerate(self.recent):
            recent.append((now, tokens))
            self.tokens[i] += tokens


@dataclass
class Policy:
    windows: list[Window] = field(default_factory=list)
    random_429: float = 0.0  # share of the requests that fit answered 429 anyway
    retry_after: str = "1"  # on quota 429s: what Retry-After says
    random_retry_after: str = "2"
    latency_s: float = 0.002
    latency_sigma: float = 0.0  # lognormal spread around latency_s
    seed: int = 0


class Quota:
    """What the provider enforces, and its log of every arrival."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.keys: dict[str, _KeyQuota] = {}
        self.rng = random.Random(policy.seed)
        self.log: list[tuple[float, str, int, int, str]] = []  # (at, key, tokens, status, why)

    def arrive(self, now: float, key: str, tokens: int) -> tuple[int, str, dict[str, str]]:
        """(status, reason, extra headers) for a request arriving now."""
        q = self.keys.get(key)
        if q is None:
            q = self.keys[key] = _KeyQuota(self.policy.windows)
        status, why, headers = 200, "ok", {}
        if now < q.refused_until:
            status, why = 429, "refused"
            headers = _limit_headers(q.refused_retry_after, q.refused_until)
        elif (full := q.fits(now, tokens)) is not None:
            status, why = 429, f"quota {full}"
            headers = _limit_headers(self.policy.retry_after, now + full.seconds)
        elif self.policy.random_429 and self.rng.random() < self.policy.random_429:
            status, why = 429, "random"
            headers = {"retry-after": self.policy.random_retry_after}
        else:
            q.take(now, tokens)
        self.log.append((now, key, tokens, status, why))
        return status, why, headers

    def refuse(self, key: str, seconds: float, retry_after: str) -> None:
        q = self.keys.get(key)
        if q is None:
            q = self.keys[key] = _KeyQuota(self.policy.windows)
        q.refused_until = time.time() + seconds
        q.refused_retry_after = retry_after

    def latency(self) -> float:
        p = self.policy
        if not p.latency_sigma:
            return p.latency_s
        return p.latency_s * math.exp(self.rng.gauss(0.0, p.latency_sigma))


def _limit_headers(retry_after: str, reset_at: float) -> dict[str, str]:
    reset = dt.datetime.fromtimestamp(reset_at, dt.UTC).isoformat().replace("+00:00", "Z")
    return {
        "retry-after": retry_after,
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": reset,
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": f"{max(0.0, reset_at - time.time()):.3f}s",
    }


# --- the server process ---------------------------------------------------------------------------


def _body_for(path: str, status: int, why: str) -> dict[str, Any]:
    if status == 429:
        return {"type": "error", "error": {"type": "rate_limit_error", "message": why}}
    if path.endswith("/messages"):  # Anthropic Messages
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "fake",
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
    if path.endswith("/chat/completions"):  # OpenAI Chat Completions
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "fake",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "ok"},
                }
            ],
        }
    return {"ok": True}


def _tokens_of(body: bytes) -> int:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return 0
    if not isinstance(data, dict):
        return 0
    value = data.get("tokens", data.get("max_tokens", 0))
    return value if isinstance(value, int) else 0


async def serve(policy: Policy, port: int = 0) -> None:
    """Serve until POST /quit; print the port first (the parent reads it)."""
    quota = Quota(policy)
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readline()
                if not request:
                    return
                now = time.time()
                method, path, _ = request.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                extra: dict[str, str] = {}
                reply: Any
                if method == "GET" and path == "/log":
                    status, reply = 200, quota.log
                elif path == "/control":
                    c = json.loads(body)
                    quota.refuse(c["key"], float(c["seconds"]), str(c["retry_after"]))
                    status, reply = 200, {}
                elif path == "/quit":
                    status, reply = 200, {}
                    done.set()
                else:
                    auth = headers.get("authorization", "").removeprefix("Bearer ")
                    key = headers.get("x-api-key", auth)
                    status, why, extra = quota.arrive(now, key, _tokens_of(body))
                    await asyncio.sleep(quota.latency())
                    reply = _body_for(path, status, why)
                data = json.dumps(reply).encode()
                head = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{head}"
                    f"content-length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # the client went away, or we are shutting down
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await done.wait()


# --- the parent's side: start, query, stop -------------------------------------------------


_ROOT = Path(__file__).resolve().parent.parent  # where `benchmarks` is importable


@dataclass(frozen=True)
class Arrival:
    at: float
    key: str
    tokens: int
    status: int
    why: str  # "ok", "quota <window>", "random", "refused"


class QuotaServer:
    """A running server process; `async with QuotaServer.running(...) as s:`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        windows: Sequence[Window] = (),
        *,
        random_429: float = 0.0,
        retry_after: str = "1",
        random_retry_after: str = "2",
        latency_ms: float = 2.0,
        latency_sigma: float = 0.0,
        seed: int = 0,
    ) -> AsyncIterator[QuotaServer]:
        cmd = [sys.executable, "-m", "benchmarks.quota_server"]
        cmd += [f"--window={w}" for w in windows]
        cmd += ["--random-429", str(random_429), "--retry-after", retry_after]
        cmd += ["--random-retry-after", random_retry_after, "--latency-ms", str(latency_ms)]
        cmd += ["--latency-sigma", str(latency_sigma), "--seed", str(seed)]
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, cwd=_ROOT)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not line:
                raise RuntimeError("the quota server did not start")
            server = cls(int(line))
            yield server
            with contextlib.suppress(OSError):
                await server._call("POST", "/quit")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()

    async def _call(self, method: str, path: str, payload: Any = None) -> Any:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            body = b"" if payload is None else json.dumps(payload).encode()
            head = f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
            _, _, data = await read_reply(reader)
            return json.loads(data)
        finally:
            writer.close()

    async def log(self) -> list[Arrival]:
        return [Arrival(*row) for row in await self._call("GET", "/log")]

    async def refuse(self, key: str, seconds: float, retry_after: str) -> None:
        """Answer 429 with this Retry-After to every request of `key` for `seconds`."""
        control = {"key": key, "seconds": seconds, "retry_after": retry_after}
        await self._call("POST", "/control", control)


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    data = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, data


# --- a light client: what a step's shared SDK client would be -----------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class ApiClient:
    """A keep-alive connection pool to the server for one API key (stdlib asyncio streams: the
    cheapest client, so benchmarks measure the engine rather than an HTTP library)."""

    made: ClassVar[list[ApiClient]] = []

    def __init__(self, port: int, api_key: str = "k") -> None:
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
        writer.write(
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {self.api_key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        status, headers, data = await read_reply(reader)
        self.idle.append((reader, writer))
        return Reply(status, headers, data)

    async def aclose(self) -> None:
        self.closed = True
        for _, writer in self.idle:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        self.idle.clear()


# --- what the referee computes ------------------------------------------------------------------


def most_in_any_window(arrivals: Sequence[Arrival], window_s: float, tokens: bool = False) -> int:
    """The largest request (or token) count over every window [t, t + window_s) that starts at
    an arrival (the windows where a count can be highest)."""
    arrivals = sorted(arrivals, key=lambda a: a.at)
    times = [a.at for a in arrivals]
    sums = [0]
    for a in arrivals:
        sums.append(sums[-1] + (a.tokens if tokens else 1))
    best = 0
    for i, t in enumerate(times):
        j = bisect.bisect_left(times, t + window_s)
        best = max(best, sums[j] - sums[i])
    return best


def sustained_rate(arrivals: Sequence[Arrival], skip_s: float, tokens: bool = False) -> float:
    """The rate kept up after the first `skip_s` (whose burst used a quota left idle): the
    least-squares slope of the cumulative amount over time, so a part-filled last window barely
    moves it."""
    arrivals = sorted(arrivals, key=lambda a: a.at)
    if not arrivals:
        return 0.0
    start = arrivals[0].at + skip_s
    points: list[tuple[float, float]] = []
    total = 0.0
    for a in arrivals:
        total += a.tokens if tokens else 1
        if a.at >= start:
            points.append((a.at, total))
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_c = sum(c for _, c in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (c - mean_c) for t, c in points)
    return cov / var if var > 0 else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quota_server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--window", type=Window.parse, action="append", default=[])
    parser.add_argument("--random-429", type=float, default=0.0)
    parser.add_argument("--retry-after", default="1")
    parser.add_argument("--random-retry-after", default="2")
    parser.add_argument("--latency-ms", type=float, default=2.0)
    parser.add_argument("--latency-sigma", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    ns = parser.parse_args(argv)
    policy = Policy(
        windows=ns.window,
        random_429=ns.random_429,
        retry_after=ns.retry_after,
        random_retry_after=ns.random_retry_after,
        latency_s=ns.latency_ms / 1000,
        latency_sigma=ns.latency_sigma,
        seed=ns.seed,
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(policy, ns.port))
    else:
        uvloop.run(serve(policy, ns.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
