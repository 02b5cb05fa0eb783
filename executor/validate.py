"""What the Client accepts: keys, names, run ids, numbers and cursors, each checked once.

Every refusal is InvalidArgument (exit 2) naming the argument, so hostile input never reaches
SQLite as a driver error or an exit 70.
"""

from __future__ import annotations

from executor import errors

# Idempotency, shard and concurrency keys, run ids and workflow names: at most this many bytes of
# UTF-8, so a stray file's contents passed as a key is refused, not indexed.
MAX_KEY_BYTES = 1024
INT64_MAX = 2**63 - 1


def text(what: str, value: object, *, max_bytes: int | None = MAX_KEY_BYTES) -> str:
    """`value` if it is a non-empty str that encodes as UTF-8 within max_bytes, else
    InvalidArgument naming `what`: SQLite stores text as UTF-8, and an empty key is almost always
    an unset variable (every run would share it)."""
    if not isinstance(value, str):
        raise errors.InvalidArgument(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise errors.InvalidArgument(f"{what} must not be empty")
    try:
        size = len(value.encode())
    except UnicodeEncodeError as exc:
        raise errors.InvalidArgument(
            f"{what} is not valid UTF-8 text ({exc.reason} at character {exc.start}):"
            f" {short(value)}"
        ) from None
    if max_bytes is not None and size > max_bytes:
        raise errors.InvalidArgument(f"{what} is {size} bytes long; the limit is {max_bytes}")
    return value


def short(value: str) -> str:
    text = ascii(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(what: str, value: object, low: int, high: int = INT64_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise errors.InvalidArgument(f"{what} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        shown = value if abs(value) < 10**30 else f"an integer of {len(str(abs(value)))} digits"
        raise errors.InvalidArgument(f"{what} must be from {low} to {high}, got {shown}")
    return value


def seconds(what: str, value: object) -> float:
    """A number of seconds >= 0 (inf allowed: wait for ever), else InvalidArgument."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise errors.InvalidArgument(f"{what} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def name(what: str, value: object) -> None:
    text(what, value)


def position(pos: int | None, *, required: bool) -> None:
    if pos is None and not required:
        return
    if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos <= INT64_MAX:
        raise errors.InvalidArgument(
            f"from_step must be a journal position (an int >= 0), got {short(repr(pos))}"
        )


def cursor(given: str | None) -> int | None:
    """The run id a page of `runs` continues after (None: the first page)."""
    if given is None:
        return None
    try:
        value = int(given)
    except ValueError:
        value = 0
    if value < 1:
        raise errors.ExecutorError(f"not a cursor of `runs`: {given!r}")
    return value
