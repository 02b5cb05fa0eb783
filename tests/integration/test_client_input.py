"""The Client refuses hostile arguments with InvalidArgument (an ExecutorError), never with a bare
Python exception (issue 9, item 6), and the file is left as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from executor import Client, errors

pytestmark = pytest.mark.anyio
SURROGATE = "\udcff"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.start("echo", 1, idempotency_key=SURROGATE), "idempotency_key is not valid"),
        (lambda c: c.start("echo", 1, shard_key=SURROGATE), "shard_key is not valid"),
        (lambda c: c.start("echo", 1, shard_key=7), "shard_key must be a string, got int"),
        (lambda c: c.start("echo", 1, concurrency_key=""), "concurrency_key must not be empty"),
        (lambda c: c.start("echo", 1, idempotency_key="k" * 2000), "the limit is 1024"),
        (lambda c: c.start(SURROGATE), "workflow name is not valid"),
        (lambda c: c.status(SURROGATE), "run id is not valid UTF-8"),
        (lambda c: c.status(42), "run id must be a string, got int"),
        (lambda c: c.result(SURROGATE, timeout=0), "run id is not valid UTF-8"),
        (lambda c: c.result("x", timeout=float("nan")), "timeout must be"),
        (lambda c: c.cancel(SURROGATE), "run id is not valid UTF-8"),
        (lambda c: c.resume(None), "run id must be a string"),
        (lambda c: c.fail("x", SURROGATE), "reason is not valid UTF-8"),
        (lambda c: c.list(limit=2**64), "limit must be from 1 to"),
        (lambda c: c.list(limit="10"), "limit must be an integer, got str"),
        (lambda c: c.list(limit=True), "limit must be an integer, got bool"),
        (lambda c: c.list("done"), "unknown status"),
        (lambda c: c.fail_pending_tasks(2**70), "shard must be from 0 to"),
        (lambda c: c.clear_task_queue("0"), "shard must be an integer"),
        (lambda c: c.start_many("echo", [[1], [2]], idempotency_keys=["a"]), "1 entries for 2"),
        (lambda c: c.start_many("echo", 5), "args_list must be an iterable"),
    ],
)
async def test_hostile_arguments_are_invalid_argument_errors(
    db_path: Path, call: Any, message: str
) -> None:
    async with Client(db_path) as client:
        with pytest.raises(errors.InvalidArgument, match=message) as raised:
            await call(client)
        assert isinstance(raised.value, errors.ExecutorError)
        assert (await client.stats())["runs"] == {}  # nothing was written


async def test_a_client_on_a_missing_file_with_must_exist_refuses_to_create_it(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing.sqlite"
    with pytest.raises(errors.StoreError, match="no database here"):
        async with Client(missing, must_exist=True):
            pass
    assert not missing.exists()
