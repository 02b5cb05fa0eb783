"""codec.to_json names the part of a value it refuses: the path from the top (list items, dict
keys, dataclass fields, an enum's value) and why, wherever the part sits."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any

import pytest

from executor import codec, errors


class Colour(enum.Enum):
    BAD = float("inf")
    OK = 1


@dataclasses.dataclass
class Point:
    x: float
    tags: list[Any]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, {"a": [2, float("nan")]}], "v[1]['a'][1]: float nan is not valid JSON"),
        ((1, {3: "x"}), "v[1][3]: dict key of type int (keys must be str)"),
        ([Point(1.0, ["ok", dt.date(2026, 1, 1), {1, 2}])], "v[0].tags[2]: value of type set"),
        ({"p": Point(float("-inf"), [])}, "v['p'].x: float -inf is not valid JSON"),
        ([Colour.OK, Colour.BAD], "v[1].value: float inf is not valid JSON"),
        ([dt.datetime(2026, 1, 1), 2**64], "v[1]: integer 18446744073709551616 out of the 64"),
        ({"s": ["é", "\ud800"]}, "v['s'][1]: string is not valid UTF-8 (a lone surrogate)"),
        (nested(202), "v" + "[0]" * 201 + ": nesting deeper than 200 levels"),
    ],
)
def test_the_refused_part_is_named_with_its_path(value: Any, message: str) -> None:
    with pytest.raises(errors.PayloadError) as refused:
        codec.to_json(value, what="v")
    assert str(refused.value).startswith(message)


def test_what_is_not_refused_encodes() -> None:
    point = Point(1.5, [Colour.OK, dt.date(2026, 1, 2), "é", None])
    assert codec.to_json({"p": point}) == b'{"p":{"x":1.5,"tags":[1,"2026-01-02","\xc3\xa9",null]}}'
    assert codec.to_json(nested(200)) == b"[" * 200 + b"1" + b"]" * 200
