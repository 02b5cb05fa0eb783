"""The client: start, watch and manage runs from any process that can open the database file.

It needs no running engine: runs started here are picked up by whichever engine works on the same
file. Every call is one short transaction, safe while engines run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from executor import (
    bulk,
    codec,
    config,
    errors,
    registry,
    runfilter,
    runinfo,
    validate,
    vocabulary,
)
from executor.runfilter import RunFilter
from executor.runinfo import RUN_STATUSES, ActionReport, RunPage, RunStatus
from executor.scheduling import ScheduleCalls
from executor.store import actions, database, engines, history, overview, queues, sharding, signals
from executor.store import repository as repo
from executor.store.conn import Conn
from executor.store.database import Store, open_database
from executor.store.reader import database_config

_RESULT_POLL_MIN_S = 0.01
_RESULT_POLL_MAX_S = 0.5


def _poll_delays() -> Iterator[float]:
    """The waits between polls of `result` and `get_event`: 10 ms, growing by half to 0.5 s."""
    delay = _RESULT_POLL_MIN_S
    while True:
        yield delay
        delay = min(_RESULT_POLL_MAX_S, delay * 1.5)


def _schema_version(conn: Conn) -> int:
    return int(conn.execute(conn.q["schema_version"]).fetchone()[0])


class Client(ScheduleCalls):
    """Start and manage runs in one database file.

    `database`: the file (a path or a DatabaseConfig), or a PostgreSQL URL
    ("postgresql://user@host/dbname"). Without it, the client reads the same
    configuration as the daemon (`config`, else $EXECUTOR_CONFIG, else the default file, then
    the drop-ins and EXECUTOR_* variables): the database, its shard count and the payload limit
    come from there, so code does not repeat the path. With `database` and `config`, the file is
    the one given and the rest comes from `config`.

    `registry`: when given, workflows are checked at start() (known name, number of arguments);
    with `strict=False`, names it does not know are let through for the engine to resolve.
    """

    def __init__(
        self,
        database: config.DatabaseConfig | str | Path | None = None,
        *,
        config_file: str | Path | None = None,
        reg: registry.Registry | None = None,
        strict: bool = False,
        payload_limit_bytes: int | None = None,
        shards: int | None = None,
        must_exist: bool | str = False,
    ) -> None:
        loaded = None
        if database is None or config_file is not None:
            loaded = config.load_config(None if config_file is None else Path(config_file)).config
        if database is None:
            assert loaded is not None
            database = loaded.database
            if shards is None:
                shards = loaded.engine.shards
        elif not isinstance(database, config.DatabaseConfig):
            if not isinstance(database, str | Path):
                raise errors.InvalidArgument(
                    f"database must be a path or a DatabaseConfig, got {type(database).__name__}"
                )
            database = database_config(database)
        if payload_limit_bytes is None:
            payload_limit_bytes = (
                codec.DEFAULT_LIMIT_BYTES if loaded is None else loaded.engine.payload_limit_bytes
            )
        self.db_cfg = database
        self.registry = reg if reg is not None else registry.default_registry
        self.strict = strict
        self.payload_limit_bytes = payload_limit_bytes
        self._shards = shards
        self.must_exist = must_exist
        self._next_shard = random.randrange(1 << 16)
        self._db: Store | None = None

    async def open(self) -> Client:
        """Open the database: created and migrated if needed, unless `must_exist` (a string
        there says where the path came from, for the error). A file this
        process can read but not write opens read-only: reads work, writes raise
        StoreWriteError naming why (read-only file system, permission denied, ...)."""
        if self._db is None:
            where = self.must_exist if isinstance(self.must_exist, str) else ""
            if self.must_exist and not self.db_cfg.url:
                database.require_file(self.db_cfg.path, f" ({where})" if where else "")
            self._db = await open_database(
                self.db_cfg,
                shards=self._shards,
                read_only_ok=True,
                # On a server only the open can tell whether executor's schema is there.
                must_exist=(where or "Client(must_exist=True)") if self.must_exist else None,
            )
        return self

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> Client:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def path(self) -> Path | str:
        """The database this client works on: the SQLite file, or the PostgreSQL URL without
        its password."""
        return self.db.path

    @property
    def shards(self) -> int:
        """The number of shards the database was created with."""
        return self.db.shards

    async def schema_version(self) -> int:
        """The schema version of the open file (after any migration this client ran)."""
        return await self.db.run(_schema_version)

    @property
    def db(self) -> Store:
        if self._db is None:
            raise errors.ExecutorError("the client is not open: use `async with Client(...)`")
        return self._db

    # -- starting runs --

    def _resolve(
        self, workflow: str | registry.WorkflowDef[Any]
    ) -> tuple[str, str | None, registry.WorkflowDef[Any] | None]:
        if isinstance(workflow, registry.WorkflowDef):
            return workflow.name, workflow.version, workflow
        if not isinstance(workflow, str) or not workflow:
            raise errors.RegistryError(
                f"workflow must be a name or a @workflow, got {validate.short(repr(workflow))}"
            )
        validate.text("workflow name", workflow)
        known = self.registry.workflows.get(workflow)
        if known is None and self.strict:
            self.registry.workflow(workflow)  # raises, listing the known names
        return workflow, (known.version if known else None), known

    def _new_run(
        self,
        name: str,
        version: str | None,
        wf: registry.WorkflowDef[Any] | None,
        args: Sequence[Any],
        key: str | None,
        shard_key: str | None,
        index: int | None = None,
        concurrency_key: str | None = None,
        labels: str | None = None,
    ) -> vocabulary.NewRun:
        if not isinstance(args, list | tuple):
            raise errors.PayloadError(
                f"arguments of {name}{'' if index is None else f' (run #{index})'} must be a"
                f" list or tuple, got {type(args).__name__}"
            )
        if wf is not None:
            wf.check_args(args)
        where = f"{name} arguments" + ("" if index is None else f" (run #{index})")
        blob = codec.encode(list(args), what=where, limit=self.payload_limit_bytes)
        if key is not None:
            validate.text("idempotency_key", key)
        if concurrency_key is not None:
            validate.text("concurrency_key", concurrency_key)
        if shard_key is not None:
            validate.text("shard_key", shard_key)
            run_id = sharding.time_ordered_uuid()
            shard = sharding.shard_of(shard_key, self.db.shards)
        else:
            # Runs without a shard key are dealt round-robin, so every shard's pool gets its
            # share: with random hashing some shards get 20% more runs than others, and those
            # runs finish late while other shards idle. The id still hashes to its shard.
            shard = self._next_shard % self.db.shards
            self._next_shard += 1
            run_id = sharding.run_id_for_shard(shard, self.db.shards)
        return vocabulary.NewRun(run_id, name, version, shard, blob, key, concurrency_key, labels)

    async def start(
        self,
        workflow: str | registry.WorkflowDef[Any],
        *args: Any,
        idempotency_key: str | None = None,
        shard_key: str | None = None,
        concurrency_key: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> str:
        """Start a run; return its id.

        The same idempotency_key with the same workflow and arguments returns the same run; with
        another workflow or other arguments it raises IdempotencyConflict. `concurrency_key` (a
        tenant, say) caps how many of the run's steps are in flight together with every other run
        of that key: engine.concurrency_key_cap, [concurrency_keys]. `labels` (a few short
        strings, {"batch": "2026-11-27"}) are shown by status and list, and select runs in
        every filter (RunFilter.labels).
        """
        name, version, wf = self._resolve(workflow)
        new = self._new_run(
            name,
            version,
            wf,
            args,
            idempotency_key,
            shard_key,
            concurrency_key=concurrency_key,
            labels=runfilter.check_labels(labels),
        )
        ids = await self.db.run(repo.create_runs, [new], time.time())
        return ids[0]

    async def start_many(
        self,
        workflow: str | registry.WorkflowDef[Any],
        args_list: Iterable[Sequence[Any]],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
        shard_keys: Sequence[str | None] | None = None,
        concurrency_keys: Sequence[str | None] | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[str]:
        """Start many runs of one workflow; return their ids in order. `labels` are given to
        every one of them.

        Every argument list is checked first: a bad one starts nothing. Up to 1,000 runs
        (bulk.START_CHUNK) start in one transaction, all or none. More start 1,000 per
        transaction, so that an engine working on the file gets the write lock between them
        instead of waiting for the whole call (a million runs would hold it for seconds, past
        database.busy_timeout_s): if a later transaction fails (an idempotency conflict, a
        full disk), the runs of the earlier ones, the first ones of `args_list`, stay started,
        and the error's notes say how many. While an engine of another process works on a
        SQLite file, the client pauses between transactions as long as each took."""
        name, version, wf = self._resolve(workflow)
        stored_labels = runfilter.check_labels(labels)
        try:
            items = list(args_list)
        except TypeError:
            raise errors.InvalidArgument(
                f"args_list must be an iterable of argument lists, got {type(args_list).__name__}"
            ) from None
        for label, keys in (
            ("idempotency_keys", idempotency_keys),
            ("shard_keys", shard_keys),
            ("concurrency_keys", concurrency_keys),
        ):
            if keys is not None and len(keys) != len(items):
                raise errors.InvalidArgument(
                    f"{label} has {len(keys)} entries for {len(items)} runs"
                )
        batch = []
        for i, args in enumerate(items):
            key = idempotency_keys[i] if idempotency_keys is not None else None
            skey = shard_keys[i] if shard_keys is not None else None
            ckey = concurrency_keys[i] if concurrency_keys is not None else None
            batch.append(
                self._new_run(
                    name,
                    version,
                    wf,
                    args,
                    key,
                    skey,
                    index=i,
                    concurrency_key=ckey,
                    labels=stored_labels,
                )
            )
        if not batch:
            return []
        if len(batch) <= bulk.START_CHUNK:
            return await self.db.run(repo.create_runs, batch, time.time())
        return await bulk.start(self.db, batch)

    # -- watching --

    async def status(self, run_id: str) -> RunStatus:
        row = await self.db.run(repo.get_run, validate.text("run id", run_id))
        if row is None:
            raise errors.RunNotFound(f"no run with id {run_id!r} in {self.db.path}")
        return runinfo.status_of(row, await self.db.run(history.current_step, row.rid))

    async def progress(self, where: RunFilter | None = None) -> overview.BatchProgress:
        """A batch's runs by status and the steps they finished: the runs `where` selects."""
        return await self.db.run(overview.batch_progress, where or RunFilter())

    async def history(self, run_id: str) -> history.RunHistory:
        """The run whole: every journal position (kind, name, status, attempts, last error,
        start, end, duration) and what the run waits on now."""
        found = await self.db.run(history.run_history, validate.text("run id", run_id), time.time())
        if found is None:
            raise errors.RunNotFound(f"no run with id {run_id!r} in {self.db.path}")
        return found

    async def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its result.

        Raises WorkflowFailed, RunCancelled, RunParked, or ResultTimeout after `timeout` seconds.
        """
        validate.text("run id", run_id)
        if timeout is not None:
            validate.seconds("timeout", timeout)

        deadline = None if timeout is None else time.monotonic() + timeout
        for delay in _poll_delays():
            row = await self.db.run(repo.get_run, run_id)
            if row is None:
                raise errors.RunNotFound(f"no run with id {run_id!r} in {self.db.path}")
            if row.status == vocabulary.RunState.SUCCEEDED:
                return self._result_value(row)
            if row.status == vocabulary.RunState.FAILED:
                raise errors.WorkflowFailed(run_id, codec.decode(row.error or b"{}"))
            if row.status == vocabulary.RunState.CANCELLED:
                raise errors.RunCancelled(f"run {run_id} was cancelled")
            if row.status == vocabulary.RunState.PARKED:
                err = codec.decode(row.error or b"{}")
                raise errors.RunParked(f"run {run_id} is parked: {err.get('message')}")
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.ResultTimeout(f"run {run_id} did not finish within {timeout}s")
            wait = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(wait)
        raise AssertionError("unreachable: _poll_delays never ends")

    def _result_value(self, row: vocabulary.RunRow) -> Any:
        # As the type the workflow declares, when this process has it registered; else its JSON.
        value = None if row.result is None else codec.decode(row.result)
        wf = self.registry.workflows.get(row.workflow)
        if wf is None or wf.types is None:
            return value
        return wf.types.decode_result(value, f"result of run {row.id} ({row.workflow})")

    async def list(self, status: str | None = None, limit: int = 100) -> list[RunStatus]:
        """Runs, newest first, optionally of one status."""
        if status is not None and status not in RUN_STATUSES:
            raise errors.InvalidArgument(
                f"unknown status {validate.short(repr(status))}; one of {', '.join(RUN_STATUSES)}"
            )
        validate.integer("limit", limit, 1)
        return [runinfo.status_of(r) for r in await self.db.run(repo.list_runs, status, limit)]

    async def stats(self) -> dict[str, Any]:
        """Per shard: queued, in flight, replay backlog, oldest queued age, timers; runs."""
        return await self.db.run(queues.stats, time.time())

    # -- changing runs --

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run; False if it had already finished. It stops at its next step."""
        if await self.db.run(repo.cancel_run, validate.text("run id", run_id), time.time()):
            return True
        await self.status(run_id)  # raises RunNotFound for an unknown id
        return False

    async def resume(self, run_id: str) -> bool:
        """Replay a parked run again (after deploying fixed code)."""
        return await self.db.run(repo.resume_run, validate.text("run id", run_id), time.time())

    async def fail(self, run_id: str, reason: str = "failed by an operator") -> bool:
        """Fail a parked run for good."""
        validate.text("run id", run_id)
        validate.text("reason", reason, max_bytes=None)
        return await self.db.run(repo.fail_parked_run, run_id, reason, time.time())

    # -- signals and published state --

    async def signal(
        self, run_id: str, topic: str, payload: Any = None, key: str | None = None
    ) -> bool:
        """Send `payload` to the run on `topic`; False if the run has finished (refused).

        The run's earliest `ctx.wait_for(topic)` gets it; sent before the run waits, it is kept
        until a wait takes it. A topic's messages are taken in the order they arrived. A `key`
        makes the send idempotent: a repeated send with the same key to the same run is a no-op
        (and returns True). Works with or without a running daemon.
        """
        validate.name("topic", topic)
        validate.text("run id", run_id)
        if key is not None:
            validate.text("key", key)
        blob = codec.encode(payload, what=f"signal {topic} payload", limit=self.payload_limit_bytes)
        sent = await self.db.run(signals.send_signal, run_id, topic, blob, key, time.time())
        if sent is None:
            raise errors.RunNotFound(f"no run with id {run_id!r} in {self.db.path}")
        return sent

    async def get_event(self, run_id: str, key: str, wait: float = 0.0, default: Any = None) -> Any:
        """The latest value the run published under `key` (`ctx.set_event`).

        If it has published none yet, wait up to `wait` seconds for one; then return `default`
        (also at once when the run has finished without publishing it).
        """
        validate.text("run id", run_id)
        validate.name("key", key)
        validate.seconds("wait", wait)
        deadline = time.monotonic() + wait
        for delay in _poll_delays():
            found = await self.db.run(signals.read_event, run_id, key)
            if found is None:
                raise errors.RunNotFound(f"no run with id {run_id!r} in {self.db.path}")
            status, value, _ = found
            if value is not None:
                return codec.decode(value)
            left = deadline - time.monotonic()
            if status in vocabulary.FINISHED or left <= 0:
                return default
            await asyncio.sleep(min(delay, left))
        raise AssertionError("unreachable: _poll_delays never ends")

    # -- repairing runs --

    async def retry(self, run_id: str, from_step: int | None = None) -> int:
        """Run a failed, cancelled or parked run again, in place (same id); return the journal
        position it restarts from.

        The journal before that position is kept and those steps do not run again; the rest
        is dropped, with the run's timers. The default position is the first one that did not
        succeed. A result of the old attempt that arrives late is dropped. Raises RunNotFound, or
        RunStateError for a running or succeeded run or a position past the journal.
        """
        validate.text("run id", run_id)
        validate.position(from_step, required=False)
        return await self.db.run(actions.retry_run, run_id, from_step, time.time())

    async def fork(
        self, run_id: str, from_step: int, *, labels: dict[str, str] | None = None
    ) -> str:
        """A new run of the same workflow and arguments whose journal is `run_id`'s up to
        position `from_step` (positions as `executor show` prints them, from 0); it runs today's
        code from there. The original is not changed, whatever its status. ctx.now(),
        ctx.random() and ctx.uuid() give the kept prefix the values they had. The fork gets the
        original's labels unless `labels` is given. Returns the new run's id."""
        validate.text("run id", run_id)
        validate.position(from_step, required=True)
        stored = runfilter.check_labels(labels)
        shard = self._next_shard % self.db.shards
        self._next_shard += 1
        new_id = sharding.run_id_for_shard(shard, self.db.shards)
        forked = await self.db.run(
            actions.fork_run,
            run_id,
            from_step,
            new_id,
            shard,
            stored,
            time.time(),
            labels is None,
        )
        return forked.id

    # -- runs by filter --

    async def count(self, where: RunFilter | None = None) -> int:
        """How many runs match."""
        return await self.db.run(actions.count_runs, where or RunFilter())

    async def runs(
        self, where: RunFilter | None = None, *, limit: int = 100, cursor: str | None = None
    ) -> RunPage:
        """Matching runs, newest first, `limit` at a time; pass the page's cursor for the next."""
        if limit < 1:
            raise errors.ExecutorError(f"limit must be at least 1, got {limit}")
        before = validate.cursor(cursor)
        rows = await self.db.run(actions.page_runs, where or RunFilter(), before, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return RunPage([runinfo.status_of(r) for r in rows], str(rows[-1].rid) if more else None)

    async def act(
        self,
        action: str,
        where: RunFilter,
        *,
        from_step: int | None = None,
        reason: str | None = None,
        batch_size: int = 500,
        spec: str | None = None,
        on_batch: Callable[[ActionReport], None] | None = None,
        max_rate: float | None = None,
    ) -> ActionReport:
        """Cancel, retry, resume, fail or purge every run that matches, in batches of
        `batch_size` runs, one short transaction each, so a running engine keeps committing.

        Runs started after the action began never match. An action cut short (a crash, a kill)
        is continued by the next call with the same action, filter and parameters (`spec`, what
        the operator typed: by default the filter itself), which acts on the remaining runs
        only: each run is acted on once. Each run's change is the single-run verb's (`retry`
        only changes failed, cancelled or parked runs, ...), children and parent included: a
        cancelled or failed child's parent sees ChildCancelled or ChildFailed, and its own
        children are cancelled with it. Runs no longer in a state for it are counted as skipped
        (a child cancelled with its parent earlier in the action, for one). `max_rate` (runs
        per second) paces it, so that the work a retry or resume hands a busy engine (a replay
        of each run) does not crowd out its other runs. `purge` deletes finished runs with their
        journal, and gives the space back to the file system as it goes (files made before
        version 4 of the schema only reuse it; see `executor vacuum`).
        """
        return await bulk.act(
            self.db,
            action,
            where,
            from_step=from_step,
            reason=reason,
            batch_size=batch_size,
            spec=spec,
            on_batch=on_batch,
            max_rate=max_rate,
        )

    async def forget_actions(self, before: float) -> int:
        """Delete the records of actions by filter that finished before `before` (UNIX s)."""
        return await self.db.run(actions.forget_actions, before)

    async def vacuum(self) -> tuple[int, int]:
        """Rewrite the file to its smallest size, in incremental auto-vacuum mode (so later purges
        give space back as they go); (bytes before, bytes after). Holds the write lock
        throughout: run it with the daemon stopped."""
        return await self.db.run(actions.vacuum_file)

    async def cancel_runs(self, where: RunFilter, **kw: Any) -> ActionReport:
        return await self.act(actions.CANCEL, where, **kw)

    async def retry_runs(
        self, where: RunFilter, from_step: int | None = None, **kw: Any
    ) -> ActionReport:
        return await self.act(actions.RETRY, where, from_step=from_step, **kw)

    async def resume_runs(self, where: RunFilter, **kw: Any) -> ActionReport:
        return await self.act(actions.RESUME, where, **kw)

    async def fail_runs(
        self, where: RunFilter, reason: str = "failed by an operator", **kw: Any
    ) -> ActionReport:
        return await self.act(actions.FAIL, where, reason=reason, **kw)

    async def purge_runs(self, where: RunFilter, **kw: Any) -> ActionReport:
        return await self.act(actions.PURGE, where, **kw)

    # -- operator functions: each one transaction --

    def _check_shard(self, shard: int) -> None:
        validate.integer("shard", shard, 0, self.db.shards - 1)

    async def bump_epoch(self) -> int:
        """Make every running engine stop claiming, drain and exit; return the new epoch."""
        return await self.db.run(engines.bump_epoch)

    async def fail_pending_tasks(self, shard: int) -> int:
        self._check_shard(shard)
        return await self.db.run(repo.fail_pending_tasks, shard, time.time())

    async def clear_task_queue(self, shard: int) -> int:
        self._check_shard(shard)
        return await self.db.run(repo.clear_task_queue, shard, time.time())

    async def clear_replay_queue(self, shard: int) -> int:
        self._check_shard(shard)
        return await self.db.run(repo.clear_replay_queue, shard, time.time())
