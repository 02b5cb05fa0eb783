"""The client: payload checks at start, argument round trips through a real engine, arity checks,
and list/status/result."""

from __future__ import annotations

import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor import Client, Engine, Registry, RetryPolicy, errors, step, workflow
from executor.registry import WorkflowDef

if TYPE_CHECKING:
    from tests.support.engine import DbFile, EngineFactory

pytestmark = pytest.mark.anyio


@pytest.fixture
def database(database_url: str) -> str:
    """Every test with a database runs on SQLite and on PostgreSQL."""
    return database_url


REG = Registry()


@step(registry=REG)
async def double(x: int) -> int:
    return 2 * x


@workflow(name="echo", registry=REG)
async def echo(ctx: Any, *args: Any) -> list[Any]:
    return list(args)


@workflow(name="pair", registry=REG)
async def pair(ctx: Any, a: int, b: int = 0) -> int:
    return await double(a) + b


@pytest.fixture
async def engine(engine_factory: EngineFactory) -> AsyncIterator[Engine]:
    async with engine_factory(REG) as eng:
        yield eng


async def test_a_set_is_refused_naming_its_type_and_where(client: Client, dbfile: DbFile) -> None:
    with pytest.raises(errors.PayloadError) as info:
        await client.start("flow", 1, {"x": {1, 2}})
    assert str(info.value).startswith(
        "flow arguments[1]['x']: value of type set cannot be stored (supported: JSON types,"
    )
    assert "register a codec for set with executor.register_codec" in str(info.value)
    with pytest.raises(errors.PayloadError, match=r"echo arguments\[0\]\[2\]: value of type obj"):
        await client.start(echo, [1, 2, object()])
    with pytest.raises(errors.PayloadError, match=r"\[0\]\[1\]: dict key of type int"):
        await client.start(echo, {"a": 1, 1: "b"})
    with pytest.raises(errors.PayloadError, match=r"float nan is not valid JSON"):
        await client.start(echo, float("nan"))
    with pytest.raises(errors.PayloadError, match="out of the 64-bit range"):
        await client.start(echo, 2**64)
    with pytest.raises(errors.PayloadError, match=r"not valid UTF-8|surrogate"):
        await client.start(echo, "\ud800")
    assert dbfile.value("SELECT count(*) FROM runs") == 0


async def test_start_many_names_the_run_at_fault(client: Client, dbfile: DbFile) -> None:
    with pytest.raises(errors.PayloadError) as info:
        await client.start_many(echo, [[1], [2], [3, object()]])
    assert str(info.value).startswith(
        "echo arguments (run #2)[1]: value of type object cannot be stored"
    )
    with pytest.raises(errors.PayloadError, match=r"arguments of echo \(run #1\) must be a list"):
        await client.start_many(echo, [[1], "abc"])
    assert dbfile.value("SELECT count(*) FROM runs") == 0  # one transaction: nothing started
    assert await client.start_many(echo, []) == []


async def test_payloads_over_the_limit_are_refused(database: str, dbfile: DbFile) -> None:
    async with Client(database, shards=2, payload_limit_bytes=100) as small:
        await small.start(echo, "x" * 90)
        with pytest.raises(errors.PayloadError) as info:
            await small.start(echo, "x" * 100)
        assert "echo arguments: 104 bytes is over the payload limit of 100" in str(info.value)
    assert dbfile.value("SELECT count(*) FROM runs") == 1


async def test_a_step_result_over_the_limit_fails_the_step(
    engine_factory: EngineFactory, client: Client
) -> None:
    reg = Registry()

    @step(registry=reg, name="big", retry=RetryPolicy(max_attempts=1))
    async def big() -> str:
        return "y" * 500

    @workflow(registry=reg, name="wants_big")
    async def wants_big(ctx: Any) -> str:
        try:
            return await big()
        except errors.StepFailed as exc:
            return f"{exc.error_type}: {exc.error['message']}"

    async with engine_factory(reg, payload_limit_bytes=200):
        run = await client.start(wants_big)
        outcome = await client.result(run, timeout=10)
    assert outcome.startswith("PayloadError: result of step big: 502 bytes is over")


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(string.printable, max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(args=st.lists(JSON, max_size=4))
async def test_json_arguments_round_trip_exactly(
    engine: Engine, client: Client, args: list[Any]
) -> None:
    run = await client.start(echo, *args)
    result = await client.result(run, timeout=10)
    assert result == args
    assert repr(result) == repr(args)  # same types too: 1 stays int, 1.0 stays float


async def test_arity_is_checked_at_start_for_a_known_workflow(
    database: str, dbfile: DbFile
) -> None:
    async with Client(database, reg=REG, shards=2) as checked:
        with pytest.raises(errors.RegistryError, match="takes 1 to 2 arguments after ctx, got 0"):
            await checked.start("pair")
        with pytest.raises(errors.RegistryError, match="takes 1 to 2 arguments after ctx, got 3"):
            await checked.start(pair, 1, 2, 3)
        with pytest.raises(errors.RegistryError, match=r"\(run #1\)|got 0"):
            await checked.start_many(pair, [[1], []])
        await checked.start("pair", 1)
        await checked.start(pair, 1, 2)
        await checked.start("not-registered-here", 1)  # not strict: the engine resolves it
        assert dbfile.value("SELECT count(*) FROM runs") == 3
    async with Client(database, reg=REG, strict=True) as strict:
        with pytest.raises(errors.RegistryError, match=r"unknown workflow 'nope'.*'echo'"):
            await strict.start("nope")
    with pytest.raises(errors.RegistryError):
        WorkflowDef(echo.fn, "bad", None, (1, 1)).check_args([])


async def test_list_status_and_result(engine_factory: EngineFactory, client: Client) -> None:
    first = await client.start(pair, 1, 10)
    second = await client.start(echo, "x")
    with pytest.raises(errors.ResultTimeout) as info:
        await client.result(first, timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    status = await client.status(first)
    assert (status.id, status.workflow, status.status, status.events) == (
        first,
        "pair",
        "running",
        0,
    )
    assert not status.finished and status.finished_at is None and status.error is None
    assert [s.id for s in await client.list()] == [second, first]  # newest first
    assert [s.id for s in await client.list(limit=1)] == [second]
    assert await client.list("succeeded") == []

    async with engine_factory(REG):
        assert await client.result(first, timeout=10) == 12
        assert await client.result(second, timeout=10) == ["x"]
    status = await client.status(first)
    assert status.finished and status.status == "succeeded" and status.events == 1
    assert status.finished_at is not None and status.finished_at >= status.created_at
    assert status.to_dict()["id"] == first
    assert {s.id for s in await client.list("succeeded")} == {first, second}
    assert await client.list("running") == []

    with pytest.raises(errors.RunNotFound):
        await client.status("no-such-run")
    with pytest.raises(errors.RunNotFound):
        await client.result("no-such-run", timeout=1)
    with pytest.raises(errors.ExecutorError, match="unknown status"):
        await client.list("done")
    with pytest.raises(errors.ExecutorError, match="limit must be from 1 to"):
        await client.list(limit=0)


async def test_a_closed_client_says_so(db_path: Path) -> None:
    unopened = Client(db_path)
    with pytest.raises(errors.ExecutorError, match="not open"):
        await unopened.start(echo)


async def test_idempotency_keys_return_the_same_run(client: Client, dbfile: DbFile) -> None:
    a = await client.start(echo, 1, idempotency_key="order-1")
    assert await client.start(echo, 1, idempotency_key="order-1") == a
    many = await client.start_many(
        echo, [[1], [2], [3], [2]], idempotency_keys=["order-1", "order-2", None, "order-2"]
    )
    assert many[0] == a
    assert many[1] == many[3] != a
    assert len(set(many)) == 3
    assert await client.start(echo, 2, idempotency_key="order-2") == many[1]
    assert dbfile.value("SELECT count(*) FROM runs") == 3
    # Each run has exactly one first replay entry, whatever the repeats.
    assert dbfile.query("SELECT count(*), count(DISTINCT run_rid) FROM replays") == [(3, 3)]
    with pytest.raises(errors.ExecutorError, match="idempotency_key must be a string"):
        await client.start(echo, idempotency_key=5)  # type: ignore[arg-type]
