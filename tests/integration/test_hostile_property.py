"""Generated hostile input (hypothesis) against the CLI, config files, environment variables and
the `Client`, on a real database file (issue 9). Whatever comes in:

- the CLI exits with a documented code, never 70 (internal error), with exactly one
  `executor: error:` line on stderr when it fails and nothing on stderr when it succeeds;
- the Client raises only ExecutorError subclasses, never a bare Python exception;
- no thread dies with a traceback, and `executor check` stays clean on the file.

The CLI runs in this process (`cli.main(argv)`) to keep hundreds of examples fast; the acceptance
tests run the same kinds of input through real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from executor import Client, check, cli, config, errors
from executor.exitcodes import ExitCode

DB_NAME = "executor.sqlite"  # relative: the examples run in their own working directory
DOCUMENTED = {int(code) for code in ExitCode} - {int(ExitCode.INTERNAL), int(ExitCode.FORCED)}

# Any code point, surrogates and controls included (what a non-UTF-8 argv or file decodes to).
ANY_CHAR = st.characters(exclude_categories=())
SPECIAL = [
    "",
    " ",
    "-",
    "--",
    "\x00",
    "\udcff",
    "\ud800x",
    "\n",
    "9" * 5000,
    str(2**63),
    str(-(2**63) - 1),
    "-1",
    "0",
    "nan",
    "inf",
    "-inf",
    "1e999",
    "[",
    "[]",
    "{}",
    "null",
]
TEXT = st.one_of(st.text(ANY_CHAR, max_size=24), st.sampled_from(SPECIAL))
NUMBER_TEXT = st.one_of(st.integers().map(str), st.floats().map(str), TEXT)
# --args values: JSON that Python's parser cannot take (too deep, an int of over 4,300 digits),
# JSON our codec refuses (a lone surrogate, an int beyond 64 bits), not an array, and valid.
_JSON_SPECIAL = st.sampled_from(
    [
        "[" * 20000 + "]" * 20000,  # deeper than any recursion limit (hypothesis raises it)
        "[" + "7" * 4400 + "]",
        '["\\ud800"]',
        "[" + str(2**64) + "]",
        "{}",
    ]
)
JSON_ARGS = st.one_of(_JSON_SPECIAL, _JSON_SPECIAL, TEXT, st.just("[1]"))


def no_slash(text: str) -> str:
    """A file name inside the test's folder: generated paths must not reach the rest of the disk."""
    return text.replace("/", "_").replace("\x00", "_") or "_"


@st.composite
def argv(draw: st.DrawFn) -> list[str]:
    verb = draw(
        st.sampled_from(
            [
                "status",
                "result",
                "cancel",
                "resume",
                "fail",
                "list",
                "start",
                "start",
                "start",
                "check",
                "stats",
                "migrate",
                "check-config",
                "bump-epoch",
                "fail-pending",
                "clear-task-queue",
                "clear-replay-queue",
                "nonsense",
                "show",
                "signal",
                "event",
            ]
        )
    )
    run = draw(TEXT)
    # `--option=value` and positionals after `--`: a value that starts with "-" reaches the verb
    # instead of stopping at argparse (which the acceptance tests cover).
    options: list[str] = []
    positionals: list[str] = []
    if verb in ("status", "cancel", "resume", "show"):
        positionals.append(run)
    elif verb == "signal":
        positionals += [run, draw(TEXT)]
        if draw(st.booleans()):
            options.append(f"--payload={draw(JSON_ARGS)}")
        if draw(st.booleans()):
            options.append(f"--key={draw(TEXT)}")
    elif verb == "event":
        positionals += [run, draw(TEXT)]
    elif verb == "result":
        positionals.append(run)
        if draw(st.booleans()):
            timeout = draw(st.sampled_from(["0", "0.01", "-1", "nan", "x"]))
            options += ["--wait", f"--timeout={timeout}"]
    elif verb == "fail":
        positionals.append(run)
        options.append(f"--reason={draw(TEXT)}")
    elif verb == "list":
        if draw(st.booleans()):
            options.append(f"--status={draw(st.one_of(TEXT, st.sampled_from(['running'])))}")
        if draw(st.booleans()):
            options.append(f"--limit={draw(NUMBER_TEXT)}")
    elif verb == "start":
        positionals.append(draw(st.one_of(TEXT, st.just("echo"))))
        if draw(st.integers(0, 3)):
            options.append(f"--args={draw(JSON_ARGS)}")
        for option in ("--key", "--shard-key", "--concurrency-key"):
            if draw(st.booleans()):
                options.append(f"{option}={draw(TEXT)}")
    elif verb == "check" and draw(st.booleans()):
        options.append(f"--lease={draw(NUMBER_TEXT)}")
    elif verb in ("fail-pending", "clear-task-queue", "clear-replay-queue"):
        options += [f"--shard={draw(NUMBER_TEXT)}", "--yes"]
    if draw(st.booleans()):
        options.append("--json")
    out = [verb, *options]
    if positionals:
        out += ["--", *positionals]
    return out


# Config keys a hostile value may go to; daemon.workflows is left out on purpose: a valid module
# name would import a real module (say `antigravity`), which is not input handling.
CONFIG_KEYS = [
    ("database", "busy_timeout_s"),
    ("database", "durability"),
    ("database", "group_readable"),
    ("database", "quick_check_on_start"),
    ("engine", "shards"),
    ("engine", "concurrency"),
    ("engine", "lease_s"),
    ("engine", "payload_limit_bytes"),
    ("log", "level"),
    ("daemon", "loop"),
    ("nosuchsection", "key"),
    ("engine", "nosuchkey"),
]
TOML_VALUE = st.one_of(
    TEXT.map(json.dumps),  # a TOML basic string (\\u escapes of surrogates are invalid TOML)
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["true", "false", "[]", "{}", "[1, 2]", '"', "=", "1979-05-27"]),
)


@st.composite
def config_text(draw: st.DrawFn) -> bytes:
    lines = [f"[database]\npath = {json.dumps(DB_NAME)}"]
    for section, key in draw(st.lists(st.sampled_from(CONFIG_KEYS), max_size=3)):
        lines.append(f"[{section}]\n{key} = {draw(TOML_VALUE)}")
    if draw(st.booleans()):
        lines.append(f"[database]\npath = {json.dumps(no_slash(draw(TEXT)))}")
    text = "\n".join(lines).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        text += draw(st.binary(max_size=16))  # bytes that are not UTF-8 at all
    return text


ENV_NAMES = [
    "EXECUTOR_DATABASE_BUSY_TIMEOUT_S",
    "EXECUTOR_ENGINE_SHARDS",
    "EXECUTOR_ENGINE_LEASE_S",
    "EXECUTOR_LOG_LEVEL",
    "EXECUTOR_DATABASE_PATH",
    "EXECUTOR_NO_SUCH_SETTING",
    "EXECUTOR_CONFIG",
]


@st.composite
def environment(draw: st.DrawFn) -> dict[str, str]:
    env = {}
    for name in draw(st.lists(st.sampled_from(ENV_NAMES), max_size=2, unique=True)):
        # An environment holds bytes; Python shows the non-UTF-8 ones as \udc80-\udcff.
        raw = draw(
            st.one_of(
                st.binary(max_size=24), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))
            )
        )
        value = os.fsdecode(raw.replace(b"\0", b""))
        if name in ("EXECUTOR_DATABASE_PATH", "EXECUTOR_CONFIG"):
            value = no_slash(value)
        env[name] = value
    return env


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("EXECUTOR_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(values)
    try:
        yield
    finally:
        for name in [k for k in os.environ if k.startswith("EXECUTOR_")]:
            del os.environ[name]
        os.environ.update(saved)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One folder for every example, the process's working directory meanwhile (relative paths
    the examples generate land here), with /etc/executor out of reach."""
    directory = tmp_path_factory.mktemp("hostile")
    before = Path.cwd()
    default = config.DEFAULT_CONFIG_PATH
    config.DEFAULT_CONFIG_PATH = directory / "no-such-etc" / "executor.toml"
    os.chdir(directory)
    try:
        yield directory
    finally:
        os.chdir(before)
        config.DEFAULT_CONFIG_PATH = default


@pytest.fixture(scope="module")
def thread_deaths() -> Iterator[list[str]]:
    """Every exception that kills a thread meanwhile (aiosqlite's 'Event loop is closed' was)."""
    deaths: list[str] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        deaths.append(f"{args.exc_type.__name__}: {args.exc_value}")

    threading.excepthook = hook
    yield deaths
    threading.excepthook = previous


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_clean(db: Path) -> None:
    if not db.is_file():
        return
    try:
        report = check.check(db, lease_s=3600)
    except errors.StoreError:
        return  # an example turned the path into something that is not our database: fine
    assert report.ok, report.summary()


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@example(argv=["start", "echo", "--args=" + "[" * 20000 + "]" * 20000], env={}, config_bytes=b"")
@example(argv=["start", "echo", "--args=[" + "7" * 4400 + "]"], env={}, config_bytes=b"")
@example(argv=["start", "echo", "--key=\udcff"], env={}, config_bytes=b"")
@example(argv=["start", "echo", "--shard-key=\udcff"], env={}, config_bytes=b"")
@example(argv=["start", "echo", "--concurrency-key=\udcff"], env={}, config_bytes=b"")
@example(argv=["start", "echo", "--concurrency-key="], env={}, config_bytes=b"")
@example(argv=["status", "--", "\udcff"], env={}, config_bytes=b"")
@example(argv=["list", f"--limit={2**63}"], env={}, config_bytes=b"")
@example(argv=["status", "x"], env={"EXECUTOR_DATABASE_PATH": "a" * 300}, config_bytes=b"")
@example(argv=["list"], env={}, config_bytes=b"[database]\npath = '" + b"b" * 300 + b"'")
@example(argv=["list"], env={}, config_bytes=b"\xff\xfe")
@example(argv=["fail-pending", "--shard=--", "--yes"], env={}, config_bytes=b"")  # found by it
@example(argv=["signal", "--payload=" + "[" * 20000, "--", "r", "t"], env={}, config_bytes=b"")
@given(
    argv=argv(),
    env=environment(),
    config_bytes=config_text(),
)
def test_the_cli_never_crashes_on_hostile_input(
    workdir: Path,
    thread_deaths: list[str],
    argv: list[str],
    env: dict[str, str],
    config_bytes: bytes,
) -> None:
    db = workdir / DB_NAME
    config_path = workdir / "executor.toml"
    config_path.write_bytes(config_bytes)
    with environ(env):
        code, _, err = run_main(["--config", str(config_path), *argv])
    assert code in DOCUMENTED, (code, argv, env, err)
    if code == 0:
        assert err == "", (argv, err)
    else:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("executor: error: "), (argv, env, err)
    assert thread_deaths == []
    assert_clean(db)


# --- the Client -----------------------------------------------------------------------------------

ANYTHING = st.one_of(
    TEXT,
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.floats(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def client_call(draw: st.DrawFn) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    method = draw(
        st.sampled_from(
            [
                "start",
                "start_many",
                "status",
                "result",
                "cancel",
                "resume",
                "fail",
                "list",
                "fail_pending_tasks",
                "clear_task_queue",
                "clear_replay_queue",
                "history",
                "signal",
                "get_event",
                "get_schedule",
                "pause_schedule",
                "trigger_schedule",
                "unschedule",
                "retry",
                "fork",
            ]
        )
    )
    if method in ("retry", "fork"):
        return method, (draw(ANYTHING), draw(ANYTHING)), {}
    if method == "signal":
        return method, (draw(ANYTHING), draw(ANYTHING), draw(ANYTHING)), {"key": draw(ANYTHING)}
    if method == "get_event":
        return method, (draw(ANYTHING), draw(ANYTHING)), {"wait": draw(st.sampled_from([0, -1]))}
    if method == "start":
        kwargs = {
            name: draw(ANYTHING)
            for name in ("idempotency_key", "shard_key", "concurrency_key")
            if draw(st.booleans())
        }
        return method, (draw(ANYTHING), *draw(st.lists(ANYTHING, max_size=2))), kwargs
    if method == "start_many":
        kwargs = {
            name: draw(st.one_of(st.none(), st.lists(ANYTHING, max_size=3)))
            for name in ("idempotency_keys", "shard_keys", "concurrency_keys")
            if draw(st.booleans())
        }
        return method, (draw(ANYTHING), draw(st.one_of(ANYTHING, st.lists(ANYTHING)))), kwargs
    if method == "result":
        return method, (draw(ANYTHING),), {"timeout": draw(st.sampled_from([0, 0.0, -1, None]))}
    if method == "fail":
        return method, (draw(ANYTHING), draw(ANYTHING)), {}
    if method == "list":
        return method, (draw(ANYTHING), draw(ANYTHING)), {}
    return method, (draw(ANYTHING),), {}


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(calls=st.lists(client_call(), min_size=1, max_size=5))
def test_the_client_raises_only_executor_errors(
    workdir: Path,
    thread_deaths: list[str],
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]],
) -> None:
    db = workdir / "client.sqlite"

    async def go() -> None:
        async with Client(db) as client:
            for method, args, kwargs in calls:
                if method == "result" and kwargs.get("timeout") is None:
                    kwargs = {"timeout": 0}  # never wait for a run no engine works on
                with contextlib.suppress(errors.ExecutorError):
                    await getattr(client, method)(*args, **kwargs)

    asyncio.run(go())
    assert thread_deaths == []
    assert_clean(db)
