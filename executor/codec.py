"""Payload encoding: the only place that touches orjson.

Arguments and results are stored as JSON. Plain JSON values (str, int, float, bool, None, lists,
tuples and str-keyed dicts of them) take a fast path and encode exactly as they always have, so
the argument fingerprints of old journals still match. Richer values are stored in their JSON
form: dataclasses and NamedTuples, pydantic models, datetimes, dates, times, UUIDs, Decimals,
bytes, enums, and any type given a codec with `register_codec`. Which Python type a stored value
comes back as is decided by the annotation the step or workflow declares (executor/decoders.py);
without one, the JSON form comes back. Anything else is refused up front with the path to the
offending value, so a bad payload never reaches the database.

Stored bytes carry their format in the first byte: JSON text never starts with a byte below
0x09, so those bytes mark other formats. 0x00 is a reference into the payload store
(store/payloads.py), which the store resolves before anything here sees the bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import functools
import hashlib
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from executor import errors

DEFAULT_LIMIT_BYTES = 64 * 1024 * 1024

# Immutable values that come back as the same type: a decoded one can be shared between replays
# and handed to the workflow without a decode. Exact types: a StrEnum member is a str, but it
# comes back as a plain str, so the first run must not see the member either.
_IMMUTABLE = frozenset({str, int, float, bool, type(None)})

# First bytes of stored payloads that are not JSON (see the module docstring).
FORMAT_REF = 0x00
_FIRST_JSON_BYTE = 0x09  # tab: the lowest byte a JSON text can start with


class Stats:
    """Counts decodes, so tests can check replay cost (one decode per result, not per replay)."""

    __slots__ = ("decodes",)

    def __init__(self) -> None:
        self.decodes = 0


stats = Stats()


@dataclass(frozen=True, slots=True)
class Codec:
    """How values of one type are stored: `encode` returns a JSON-able value, `decode` takes it
    back (it is given what `encode` returned, after a JSON round trip)."""

    type: type
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_codecs: dict[type, Codec] = {}


def register_codec(
    cls: type, *, encode: Callable[[Any], Any], decode: Callable[[Any], Any]
) -> None:
    """Store values of `cls` (and its subclasses) with `encode`, and give them back with `decode`
    wherever a step or workflow declares `cls` by annotation."""
    if not isinstance(cls, type):
        raise errors.RegistryError(f"register_codec: {cls!r} is not a class")
    if not callable(encode) or not callable(decode):
        raise errors.RegistryError(
            f"register_codec({cls.__name__}): encode and decode must be functions"
        )
    _codecs[cls] = Codec(cls, encode, decode)
    _codec_for.cache_clear()
    from executor import decoders  # a new codec changes what annotations decode to

    decoders.clear_cache()


def codec_for(cls: type) -> Codec | None:
    """The registered codec of `cls` or of its nearest registered base class."""
    return _codec_for(cls) if _codecs else None


@functools.lru_cache(maxsize=1024)
def _codec_for(cls: type) -> Codec | None:
    for base in cls.__mro__:
        found = _codecs.get(base)
        if found is not None:
            return found
    return None


def is_pydantic_model(value: Any) -> bool:
    """A pydantic (v2) model instance, without importing pydantic when nobody uses it."""
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(value, pydantic.BaseModel)


_MIN_INT = -(2**63)
_MAX_INT = 2**64
_MAX_DEPTH = 200
# orjson's output keeps a buffer of at least 4 KiB; small payloads are copied to their own size,
# since thousands of them can wait in memory at once (queued steps, unreplayed results).
_SHRINK_BELOW = 2048
# Datetimes and dataclasses reach _default, so a registered codec can take them over.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


class _Refused(TypeError):
    pass


def _default(value: Any) -> Any:
    """orjson's hook for what is not plain JSON: the JSON form of each supported type."""
    found = codec_for(type(value))
    if found is not None:
        return found.encode(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if is_pydantic_model(value):
        return value.model_dump(mode="json")
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, tuple):  # a NamedTuple
        return list(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise _Refused(type(value).__name__)


def _is_plain(value: Any, depth: int = 0) -> bool:
    """The fast check: exact JSON types only. False sends the value to the typed path."""
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
        for item in value:
            # Scalars checked here, without a call each: most arguments are flat lists of them.
            ti = type(item)
            if ti is str or ti is bool or item is None:
                continue
            if ti is int:
                if _MIN_INT <= item < _MAX_INT:
                    continue
                return False
            if not _is_plain(item, depth + 1):
                return False
        return True
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                return False
            tv = type(v)
            if tv is str or tv is bool or v is None:
                continue
            if not _is_plain(v, depth + 1):
                return False
        return True
    return False


_SUPPORTED = (
    "JSON types, dataclasses, NamedTuples, pydantic models, datetime, date, time, UUID, Decimal,"
    " bytes and enums"
)


_Bad = tuple[list[str], str]  # (the path to the part, innermost step first; why it is refused)


def _find_bad(value: Any, depth: int = 0) -> _Bad | None:
    """The first part of `value` that cannot be stored, or None.

    Run on every value the fast check (_is_plain) does not pass, before orjson sees it (orjson
    would write NaN and the infinities as null, and refuses the rest without saying where), and
    on a plain value orjson refused (a lone surrogate), to say where. One walk, kept cheap: the
    common types first, and the path is put together only for the part refused, on the way back
    up, not for every part on the way down.
    """
    if depth > _MAX_DEPTH:
        return [], f"nesting deeper than {_MAX_DEPTH} levels"
    t = type(value)
    if t is str:
        if value.isascii():
            return None
        try:
            value.encode()
        except UnicodeEncodeError:
            return [], "string is not valid UTF-8 (a lone surrogate)"
        return None
    if t is bool or value is None:
        return None
    if t is int or t is float:
        return _bad_number(value)
    if t is list or t is tuple:
        return _bad_item(value, depth)
    if t is dict:
        return _bad_entry(value, depth)
    if codec_for(t) is not None:
        return None
    if isinstance(value, enum.Enum):
        return _bad_part(value.value, ".value", depth)
    if isinstance(value, str):  # a subclass
        return _find_bad(str(value), depth)
    if isinstance(value, int | float):  # a subclass (an IntEnum is an Enum, above)
        return _bad_number(value)
    if isinstance(value, dt.datetime | dt.date | dt.time | uuid.UUID | decimal.Decimal):
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            found = _bad_part(getattr(value, f.name), f".{f.name}", depth)
            if found is not None:
                return found
        return None
    if is_pydantic_model(value):
        try:
            value.model_dump(mode="json")
        except Exception as exc:
            return [], f"pydantic model {t.__name__} cannot be dumped: {exc}"
        return None
    if isinstance(value, list | tuple):
        return _bad_item(value, depth)
    if isinstance(value, dict):
        return _bad_entry(value, depth)
    name = t.__qualname__
    return [], (
        f"value of type {name} cannot be stored (supported: {_SUPPORTED}; or register a codec"
        f" for {name} with executor.register_codec)"
    )


def _bad_number(value: int | float) -> _Bad | None:
    if isinstance(value, float):
        if value - value == 0.0:  # false for NaN and the infinities
            return None
        return [], f"float {value!r} is not valid JSON"
    if _MIN_INT <= value < _MAX_INT:
        return None
    return [], f"integer {value} out of the 64-bit range (use Decimal or str)"


def _bad_part(value: Any, step: str, depth: int) -> _Bad | None:
    found = _find_bad(value, depth + 1)
    if found is not None:
        found[0].append(step)
    return found


def _bad_item(items: list[Any] | tuple[Any, ...], depth: int) -> _Bad | None:
    for i, item in enumerate(items):
        found = _find_bad(item, depth + 1)
        if found is not None:
            found[0].append(f"[{i}]")
            return found
    return None


def _bad_entry(entries: dict[Any, Any], depth: int) -> _Bad | None:
    for k, v in entries.items():
        if not isinstance(k, str):
            return [f"[{k!r}]"], f"dict key of type {type(k).__name__} (keys must be str)"
        found = _find_bad(v, depth + 1)
        if found is not None:
            found[0].append(f"[{k!r}]")
            return found
    return None


def to_json(value: Any, *, what: str = "value") -> bytes:
    """`value` as JSON bytes, or PayloadError naming the part that cannot be stored."""
    if _is_plain(value):
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError as exc:  # a lone surrogate in a str
            raise _refusal(value, what) or errors.PayloadError(f"{what}: {exc}") from exc
    refused = _refusal(value, what)
    if refused is not None:
        raise refused
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        # A codec's encode returned something unstorable, or raised.
        raise errors.PayloadError(f"{what}: {exc}") from exc


def _refusal(value: Any, what: str) -> errors.PayloadError | None:
    found = _find_bad(value)
    if found is None:
        return None
    steps, why = found
    return errors.PayloadError(f"{what}{''.join(reversed(steps))}: {why}")


def encode(value: Any, *, what: str = "value", limit: int = DEFAULT_LIMIT_BYTES) -> bytes:
    """Serialize `value` to JSON bytes, or raise PayloadError naming the bad part of it."""
    if _is_plain(value):
        try:
            data = orjson.dumps(value)
        except orjson.JSONEncodeError:  # a lone surrogate in a str: to_json names it
            data = to_json(value, what=what)
    else:
        data = to_json(value, what=what)
    if len(data) > limit:
        raise errors.PayloadError(
            f"{what}: {len(data)} bytes is over the payload limit of {limit}"
            " (engine.payload_limit_bytes)"
        )
    if len(data) < _SHRINK_BELOW:
        data = bytes(memoryview(data))
    return data


def decode(data: bytes | str) -> Any:
    """Deserialize a payload written by encode(): its JSON form (see decoders.py for types)."""
    stats.decodes += 1
    if data and isinstance(data, bytes) and data[0] < _FIRST_JSON_BYTE:
        if data[0] == FORMAT_REF:
            raise errors.PayloadError("stored payload is a payload-store reference not resolved")
        raise errors.PayloadError(
            f"stored payload has format marker {data[0]:#04x}: written by a newer executor?"
        )
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise errors.PayloadError(f"stored payload is not valid JSON: {exc}") from exc


# hashlib lets go of the GIL for inputs of 2048 bytes or more. On the event loop's thread that
# costs far more than the hash: the database thread takes the GIL, and the loop may wait a whole
# switch interval (5 ms) to get it back. Hashed in smaller pieces (the same digest), it keeps it.
_HASH_PIECE = 2047


def blake2b_keeping_gil(data: bytes, digest_size: int) -> hashlib.blake2b:
    """blake2b of `data` fed in pieces below hashlib's GIL-release size (the same digest)."""
    if len(data) <= _HASH_PIECE:
        return hashlib.blake2b(data, digest_size=digest_size)
    h = hashlib.blake2b(digest_size=digest_size)
    view = memoryview(data)
    for i in range(0, len(data), _HASH_PIECE):
        h.update(view[i : i + _HASH_PIECE])
    return h


def fingerprint(data: bytes) -> str:
    """A short stable digest of encoded arguments, for checking replays against the journal."""
    return blake2b_keeping_gil(data, 8).hexdigest()


def is_immutable(value: Any) -> bool:
    """True when a value comes back from a decode as itself, and can be shared between replays."""
    return type(value) in _IMMUTABLE
