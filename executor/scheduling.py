"""The Client's schedule calls: create, list, pause, resume, trigger and delete schedules.

A base of Client, kept apart so client.py stays readable; each call is one short transaction on
the schedules table (store/schedules.py), and the engine's timers loop fires the ticks.
"""

from __future__ import annotations

import builtins
import time
from typing import Any

from executor import codec, errors, registry, schedules, validate
from executor.runinfo import ScheduleInfo
from executor.store import schedules as stored_schedules
from executor.store.database import Store


class ScheduleCalls:
    """Schedules by name, for Client (which provides the database and workflow lookup)."""

    payload_limit_bytes: int

    @property
    def db(self) -> Store:
        raise NotImplementedError

    def _resolve(
        self, workflow: str | registry.WorkflowDef[Any]
    ) -> tuple[str, str | None, registry.WorkflowDef[Any] | None]:
        raise NotImplementedError

    async def schedule(
        self,
        name: str,
        workflow: str | registry.WorkflowDef[Any],
        cron: str,
        *args: Any,
        timezone: str = "UTC",
        catchup: str = "skip",
        overlap: str = "skip",
    ) -> ScheduleInfo:
        """Run `workflow(tick, *args)` on `cron` (create or replace the schedule `name`).

        The workflow's first argument is the tick's time (UNIX seconds). `catchup` (skip, once,
        all) decides which ticks missed while no engine ran are started; `overlap` (skip, allow,
        cancel) what a tick does while the previous run still runs (executor/schedules.py).
        Schedules from `[schedules.NAME]` in the config are reconciled by the daemon; those made
        here are left alone by reloads.
        """
        validate.text("schedule name", name)
        wf_name, _, wf = self._resolve(workflow)
        if wf is not None:
            wf.check_args((0.0, *args))
        codec.encode(list(args), what=f"schedule {name} arguments", limit=self.payload_limit_bytes)
        spec = schedules.ScheduleSpec(name, wf_name, cron, timezone, tuple(args), catchup, overlap)
        try:
            schedules.validate(spec, f"schedule {name!r}")
        except errors.ConfigError as exc:
            raise errors.InvalidArgument(exc.message) from None
        await self.db.run(stored_schedules.put, spec, time.time())
        return await self.get_schedule(name)

    async def get_schedule(self, name: str) -> ScheduleInfo:
        row = await self.db.run(stored_schedules.get, validate.text("schedule name", name))
        if row is None:
            raise errors.ScheduleNotFound(f"no schedule named {name!r} in {self.db.path}")
        return ScheduleInfo.of(row)

    async def schedules(self) -> builtins.list[ScheduleInfo]:
        """Every schedule, by name."""
        return [ScheduleInfo.of(r) for r in await self.db.run(stored_schedules.list_all)]

    async def unschedule(self, name: str) -> bool:
        """Delete a schedule (its runs go on); False if there was none. One from the config
        comes back at the daemon's next start or reload unless it is removed there too."""
        return await self.db.run(stored_schedules.delete, validate.text("schedule name", name))

    async def pause_schedule(self, name: str) -> bool:
        """Stop starting runs (until resumed); False if it was paused already."""
        return await self._pause(name, True)

    async def resume_schedule(self, name: str) -> bool:
        """Start runs again from the next tick (ticks missed while paused are skipped)."""
        return await self._pause(name, False)

    async def _pause(self, name: str, paused: bool) -> bool:
        validate.text("schedule name", name)
        done = await self.db.run(stored_schedules.set_paused, name, paused, time.time())
        if done is None:
            raise errors.ScheduleNotFound(f"no schedule named {name!r} in {self.db.path}")
        return done

    async def trigger_schedule(self, name: str) -> str:
        """Start a run of the schedule now (paused or not); return its id."""
        run_id = await self.db.run(
            stored_schedules.trigger, validate.text("schedule name", name), time.time()
        )
        if run_id is None:
            raise errors.ScheduleNotFound(f"no schedule named {name!r} in {self.db.path}")
        return run_id
