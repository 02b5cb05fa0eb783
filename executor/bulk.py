"""Actions on runs by filter: cancel, retry, resume, fail or purge in short, paced batches; and
starting many runs in batches.

Each batch is one transaction (store/actions.py), so a running engine keeps committing between
them; the action's cursor moves in the same transaction, so a cut action is continued, not redone.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from executor import config, errors, validate
from executor.runfilter import RunFilter
from executor.runinfo import ActionReport
from executor.store import actions, engines
from executor.store import repository as repo
from executor.store.database import Store
from executor.vocabulary import NewRun

# Runs per transaction of Client.start_many: SQLite holds the write lock about 5 ms per 1,000.
START_CHUNK = 1_000


async def act(
    db: Store,
    action: str,
    where: RunFilter,
    *,
    from_step: int | None,
    reason: str | None,
    batch_size: int,
    spec: str | None,
    on_batch: Callable[[ActionReport], None] | None,
    max_rate: float | None,
) -> ActionReport:
    """Client.act: see its docstring."""
    if action not in actions.ACTIONS:
        raise errors.ExecutorError(f"unknown action {action!r}; expected one of {actions.ACTIONS}")
    if batch_size < 1:
        raise errors.ExecutorError(f"batch_size must be at least 1, got {batch_size}")
    validate.position(from_step, required=False)
    params: dict[str, Any] = {}
    if from_step is not None:
        params["from_step"] = from_step
    if reason is not None:
        params["reason"] = reason
    if spec is None:
        spec = where.to_json()
    spec = actions.spec_of(spec, params)
    state = await db.run(actions.begin_action, action, spec, where, time.time())
    acted, skipped, cursor, done = state.acted, state.skipped, state.cursor, False
    began, paced = time.monotonic(), 0
    while not done:
        if max_rate is not None and max_rate > 0:
            ahead = began + paced / max_rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        batch = await db.run(
            actions.action_batch, state, action, params, cursor, batch_size, time.time()
        )
        acted += batch.acted
        skipped += batch.skipped
        paced += batch.acted + batch.skipped
        cursor, done = batch.cursor, batch.done
        if action == actions.PURGE and batch.acted:
            await db.run(actions.collect_payloads)
            # The space back in short writes, each a chance for the engine to commit.
            while await db.run(actions.vacuum_step) >= actions.VACUUM_STEP_PAGES:
                pass
        if on_batch is not None:
            on_batch(
                ActionReport(state.id, action, acted, skipped, state.resumed, done, state.filter)
            )
    return ActionReport(state.id, action, acted, skipped, state.resumed, True, state.filter)


async def start(db: Store, batch: list[NewRun]) -> list[str]:
    """Start the runs START_CHUNK per transaction, in order (Client.start_many); while an engine
    of another process works on a SQLite file, pause between transactions as long as each took:
    that engine waits in SQLite's busy handler, which does not queue (one of this process waits
    its turn in store/turnstile.py)."""
    pause = db.dialect == "sqlite" and await db.run(
        engines.live_elsewhere,
        os.getpid(),
        socket.gethostname(),
        time.time(),
        config.EngineConfig().lease_s,
    )
    ids: list[str] = []
    for first in range(0, len(batch), START_CHUNK):
        began = time.monotonic()
        try:
            ids += await db.run(repo.create_runs, batch[first : first + START_CHUNK], time.time())
        except errors.ExecutorError as exc:
            if ids:
                exc.add_note(
                    f"start_many: the first {len(ids)} of its {len(batch)} runs were started by"
                    f" earlier transactions ({ids[0]} to {ids[-1]})"
                )
            raise
        if pause and first + START_CHUNK < len(batch):
            await asyncio.sleep(time.monotonic() - began)
    return ids
