"""Logging: one line per event on stderr, human text on a terminal and JSON lines otherwise.

Under systemd, stderr goes to the journal, so JSON lines there stay machine-readable.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TextIO

import orjson

from executor.errors import ConfigError

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LOGGER_LEVELS = {**LEVELS, "critical": logging.CRITICAL}
FORMATS = ("auto", "text", "json")

# aiosqlite logs every statement at DEBUG, which would drown our own debug output.
_NOISY_LOGGERS = {"aiosqlite": logging.INFO}

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_JSON_KEYS = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


class _Handler(logging.StreamHandler[TextIO]):
    """Our handler, marked by its class so setup_logging can find and replace it."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            # An extra named like one of our fields must not overwrite it, nor be lost.
            doc[f"extra_{key}" if key in _JSON_KEYS else key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(doc, default=repr, option=_JSON_OPTIONS).decode()
        except orjson.JSONEncodeError:
            # e.g. an int beyond 64 bits: a lossy line beats a "--- Logging error ---" dump.
            fallback = {
                key: value if key in _JSON_KEYS else repr(value) for key, value in doc.items()
            }
            return orjson.dumps(fallback, option=_JSON_OPTIONS).decode()


class TextFormatter(logging.Formatter):
    """Human-readable: time, level, logger, message, then extra fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s")
        self.datefmt = "%Y-%m-%d %H:%M:%S"

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        # A field the message already shows (a run id, say) is only repeated in JSON lines.
        message = record.getMessage()
        extras = {k: v for k, v in _extras(record).items() if str(v) not in message}
        if extras:
            line += " " + " ".join(f"{key}={value!r}" for key, value in extras.items())
        return line


def setup_logging(
    level: str,
    fmt: str,
    stream: TextIO | None = None,
    levels: Iterable[tuple[str, str]] = (),
) -> None:
    """Send all logging to `stream` (stderr by default); safe to call again, e.g. on SIGHUP."""
    # Check both before touching the handlers, so a bad call leaves logging as it was.
    if level not in LEVELS:
        raise ConfigError(f"log.level: expected one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ConfigError(f"log.format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    # Resolved at call time: a default of sys.stderr would pin whatever stderr was at import.
    stream = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "text" if _isatty(stream) else "json"
    handler = _Handler(stream)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()  # closes nothing of the stream; only unregisters the handler
    root.addHandler(handler)
    set_level(level, levels)


# Loggers whose level [log.levels] set, so a reload that drops one gives it back to the root.
_configured: set[str] = set()


def set_level(level: str, levels: Iterable[tuple[str, str]] = ()) -> None:
    """Change the log level and the per-logger levels ([log.levels]) live (SIGHUP)."""
    number = LEVELS.get(level)
    if number is None:
        raise ConfigError(f"log.level: expected one of {', '.join(LEVELS)}, got {level!r}")
    per_logger = dict(levels)
    for name, value in per_logger.items():
        if value not in LOGGER_LEVELS:
            raise ConfigError(
                f"log.levels.{name}: expected one of {', '.join(LOGGER_LEVELS)}, got {value!r}"
            )
    logging.getLogger().setLevel(number)
    for name in _configured - per_logger.keys():
        logging.getLogger(name).setLevel(logging.NOTSET)
    # A logger with a level of its own ignores the root's, so the floor has to rise with the root
    # level too: otherwise aiosqlite's INFO records would get through `level = "error"`.
    for name, floor in _NOISY_LOGGERS.items():
        if name not in per_logger:
            logging.getLogger(name).setLevel(max(floor, number))
    for name, value in per_logger.items():
        logging.getLogger(name).setLevel(LOGGER_LEVELS[value])
    _configured.clear()
    _configured.update(per_logger)


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False
