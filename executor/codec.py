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


def encode(value: Any, *, what: str = "value", limit: int = DEFAULT_LIMIT_BYTES) -> bytes:
    """Serialize `value` to JSON bytes, or raise PayloadError naming the bad part of it."""
    for path, problem in _find_bad(value, what):
        raise errors.PayloadError(f"{path}: {problem}")
    try:
        data = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:  # pragma: no cover - _find_bad is stricter
        raise errors.PayloadError(f"{what}: {exc}") from exc
    if len(data) > limit:
        raise errors.PayloadError(f"{what}: {len(data)} bytes is over the payload limit of {limit}")
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
