"""Typed payloads: dataclasses, NamedTuples, pydantic models, tuples, datetimes, UUIDs, Decimals,
bytes and enums round-trip to the type a step or workflow declares; unstorable types are refused
when the step is defined; an unstorable value gets one error naming its type and where it sits."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from typing import TYPE_CHECKING, Any, NamedTuple

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from executor import Client, Registry, codec, decoders, errors, register_codec, step, workflow

if TYPE_CHECKING:
    from tests.support.engine import EngineFactory


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Usage:
    input_tokens: int
    output_tokens: int


@dataclasses.dataclass
class Reply:
    text: str
    usage: Usage
    at: dt.datetime
    id: uuid.UUID
    cost: decimal.Decimal
    raw: bytes
    color: Color
    spans: tuple[int, int]
    tags: list[str] = dataclasses.field(default_factory=list)
    parent: Reply | None = None


class Point(NamedTuple):
    x: float
    y: float


class Message(pydantic.BaseModel):
    role: str
    content: str
    sent: dt.datetime


class Money:
    """A class of the user's own, stored through a registered codec."""

    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents

    def __hash__(self) -> int:
        return self.cents


register_codec(Money, encode=lambda m: m.cents, decode=Money)

NOW = dt.datetime(2026, 11, 27, 16, 0, 5, 123456, tzinfo=dt.UTC)
REPLY = Reply(
    text="hello",
    usage=Usage(12, 34),
    at=NOW,
    id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    cost=decimal.Decimal("0.000123"),
    raw=b"\x00\xffbytes",
    color=Color.BLUE,
    spans=(1, 5),
    tags=["a"],
    parent=Reply(
        "p", Usage(1, 2), NOW, uuid.UUID(int=1), decimal.Decimal(1), b"", Color.RED, (0, 0)
    ),
)


def round_trip(value: Any, tp: Any) -> Any:
    return decoders.convert(decoders.decoder(tp, "test"), codec.decode(codec.encode(value)), "t")


@pytest.mark.parametrize(
    ("value", "tp"),
    [
        (REPLY, Reply),
        (Point(1.5, 2.0), Point),
        (Message(role="user", content="hi", sent=NOW), Message),
        ((1, "a", None), tuple[int, str, None]),
        ((1, 2, 3), tuple[int, ...]),
        (NOW, dt.datetime),
        (dt.datetime(2026, 1, 1), dt.datetime),  # naive stays naive
        (NOW.date(), dt.date),
        (dt.time(12, 30), dt.time),
        (uuid.uuid4(), uuid.UUID),
        (decimal.Decimal("-1.10"), decimal.Decimal),
        (b"\x00\x01", bytes),
        (Color.RED, Color),
        (Money(250), Money),
        ([Money(1), Money(2)], list[Money]),
        ({"a": (1, 2)}, dict[str, tuple[int, int]]),
        (None, Reply | None),
        (REPLY, Reply | None),
        (Usage(1, 2), int | Usage),
        (3, int | Usage),
        ([Point(0, 1)], list[Point]),
    ],
    ids=lambda v: type(v).__name__,
)
def test_typed_values_round_trip_to_the_declared_type(value: Any, tp: Any) -> None:
    back = round_trip(value, tp)
    assert back == value
    assert type(back) is type(value)


@given(
    st.builds(Usage, st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)).flatmap(
        lambda u: st.tuples(
            st.just(u),
            st.datetimes(timezones=st.just(dt.UTC)),
            st.decimals(allow_nan=False, allow_infinity=False),
            st.binary(max_size=64),
            st.uuids(),
        )
    )
)
def test_any_tuple_of_typed_values_round_trips(
    value: tuple[Usage, dt.datetime, decimal.Decimal, bytes, uuid.UUID],
) -> None:
    back = round_trip(value, tuple[Usage, dt.datetime, decimal.Decimal, bytes, uuid.UUID])
    assert back == value
    assert [type(x) for x in back] == [type(x) for x in value]


def test_plain_json_encodes_exactly_as_before() -> None:
    # Old journals' argument fingerprints must still match: plain values are untouched.
    for value in (["a", 1, 2.5, None, True, {"k": [1, (2, 3)]}], "x", 0):
        import orjson

        assert codec.encode(value) == orjson.dumps(value)


def test_without_a_declared_type_the_json_form_comes_back() -> None:
    assert round_trip((1, 2), Any) == [1, 2]
    assert round_trip(Usage(1, 2), Any) == {"input_tokens": 1, "output_tokens": 2}
    assert round_trip(NOW, Any) == NOW.isoformat()


class Socket:
    pass


@dataclasses.dataclass
class Holder:
    sock: Socket


def test_a_step_whose_return_type_cannot_be_stored_is_refused_when_defined() -> None:
    reg = Registry()
    with pytest.raises(errors.RegistryError, match=r"step .*bad, return type: type Socket"):

        @step(registry=reg, name="bad")
        async def bad() -> Socket:
            return Socket()

    with pytest.raises(errors.RegistryError, match=r"parameter s: type Socket cannot be stored"):

        @step(registry=reg, name="bad_arg")
        async def bad_arg(s: Socket) -> None:
            return None

    with pytest.raises(errors.RegistryError, match=r"Holder: type Socket cannot be stored"):

        @workflow(registry=reg, name="bad_wf")
        async def bad_wf(ctx: Any) -> Holder:
            raise AssertionError

    with pytest.raises(errors.RegistryError, match=r"dict keys must be str, not int"):

        @step(registry=reg, name="bad_keys")
        async def bad_keys() -> dict[int, str]:
            return {}

    assert not reg.steps and not reg.workflows


@step(registry=Registry(), name="later")
async def later() -> DefinedLater:
    return DefinedLater(1)


@dataclasses.dataclass
class DefinedLater:
    n: int


def test_a_class_defined_after_its_step_is_resolved_at_first_use() -> None:
    assert later.types is not None and not later.types.resolved
    assert later.types.decode_result({"n": 1}, "result") == DefinedLater(1)


def test_an_unstorable_value_names_its_type_and_where_it_sits() -> None:
    @dataclasses.dataclass
    class Wrapper:
        items: list[Any]

    with pytest.raises(errors.PayloadError) as info:
        codec.encode({"a": Wrapper([1, Socket()])}, what="result of step s")
    assert str(info.value).startswith(
        "result of step s['a'].items[1]: value of type"
        " test_an_unstorable_value_names_its_type_and_where_it_sits.<locals>.Socket"
    ) or "value of type Socket cannot be stored" in str(info.value)
    assert "register_codec" in str(info.value)


def test_a_stored_value_that_no_longer_fits_names_where() -> None:
    dec = decoders.decoder(Usage, "step s, return type")
    with pytest.raises(errors.PayloadError, match=r"^result of step s: the stored value"):
        decoders.convert(dec, {"input_tokens": 1}, "result of step s")


# --- through a real engine -----------------------------------------------------------------------

REG = Registry()


@step(registry=REG, name="complete")
async def complete(prompt: Message, budget: decimal.Decimal) -> Reply:
    assert isinstance(prompt, Message) and isinstance(budget, decimal.Decimal)
    return dataclasses.replace(REPLY, text=prompt.content, cost=budget)


@step(registry=REG, name="corner")
def corner(p: Point) -> tuple[Point, dt.date]:
    assert isinstance(p, Point)
    return Point(p.x + 1, p.y + 1), NOW.date()


@workflow(registry=REG, name="typed")
async def typed(ctx: Any, msg: Message, when: dt.datetime, ids: list[uuid.UUID]) -> Reply:
    assert isinstance(msg, Message) and isinstance(when, dt.datetime)
    assert all(isinstance(i, uuid.UUID) for i in ids)
    reply = await complete(msg, decimal.Decimal("0.5"))
    assert isinstance(reply, Reply) and isinstance(reply.usage, Usage)
    point, day = await corner(Point(1, 2))
    assert point == Point(2, 3) and day == NOW.date()
    await ctx.sleep(0)  # a replay from the journal in between
    return dataclasses.replace(reply, spans=(int(point.x), int(point.y)))


@pytest.fixture
def database(database_url: str) -> str:
    """The test with a database runs on SQLite and on PostgreSQL."""
    return database_url


@pytest.mark.anyio
async def test_typed_values_round_trip_through_the_engine_and_client(
    engine_factory: EngineFactory, client: Client
) -> None:
    msg = Message(role="user", content="summarize", sent=NOW)
    async with engine_factory(REG, instance_cache_size=0):  # every result from the journal
        run = await client.start(typed, msg, NOW, [uuid.UUID(int=7)])
        async with Client(client.db_cfg, reg=REG) as typed_client:
            result = await typed_client.result(run, timeout=15)
    assert isinstance(result, Reply)
    assert result == dataclasses.replace(
        REPLY, text="summarize", cost=decimal.Decimal("0.5"), spans=(2, 3)
    )
