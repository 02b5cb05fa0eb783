"""Payload encoding: the only place that touches orjson.

Arguments and results are JSON. Anything else is refused up front with the path to the offending
value, so a bad payload never reaches the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import orjson

from executor import errors

DEFAULT_LIMIT_BYTES = 1024 * 1024

# orjson serializes these natively, but they do not come back as the same type, so a step result
# would differ between its first run and a replay. Refuse them.
_JSON_SCALARS = (str, int, float, bool, type(None))


class Stats:
    """Counts decodes, so tests can check replay cost (one decode per result, not per replay)."""

    __slots__ = ("decodes",)

    def __init__(self) -> None:
        self.decodes = 0


stats = Stats()


def _find_bad(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    if depth > 200:
        yield path, "nesting deeper than 200 levels"
        return
    if isinstance(value, bool | type(None) | str):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            yield path, f"integer {value} out of the 64-bit range"
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            yield path, f"float {value!r} is not valid JSON"
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _find_bad(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                yield f"{path}[{k!r}]", f"dict key of type {type(k).__name__} (keys must be str)"
                continue
            yield from _find_bad(v, f"{path}[{k!r}]", depth + 1)
        return
    yield path, f"value of type {type(value).__name__} is not JSON"


_MIN_INT = -(2**63)
_MAX_INT = 2**64
_MAX_DEPTH = 200
# orjson's output keeps a buffer of at least 4 KiB; small payloads are copied to their own size,
# since thousands of them can wait in memory at once (queued steps, unreplayed results).
_SHRINK_BELOW = 2048


def _is_plain(value: Any, depth: int = 0) -> bool:
    """The fast check: exact JSON types only. False sends the value to _find_bad, which is slower
    but names what is wrong (or accepts subclasses such as an IntEnum)."""
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return bool(_MIN_INT <= value < _MAX_INT)
    if t is float:
        return bool(value - value == 0.0)  # false for NaN and the infinities
    if depth >= _MAX_DEPTH:
        return False
    if t is list or t is tuple:
        for item in value:  # noqa: SIM110 - a plain loop, not all() over a generator: hot path
            if not _is_plain(item, depth + 1):
                return False
        return True
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or not _is_plain(v, depth + 1):
                return False
        return True
    return False


def encode(value: Any, *, what: str = "value", limit: int = DEFAULT_LIMIT_BYTES) -> bytes:
    """Serialize `value` to JSON bytes, or raise PayloadError naming the bad part of it."""
    if not _is_plain(value):
        for path, problem in _find_bad(value, what):
            raise errors.PayloadError(f"{path}: {problem}")
    try:
        data = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:  # pragma: no cover - _find_bad is stricter
        raise errors.PayloadError(f"{what}: {exc}") from exc
    if len(data) > limit:
        raise errors.PayloadError(f"{what}: {len(data)} bytes is over the payload limit of {limit}")
    if len(data) < _SHRINK_BELOW:
        data = bytes(memoryview(data))
    return data


def decode(data: bytes | str) -> Any:
    """Deserialize JSON bytes written by encode()."""
    stats.decodes += 1
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise errors.PayloadError(f"stored payload is not valid JSON: {exc}") from exc


def fingerprint(data: bytes) -> str:
    """A short stable digest of encoded arguments, for checking replays against the journal."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def is_immutable(value: Any) -> bool:
    """True when a decoded value can be shared between replays without copying."""
    return isinstance(value, _JSON_SCALARS)
