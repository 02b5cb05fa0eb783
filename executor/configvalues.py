"""The value types of the configuration: how each key's value is checked and shown.

`config` maps every key to one of these; a value that does not fit raises Invalid, and config
adds the file or variable and the key, so each error is one line naming what and where.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from pathlib import Path

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MAX_SHOWN_CHARS = 80  # long offending values are cut so each error stays one readable line
_ENV_TRUE = frozenset({"true", "1", "yes"})
_ENV_FALSE = frozenset({"false", "0", "no"})


class LoggerLevels(tuple[tuple[str, str], ...]):
    """[log.levels]: (logger name, level) pairs, sorted by name; a table in TOML."""

    __slots__ = ()

    def __str__(self) -> str:
        return ", ".join(f"{name}={level}" for name, level in self) or "none"


class Invalid(Exception):
    """A value does not fit its key; the caller adds the origin and the key."""

    def __init__(self, expected: str, got: str | None = None, suffix: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got  # replaces the shown value when only a part of it is wrong
        self.suffix = suffix  # e.g. "[2]" for one bad list entry


class Spec:
    """How one key's value is checked, and how its environment variable is read."""

    expected = "a value"
    # What the environment variable may hold, when it differs from the TOML form.
    env_expected: str | None = None

    def parse(self, value: object) -> object:
        raise NotImplementedError

    def from_env(self, text: str) -> object:
        return text

    def fail(self) -> Invalid:
        return Invalid(self.expected)


class Int(Spec):
    def __init__(self, low: int, high: int | None = None) -> None:
        self.low = low
        self.high = high
        self.expected = (
            f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        )

    def parse(self, value: object) -> object:
        # bool is an int subclass, but `concurrency = true` is a mistake, not 1.
        if (
            type(value) is not int
            or value < self.low
            or (self.high is not None and value > self.high)
        ):
            raise self.fail()
        return value

    def from_env(self, text: str) -> object:
        try:
            return int(text.strip())
        except ValueError:
            return text


class PowerOfTwo(Int):
    """An integer power of two within [low, high] (SQLite's page size)."""

    def __init__(self, low: int, high: int) -> None:
        super().__init__(low, high)
        self.expected = f"a power of two from {low} to {high}"

    def parse(self, value: object) -> object:
        value = super().parse(value)
        if not isinstance(value, int) or value & (value - 1):
            raise self.fail()
        return value


class Seconds(Spec):
    expected = "a number of seconds greater than 0"

    def __init__(self, *, zero: bool = False) -> None:
        self.zero = zero  # 0 allowed (it means "no wait")
        if zero:
            self.expected = "a number of seconds, 0 or more"

    def parse(self, value: object) -> object:
        # bool is an int subclass, but `lease_s = true` is a mistake, not 1 second.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail()
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not self.zero):
            raise self.fail()
        return seconds

    def from_env(self, text: str) -> object:
        try:
            return float(text.strip())
        except ValueError:
            return text


class Fraction(Spec):
    """A number within (low, high), each end included or not."""

    def __init__(self, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        left, right = ("(" if low_open else "["), (")" if high_open else "]")
        self.expected = f"a number in {left}{low:g}, {high:g}{right}"

    def parse(self, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail()
        x = float(value)
        low_ok = x > self.low if self.low_open else x >= self.low
        high_ok = x < self.high if self.high_open else x <= self.high
        if not (math.isfinite(x) and low_ok and high_ok):
            raise self.fail()
        return x


class Days(Spec):
    expected = "a number of days >= 0 (0: never)"

    def parse(self, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail()
        days = float(value)
        if not math.isfinite(days) or days < 0:
            raise self.fail()
        return days

    def from_env(self, text: str) -> object:
        try:
            return float(text.strip())
        except ValueError:
            return text


class Bool(Spec):
    expected = "true or false"
    env_expected = "true, false, yes, no, 1 or 0"

    def parse(self, value: object) -> object:
        if type(value) is not bool:
            raise self.fail()
        return value

    def from_env(self, text: str) -> object:
        word = text.strip().lower()
        if word in _ENV_TRUE:
            return True
        if word in _ENV_FALSE:
            return False
        return text


class Choice(Spec):
    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.expected = "one of " + ", ".join(f'"{choice}"' for choice in choices)

    def parse(self, value: object) -> object:
        if value not in self.choices:
            raise self.fail()
        return value


class FilePath(Spec):
    expected = "a non-empty path string"

    def parse(self, value: object) -> object:
        if not isinstance(value, str) or not value or "\0" in value:
            raise self.fail()
        return Path(value)


POSTGRES_SCHEMES = ("postgresql", "postgres")


def redact_url(url: str) -> str:
    """A database URL fit for messages and `executor config`: the password replaced by ***
    (in the user part and in a `password=` query parameter)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<a database URL that cannot be parsed>"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = "&".join(
        "password=***" if item.partition("=")[0] == "password" else item
        for item in parts.query.split("&")
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


class DatabaseUrl(Spec):
    """[database] url: empty (the SQLite file at database.path) or a PostgreSQL URL."""

    expected = 'a PostgreSQL URL like "postgresql://user@host/dbname", or "" for SQLite'

    def parse(self, value: object) -> object:
        if not isinstance(value, str):
            raise self.fail()
        if value == "":
            return value
        # Shown without its password: an error message must not leak it into logs.
        shown = show(redact_url(value))
        if "\0" in value or any(c.isspace() for c in value):
            raise Invalid(self.expected, shown)
        try:
            parts = urllib.parse.urlsplit(value)
            _ = parts.port  # a port that is not a number raises ValueError
        except ValueError:
            raise Invalid(self.expected, shown) from None
        if parts.scheme not in POSTGRES_SCHEMES:
            raise Invalid(
                "a URL with the scheme postgresql:// or postgres:// (SQLite needs no URL:"
                " set database.path)",
                shown,
            )
        return value


class Modules(Spec):
    expected = "a list of dotted module names"
    env_expected = "a comma-separated list of dotted module names"
    item_expected = 'a dotted module name like "myapp.workflows"'

    def parse(self, value: object) -> object:
        if not isinstance(value, list):
            raise self.fail()
        for index, item in enumerate(value):
            if not isinstance(item, str) or not all(
                part.isidentifier() for part in item.split(".")
            ):
                raise Invalid(self.item_expected, show(item), f"[{index}]")
        return tuple(value)

    def from_env(self, text: str) -> object:
        # An empty variable means "no modules", which lets the environment clear a file's list.
        return [item.strip() for item in text.split(",")] if text.strip() else []


class Host(Spec):
    expected = 'a host name or address to listen on, like "127.0.0.1"'

    def parse(self, value: object) -> object:
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise self.fail()
        return value


class Levels(Spec):
    expected = 'a table of logger names and levels, like { httpx = "warning" }'
    env_expected = "comma-separated logger=level pairs, like httpx=warning,openai=error"

    def parse(self, value: object) -> object:
        if not isinstance(value, dict):
            raise self.fail()
        value = flatten(value)
        for name, level in value.items():
            if not name or not all(part for part in name.split(".")):
                raise Invalid("a dotted logger name", show(name), f".{toml_key(name)}")
            if level not in LEVEL_NAMES:
                choices = ", ".join(f'"{n}"' for n in LEVEL_NAMES)
                raise Invalid(f"one of {choices}", show(level), f".{toml_key(name)}")
        return LoggerLevels(sorted((name, str(level)) for name, level in value.items()))

    def from_env(self, text: str) -> object:
        pairs: dict[str, str] = {}
        for item in text.split(","):
            if not item.strip():
                continue
            name, sep, level = item.partition("=")
            if not sep:
                return text  # not a table: parse() refuses it with the expected form
            pairs[name.strip()] = level.strip()
        return pairs


LEVEL_NAMES = ("debug", "info", "warning", "error", "critical")


def flatten(table: dict[str, object], prefix: str = "") -> dict[str, object]:
    # In TOML an unquoted dotted key (openai.client = "debug") is a nested table: the logger
    # name is the path to the value.
    flat: dict[str, object] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def toml_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else toml_string(name)


def show(value: object) -> str:
    """An offending value as the user wrote it (TOML-like), on one short line."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        text = "[" + ", ".join(show(item) for item in value) + "]"
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = str(value)
    if len(text) > _MAX_SHOWN_CHARS:
        text = text[: _MAX_SHOWN_CHARS - 3] + "..."
    return text


def toml_value(value: object) -> str:
    """A config value as a TOML literal, so render_config's output loads back unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return toml_string(str(value))
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, LoggerLevels):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_string(v)}" for k, v in value) + "}"
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_string(text: str) -> str:
    # TOML forbids raw control characters (including DEL) in basic strings; JSON allows DEL.
    escaped = []
    for char in text:
        if char in ('"', "\\"):
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


# [limits.NAME] keys, and the short names people type for them.
MAX_RATE = 10**12
MAX_KEY_CAP = 100_000

LIMIT_SPECS: dict[str, Spec] = {
    "requests_per_second": Int(1, MAX_RATE),
    "requests_per_minute": Int(1, MAX_RATE),
    "tokens_per_second": Int(1, MAX_RATE),
    "tokens_per_minute": Int(1, MAX_RATE),
    "requests_per_hour": Int(1, MAX_RATE),
    "tokens_per_hour": Int(1, MAX_RATE),
    "concurrent": Int(1, MAX_KEY_CAP),
    "pace": Bool(),
    "backoff": Fraction(0, 1, low_open=True, high_open=True),
    "floor": Fraction(0, 1, low_open=True, high_open=False),
    "recovery_s": Seconds(),
    "tolerance": Fraction(0, 1, low_open=False, high_open=True),
}


LIMIT_ALIASES = {
    "rps": "requests_per_second",
    "rpm": "requests_per_minute",
    "rph": "requests_per_hour",
    "tph": "tokens_per_hour",
    "tps": "tokens_per_second",
    "tpm": "tokens_per_minute",
    "concurrency": "concurrent",
}
