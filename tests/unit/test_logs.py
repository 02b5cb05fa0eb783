"""Logging setup: JSON lines, text lines, extra fields, and replacing the handler on re-setup."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import datetime

import orjson
import pytest

from executor.daemon import logs
from executor.errors import ConfigError


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """Leave the root logger as pytest configured it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in logs._NOISY_LOGGERS}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name, old in noisy.items():
        logging.getLogger(name).setLevel(old)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_have_the_fields() -> None:
    stream = io.StringIO()
    logs.setup_logging("info", "json", stream)
    logging.getLogger("executor.engine").info("claimed %d tasks", 3)
    (doc,) = json_lines(stream)
    assert doc == {
        "ts": doc["ts"],
        "level": "info",
        "logger": "executor.engine",
        "msg": "claimed 3 tasks",
    }
    assert isinstance(doc["ts"], str)
    assert doc["ts"].endswith("Z")
    assert datetime.fromisoformat(doc["ts"]).utcoffset() is not None


def test_json_includes_extra_fields_and_exceptions() -> None:
    stream = io.StringIO()
    logs.setup_logging("info", "json", stream)
    log = logging.getLogger("executor.runner")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception(
            "step failed", extra={"run_id": "r1", "attempt": 2, "level": "clash", "obj": object()}
        )
    (doc,) = json_lines(stream)
    assert doc["run_id"] == "r1"
    assert doc["attempt"] == 2
    assert doc["level"] == "error"
    assert doc["extra_level"] == "clash"  # kept, without overwriting ours
    assert str(doc["obj"]).startswith("<object object")
    assert isinstance(doc["exc"], str)
    assert "ValueError: boom" in doc["exc"]
    assert "Traceback" in doc["exc"]


def test_json_survives_values_orjson_cannot_encode() -> None:
    stream = io.StringIO()
    logs.setup_logging("info", "json", stream)
    logging.getLogger("x").info("big", extra={"n": 2**80})
    (doc,) = json_lines(stream)
    assert doc["n"] == str(2**80)
    assert doc["msg"] == "big"


def test_text_lines_are_human_readable_and_show_extras() -> None:
    stream = io.StringIO()
    logs.setup_logging("info", "text", stream)
    logging.getLogger("executor.engine").warning("slow commit", extra={"ms": 250})
    (line,) = stream.getvalue().splitlines()
    assert "WARNING" in line
    assert "executor.engine: slow commit" in line
    assert line.endswith("ms=250")


def test_auto_picks_text_on_a_tty_and_json_otherwise() -> None:
    tty, pipe = FakeTTY(), io.StringIO()
    logs.setup_logging("info", "auto", tty)
    logging.getLogger("a").info("hello")
    logs.setup_logging("info", "auto", pipe)
    logging.getLogger("a").info("hello")
    assert not tty.getvalue().startswith("{")
    assert "a: hello" in tty.getvalue()
    assert json_lines(pipe)[0]["msg"] == "hello"


def test_setup_again_replaces_the_handler_and_level() -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.setup_logging("info", "json", first)
    logs.setup_logging("warning", "text", second)
    ours = [h for h in logging.getLogger().handlers if isinstance(h, logs._Handler)]
    assert len(ours) == 1
    logging.getLogger("a").info("dropped")
    logging.getLogger("a").warning("kept")
    assert first.getvalue() == ""
    assert "kept" in second.getvalue()
    assert "dropped" not in second.getvalue()


def test_set_level_applies_live() -> None:
    stream = io.StringIO()
    logs.setup_logging("warning", "json", stream)
    logging.getLogger("a").debug("before")
    logs.set_level("debug")
    logging.getLogger("a").debug("after")
    assert [doc["msg"] for doc in json_lines(stream)] == ["after"]


def test_aiosqlite_debug_chatter_stays_quiet() -> None:
    stream = io.StringIO()
    logs.setup_logging("debug", "json", stream)
    logging.getLogger("aiosqlite").debug("executing SELECT 1")
    logs.set_level("error")
    logging.getLogger("aiosqlite").warning("not an error")
    assert stream.getvalue() == ""


def test_bad_level_or_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^log\.level: "):
        logs.setup_logging("verbose", "json", io.StringIO())
    with pytest.raises(ConfigError, match=r"^log\.format: "):
        logs.setup_logging("info", "xml", io.StringIO())
