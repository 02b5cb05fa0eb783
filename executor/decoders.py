"""Decoders built from annotations: a stored JSON value back to the type a step or workflow
declares (its return type, or a parameter's type).

`decoder(tp, where)` returns a function from the JSON form to the declared type, or None when
the JSON form already is that type (str, int, Any, list[str], ...): the common case costs nothing.
A type that cannot be stored raises RegistryError naming it and where it is declared, which
registry.py turns into a refusal when the step or workflow is defined.
"""

from __future__ import annotations

import base64
import collections.abc
import dataclasses
import datetime as dt
import decimal
import enum
import functools
import sys
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

from executor import codec, errors

Decoder = Callable[[Any], Any]

_IDENTITY_TYPES: frozenset[Any] = frozenset(
    {Any, object, str, int, bool, type(None), None, dict, list}
)
_SEQUENCES = {
    list,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Iterable,
    collections.abc.Collection,
}
_MAPPINGS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}


def clear_cache() -> None:
    _cached.cache_clear()


def decoder(tp: Any, where: str) -> Decoder | None:
    """The decoder of values declared as `tp` (None: no conversion needed)."""
    try:
        return _cached(tp)
    except _Unsupported as exc:
        raise errors.RegistryError(f"{where}: {exc}") from None
    except TypeError:  # an unhashable annotation (rare): build without the cache
        try:
            return _build(tp)
        except _Unsupported as exc:
            raise errors.RegistryError(f"{where}: {exc}") from None


class _Unsupported(Exception):
    pass


class _Mismatch(Exception):
    """The stored value does not have the shape of the declared type (tried by unions)."""


@functools.lru_cache(maxsize=4096)
def _cached(tp: Any) -> Decoder | None:
    return _build(tp)


def _name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)


def _build(tp: Any) -> Decoder | None:
    if tp in _IDENTITY_TYPES or isinstance(tp, typing.TypeVar):
        return None
    if tp is float:
        return _to_float
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _build(args[0])
    if origin is typing.Literal:
        return None
    if origin is typing.Union or origin is types.UnionType:
        return _union(args)
    if origin is tuple:
        return _tuple(args)
    if origin in _SEQUENCES:
        item = _build(args[0]) if args else None
        if item is None:
            return None if origin is list else _as_list
        return lambda v: [item(x) for x in _expect(v, list)]
    if origin in _MAPPINGS:
        key, value = args if args else (str, Any)
        if key not in (str, Any) and not (isinstance(key, type) and issubclass(key, str)):
            raise _Unsupported(f"dict keys must be str, not {_name(key)}")
        inner = _build(value)
        if inner is None:
            return None
        return lambda v: {k: inner(x) for k, x in _expect(v, dict).items()}
    if origin is not None:
        raise _Unsupported(f"type {tp!r} cannot be stored")
    if isinstance(tp, typing.NewType):
        return _build(tp.__supertype__)
    if typing.is_typeddict(tp):
        return None
    if not isinstance(tp, type):
        raise _Unsupported(f"annotation {tp!r} is not a type that can be stored")
    return _for_class(tp)


def _for_class(cls: type) -> Decoder | None:
    found = codec.codec_for(cls)
    if found is not None:
        return found.decode
    if issubclass(cls, enum.Enum):
        return lambda v: v if isinstance(v, cls) else cls(v)
    if cls is tuple:
        return lambda v: tuple(_expect(v, list))
    if issubclass(cls, dt.date | dt.time):  # a datetime is a date
        return _parser(cls, cls.fromisoformat)
    if issubclass(cls, uuid.UUID | decimal.Decimal):
        return _parser(cls, cls)
    if cls is bytes or cls is bytearray:
        return _parser(cls, lambda s: cls(base64.b64decode(s, validate=True)))
    if issubclass(cls, str | int | bool):  # str and int subclasses other than enums
        return None
    if dataclasses.is_dataclass(cls):
        return _dataclass(cls)
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return _namedtuple(cls)
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and issubclass(cls, pydantic.BaseModel):
        model: Any = cls
        return lambda v: v if isinstance(v, model) else model.model_validate(v)
    raise _Unsupported(
        f"type {cls.__qualname__} cannot be stored: make it a dataclass or a pydantic model, or"
        f" register a codec for it with executor.register_codec({cls.__qualname__}, encode=...,"
        " decode=...)"
    )


def _expect(value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise _Mismatch(f"expected a JSON {'array' if kind is list else 'object'}, got {value!r}")
    return value


def _to_float(value: Any) -> Any:
    return float(value) if type(value) is int else value


def _as_list(value: Any) -> Any:
    return list(_expect(value, list))


def _parser(cls: type, parse: Callable[[str], Any]) -> Decoder:
    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise _Mismatch(f"expected a string for {cls.__name__}, got {value!r}")
        try:
            return parse(value)
        except (ValueError, TypeError, decimal.InvalidOperation) as exc:
            raise _Mismatch(f"{value!r} is not a {cls.__name__}: {exc}") from None

    return convert


def _union(members: tuple[Any, ...]) -> Decoder | None:
    nullable = type(None) in members
    rest = [m for m in members if m is not type(None)]
    built = [(m, _build(m)) for m in rest]
    if all(d is None for _, d in built):
        return None
    if len(built) == 1:
        only = built[0][1]
        assert only is not None
        return lambda v: None if v is None else only(v)

    def convert(value: Any) -> Any:
        if value is None and nullable:
            return None
        # In declared order, the first member whose shape fits. Plain members (str, int) take
        # a value of their own JSON type as it is.
        for member, dec in built:
            if dec is None:
                if _plain_fits(member, value):
                    return value
                continue
            try:
                return dec(value)
            except (_Mismatch, ValueError, TypeError):
                continue
        raise _Mismatch(f"{value!r} fits none of {', '.join(_name(m) for m in rest)}")

    return convert


def _plain_fits(member: Any, value: Any) -> bool:
    if member in (Any, object) or isinstance(member, typing.TypeVar):
        return True
    origin = typing.get_origin(member) or member
    if origin is typing.Literal:
        return value in typing.get_args(member)
    if isinstance(origin, type):
        if origin is int and type(value) is bool:
            return False
        return isinstance(value, origin)
    return True


def _tuple(args: tuple[Any, ...]) -> Decoder:
    if not args or args == ((),):
        return lambda v: tuple(_expect(v, list))
    if len(args) == 2 and args[1] is Ellipsis:
        inner = _build(args[0])
        if inner is None:
            return lambda v: tuple(_expect(v, list))
        return lambda v: tuple(inner(x) for x in _expect(v, list))
    items = [_build(a) for a in args]

    def convert(value: Any) -> Any:
        _expect(value, list)
        if len(value) != len(items):
            raise _Mismatch(f"expected {len(items)} items, got {len(value)}")
        return tuple(x if d is None else d(x) for d, x in zip(items, value, strict=True))

    return convert


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except NameError as exc:
        raise _Unsupported(f"cannot resolve the annotations of {cls.__qualname__}: {exc}") from None


_building: set[type] = set()  # classes whose decoder is being built: a reference is recursion


def _dataclass(cls: type) -> Decoder:
    if cls in _building:
        return lambda v: _built(cls)(v)
    _building.add(cls)
    try:
        hints = _hints(cls)
        fields = [f.name for f in dataclasses.fields(cls) if f.init]
        decs = [(name, _field(hints.get(name, Any), cls)) for name in fields]
    finally:
        _building.discard(cls)

    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        _expect(value, dict)
        kwargs = {}
        for name, dec in decs:
            if name in value:
                kwargs[name] = value[name] if dec is None else dec(value[name])
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise _Mismatch(f"cannot make {cls.__qualname__} from {value!r}: {exc}") from None

    return convert


def _built(cls: type) -> Decoder:
    dec = _cached(cls)
    assert dec is not None
    return dec


def _field(tp: Any, owner: type) -> Decoder | None:
    try:
        return _build(tp)
    except _Unsupported as exc:
        raise _Unsupported(f"{owner.__qualname__}: {exc}") from None


def _namedtuple(cls: type) -> Decoder:
    if cls in _building:
        return lambda v: _built(cls)(v)
    _building.add(cls)
    try:
        hints = _hints(cls)
        fields = cls._fields  # type: ignore[attr-defined]
        decs = [_field(hints.get(name, Any), cls) for name in fields]
    finally:
        _building.discard(cls)

    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value
        _expect(value, list)
        return cls(*(x if d is None else d(x) for d, x in zip(decs, value, strict=False)))

    return convert


def convert(dec: Decoder | None, value: Any, where: str) -> Any:
    """Apply a decoder, turning a mismatch into one PayloadError naming where the value was."""
    if dec is None:
        return value
    try:
        return dec(value)
    except (_Mismatch, ValueError, TypeError) as exc:
        raise errors.PayloadError(
            f"{where}: the stored value does not fit its declared type: {exc}"
        ) from None
