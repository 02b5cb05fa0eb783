"""The workflows every acceptance test runs in a real daemon (`tests.support.flows`).

The first part serves the daemon and CLI tests: steps leave side effects in files, so a test can
count how often each step really ran, and see how many ran at once. The second part (names
`crashloop.*`) serves the crash loop and the reliability tests:

Every step appends one JSON line when it begins and one when it ends (ok or fail) to the file
named by $CRASHLOOP_LOG, fsynced, with the daemon's pid and the time: the test counts from it how
often each step really ran, and in which daemon incarnation. Steps get the run id and their own
label as arguments, since a step knows nothing else about where it runs.

`expected()` computes every workflow's result from its arguments alone, so the test can check
each run without trusting anything the daemon recorded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import orjson

from executor import RetryPolicy, WorkflowContext, step, workflow

_active = 0  # steps of `tracked` running now in this process


def _append(path: str, line: str) -> None:
    # O_APPEND: one write per line, so lines from concurrent steps never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@step
async def add(a: int, b: int) -> int:
    return a + b


@workflow(name="echo")
async def echo(ctx: WorkflowContext, value: object) -> object:
    return {"value": value, "sum": await add(1, 2)}


@workflow(name="fail")
async def fail(ctx: WorkflowContext, message: str) -> None:
    raise ValueError(message)


@step
async def nap(log_path: str, tag: str, seconds: float) -> str:
    """Sleep, then record that this step finished: one line per execution."""
    await asyncio.sleep(seconds)
    _append(log_path, tag)
    return tag


@workflow(name="chain")
async def chain(ctx: WorkflowContext, log_path: str, n: int, seconds: float) -> list[str]:
    """n sleeping steps one after another."""
    return [await nap(log_path, f"{ctx.run_id}:{i}", seconds) for i in range(n)]


@workflow(name="fanout")
async def fanout(ctx: WorkflowContext, log_path: str, n: int, seconds: float) -> list[str]:
    """n sleeping steps at once."""
    return list(
        await asyncio.gather(*(nap(log_path, f"{ctx.run_id}:{i}", seconds) for i in range(n)))
    )


@step
async def tracked(log_path: str, seconds: float) -> int:
    """Record how many tracked steps run at this moment (including this one), then sleep."""
    global _active
    _active += 1
    try:
        _append(log_path, str(_active))
        await asyncio.sleep(seconds)
        return _active
    finally:
        _active -= 1


@workflow(name="parallel")
async def parallel(ctx: WorkflowContext, log_path: str, n: int, seconds: float) -> int:
    """n tracked steps at once; the log shows the highest concurrency the engine allowed."""
    await asyncio.gather(*(tracked(log_path, seconds) for _ in range(n)))
    return n


@workflow(name="long_sleep")
async def long_sleep(ctx: WorkflowContext, seconds: float) -> str:
    await ctx.sleep(seconds)
    return "woke"


@step
def flip(path: str) -> str:
    """Change the file the `switch` workflow reads, so its next replay takes the other branch."""
    Path(path).write_text("b")
    return "a"


def _read(path: str) -> str:
    return Path(path).read_text()


@step
async def other(path: str) -> str:
    return "b"


@workflow(name="switch")
async def switch(ctx: WorkflowContext, path: str) -> str:
    """Nondeterministic on purpose: reads a file outside any step. With instance_cache_size = 0,
    every result replays from scratch, the file says "b" by then, and the run parks. Write "a"
    back and `executor resume` it, and it finishes."""
    chosen = flip(path) if _read(path) == "a" else other(path)
    return await chosen


@step(retry=RetryPolicy(max_attempts=2, initial_backoff_s=0))
async def broken(message: str) -> None:
    raise ValueError(message)


@workflow(name="step_fails")
async def step_fails(ctx: WorkflowContext, message: str) -> None:
    """Its one step fails on both attempts, so the run fails at that step."""
    await broken(message)


@step
async def chatter(tag: str) -> str:
    """Log at info and at warning on a logger of its own (like an HTTP client would)."""
    chatty = logging.getLogger("tests.support.chatty")
    chatty.info("chatty info %s", tag)
    chatty.warning("chatty warning %s", tag)
    return tag


@workflow(name="chatty")
async def chatty(ctx: WorkflowContext, tag: str) -> str:
    return await chatter(tag)


# --- the crash loop (tests/acceptance/test_crashloop.py) and the reliability tests ---------------


LOG_ENV = "CRASHLOOP_LOG"
STATE_ENV = "CRASHLOOP_STATE"  # a folder: per-step execution counters of the flaky steps
MARKER_ENV = "CRASHLOOP_MARKER"  # a file the `blocker` workflow writes its block's start/end to
MAX_STEP_S = 0.1  # async steps take up to this long, so kills land inside steps too

FAST_RETRY = RetryPolicy(max_attempts=5, initial_backoff_s=0.02, max_backoff_s=0.1, jitter=0.5)
DOOMED_ATTEMPTS = 2
DOOMED_RETRY = RetryPolicy(max_attempts=DOOMED_ATTEMPTS, initial_backoff_s=0.02, max_backoff_s=0.05)


def _log(event: str, run: str, label: str) -> None:
    line = orjson.dumps(
        {"ev": event, "run": run, "label": label, "pid": os.getpid(), "t": time.time()}
    )
    # O_APPEND: one write per line, so concurrent steps never interleave their lines; fsync so
    # a line that was written is there whatever happens to the process next.
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


async def _work() -> None:
    await asyncio.sleep(random.random() * MAX_STEP_S)


# --- steps ---------------------------------------------------------------------------------------


def bump_value(value: int, i: int) -> int:
    return (value * 3 + i) % 1_000_003


@step(name="crashloop.bump")
async def bump(run: str, label: str, value: int, i: int) -> int:
    _log("begin", run, label)
    await _work()
    _log("ok", run, label)
    return bump_value(value, i)


@step(name="crashloop.bump_sync")
def bump_sync(run: str, label: str, value: int, i: int) -> int:
    """The same as bump, as a plain function: it runs in a thread."""
    _log("begin", run, label)
    time.sleep(random.random() * MAX_STEP_S)
    _log("ok", run, label)
    return bump_value(value, i)


@step(name="crashloop.square")
async def square(run: str, label: str, value: int) -> int:
    _log("begin", run, label)
    await _work()
    _log("ok", run, label)
    return value * value


@step(name="crashloop.total")
def total(run: str, label: str, values: list[int]) -> int:
    _log("begin", run, label)
    _log("ok", run, label)
    return sum(values)


def _executions_so_far(run: str, label: str) -> int:
    """Count this execution in a per-step file; return how many came before it."""
    path = os.path.join(os.environ[STATE_ENV], f"{run}.{label}")
    try:
        with open(path, "rb") as f:
            before = int(f.read() or b"0")
    except FileNotFoundError:
        before = 0
    # Written aside and renamed over: a SIGKILL between truncating the file and writing it used
    # to leave it empty, which reads as 0 and made a `flaky` step fail more times than asked.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(str(before + 1).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return before


@step(name="crashloop.flaky", retry=FAST_RETRY)
async def flaky(run: str, label: str, value: int, failures: int) -> int:
    """Fails its first `failures` executions, then succeeds."""
    _log("begin", run, label)
    await _work()
    if _executions_so_far(run, label) < failures:
        _log("fail", run, label)
        raise ConnectionError(f"flaky: failing on purpose ({failures} times in all)")
    _log("ok", run, label)
    return value + 100


@step(name="crashloop.doomed", retry=DOOMED_RETRY)
async def doomed(run: str, label: str) -> None:
    """Fails every time: the run sees StepFailed once retries are spent."""
    _log("begin", run, label)
    await _work()
    _log("fail", run, label)
    raise ValueError("doomed: this step always fails")


# --- workflows -----------------------------------------------------------------------------------


@workflow(name="crashloop.sequential")
async def sequential(ctx: WorkflowContext, value: int, n: int) -> int:
    for i in range(n):
        fn = bump if i % 2 == 0 else bump_sync
        value = await fn(ctx.run_id, f"s{i}", value, i)
    return value


@workflow(name="crashloop.fanout")
async def crash_fanout(ctx: WorkflowContext, value: int, k: int) -> int:
    squares = await asyncio.gather(*(square(ctx.run_id, f"f{i}", value + i) for i in range(k)))
    return await total(ctx.run_id, "join", list(squares))


@workflow(name="crashloop.sleeper")
async def sleeper(ctx: WorkflowContext, value: int, seconds: float) -> int:
    a = await bump(ctx.run_id, "before", value, 1)
    await ctx.sleep(seconds)
    return await bump(ctx.run_id, "after", a, 2)


@workflow(name="crashloop.flaky")
async def flaky_flow(ctx: WorkflowContext, value: int, failures: int) -> int:
    got = await flaky(ctx.run_id, "flaky", value, failures)
    return await bump(ctx.run_id, "then", got, 3)


@workflow(name="crashloop.doomed")
async def doomed_flow(ctx: WorkflowContext, catch: bool) -> str:
    if not catch:
        await doomed(ctx.run_id, "doomed")
        return "unreachable"
    try:
        await doomed(ctx.run_id, "doomed")
    except Exception as exc:
        return f"caught {type(exc).__name__}"
    return "unreachable"


@workflow(name="crashloop.blocker")
async def blocker(ctx: WorkflowContext, seconds: float) -> str:
    """Blocks the event loop (a bug a user could write): time.sleep in workflow code."""
    marker = os.environ.get(MARKER_ENV)
    started = time.time()
    time.sleep(seconds)  # noqa: ASYNC251 - the bug the watchdog test shows
    if marker:
        with open(marker, "w") as f:  # noqa: ASYNC230 - after the block, for the test to read
            f.write(f"{started} {time.time()}")
    return "unblocked"


REVIEW_TOPIC = "approve"


def review_payload(value: int) -> int:
    """What the test sends to a `review` run: derived from its argument, so it can be checked."""
    return value * 7 + 1


@workflow(name="crashloop.review")
async def review(ctx: WorkflowContext, value: int, signalled: bool) -> int:
    """Waits for a signal the test sends (from its own process, daemon up or down); a run the
    test never signals times out into the default."""
    a = await bump(ctx.run_id, "r-before", value, 4)
    timeout = 3600.0 if signalled else 0.05
    got = await ctx.wait_for(REVIEW_TOPIC, timeout=timeout, default=-1)
    ctx.set_event("got", got)
    return await bump(ctx.run_id, "r-after", a + got, 5)


@workflow(name="crashloop.leaf")
async def leaf(ctx: WorkflowContext, value: int, depth: int) -> int:
    """A child; at depth > 0 it has a child of its own."""
    got = await bump(ctx.run_id, "leaf", value, 6)
    if depth > 0:
        got += await ctx.child(leaf, got, depth - 1)
    return got


@workflow(name="crashloop.tree")
async def tree(ctx: WorkflowContext, value: int, k: int) -> int:
    parts = await asyncio.gather(*(ctx.child(leaf, value + i, i % 2) for i in range(k)))
    return await total(ctx.run_id, "join", list(parts))


def _leaf_value(value: int, depth: int) -> int:
    got = bump_value(value, 6)
    return got + _leaf_value(got, depth - 1) if depth > 0 else got


def children(run_id: str, name: str, args: list[Any]) -> dict[str, tuple[str, list[Any]]]:
    """The child runs a run starts (and theirs), by id: (workflow, arguments)."""
    found: dict[str, tuple[str, list[Any]]] = {}
    if name == "crashloop.tree":
        value, k = args
        for i in range(k):
            child = f"{run_id}.{i}"
            found[child] = ("crashloop.leaf", [value + i, i % 2])
            found |= children(child, "crashloop.leaf", [value + i, i % 2])
    elif name == "crashloop.leaf":
        value, depth = args
        if depth > 0:
            got = bump_value(value, 6)
            found[f"{run_id}.1"] = ("crashloop.leaf", [got, depth - 1])
    return found


# --- what each run must end with, and which steps it must run ---------------------------------


def expected(name: str, args: list[Any]) -> tuple[str, Any]:
    """(status, result) for a finished run; for a failed run, the result is the error type."""
    if name == "crashloop.sequential":
        value, n = args
        for i in range(n):
            value = bump_value(value, i)
        return "succeeded", value
    if name == "crashloop.fanout":
        value, k = args
        return "succeeded", sum((value + i) ** 2 for i in range(k))
    if name == "crashloop.sleeper":
        value, _ = args
        return "succeeded", bump_value(bump_value(value, 1), 2)
    if name == "crashloop.flaky":
        value, _ = args
        return "succeeded", bump_value(value + 100, 3)
    if name == "crashloop.doomed":
        (catch,) = args
        return ("succeeded", "caught StepFailed") if catch else ("failed", "StepFailed")
    if name == "crashloop.review":
        value, signalled = args
        got = review_payload(value) if signalled else -1
        return "succeeded", bump_value(bump_value(value, 4) + got, 5)
    if name == "crashloop.leaf":
        return "succeeded", _leaf_value(*args)
    if name == "crashloop.tree":
        value, k = args
        return "succeeded", sum(_leaf_value(value + i, i % 2) for i in range(k))
    raise ValueError(name)


def labels(name: str, args: list[Any]) -> list[str]:
    """The labels of the steps the run executes (sleeps are not steps)."""
    if name == "crashloop.sequential":
        return [f"s{i}" for i in range(args[1])]
    if name == "crashloop.fanout":
        return [f"f{i}" for i in range(args[1])] + ["join"]
    if name == "crashloop.sleeper":
        return ["before", "after"]
    if name == "crashloop.flaky":
        return ["flaky", "then"]
    if name == "crashloop.doomed":
        return ["doomed"]
    if name == "crashloop.review":
        return ["r-before", "r-after"]
    if name == "crashloop.leaf":
        return ["leaf"]
    if name == "crashloop.tree":
        return ["join"]
    raise ValueError(name)


@workflow(name="approval")
async def approval(ctx: WorkflowContext, subject: str) -> object:
    """Publish a stage, wait for a reviewer's signal, finish with it."""
    ctx.set_event("stage", "waiting")
    decision = await ctx.wait_for("review")
    return {"subject": subject, "decision": decision, "sum": await add(1, 1)}


@workflow(name="ticker")
async def ticker(ctx: WorkflowContext, tick: float, tag: str) -> str:
    """Started by a schedule: the tick's time comes first."""
    return f"{tag}@{tick:.0f}"


# --- an outage, for the repair tests: call_model fails while the flag file exists ---------------


@step(name="fetch_doc", retry=RetryPolicy(max_attempts=1))
async def fetch_doc(log_path: str, key: str) -> str:
    _append(log_path, f"{key} fetch_doc")
    return f"doc {key}"


@step(name="call_model", retry=RetryPolicy(max_attempts=1))
def call_model(log_path: str, flag_path: str, key: str, doc: str) -> str:
    if os.path.exists(flag_path):
        raise ConnectionError("provider outage: 529 overloaded")
    _append(log_path, f"{key} call_model")
    return f"summary of {doc}"


@step(name="save", retry=RetryPolicy(max_attempts=1))
async def save(log_path: str, key: str, text: str) -> str:
    _append(log_path, f"{key} save")
    return text


@workflow(name="outage")
async def outage(ctx: WorkflowContext, log_path: str, flag_path: str, key: str) -> str:
    doc = await fetch_doc(log_path, key)
    text = await call_model(log_path, flag_path, key, doc)
    return await save(log_path, key, text)


@step
async def stamp(log_path: str, tag: str, seconds: float) -> int:
    """Log `start TAG PID`, sleep, log `end TAG PID`; return the pid of the process that ran it."""
    _append(log_path, f"start {tag} {os.getpid()}")
    await asyncio.sleep(seconds)
    _append(log_path, f"end {tag} {os.getpid()}")
    return os.getpid()


@workflow(name="stamps")
async def stamps(ctx: WorkflowContext, log_path: str, n: int, seconds: float) -> list[int]:
    """n stamp steps at once; the result says which process ran each one."""
    return list(
        await asyncio.gather(*(stamp(log_path, f"{ctx.run_id}:{i}", seconds) for i in range(n)))
    )
