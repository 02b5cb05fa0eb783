"""The private event loop a workflow instance runs on: FIFO callbacks run by hand, no clock, no I/O.

Only the engine drives it (`run_until_quiet`, after each delivered result), so the workflow code
sees the same sequence of wake-ups on its first run and on every replay. Timers and I/O raise
WorkflowUsageError: they cannot be replayed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from executor import errors

log = logging.getLogger("executor.workflow")

# One activation (the code run for one event) taking longer than this blocked the engine's event
# loop for that long: it is logged as a warning naming the workflow and the run.
SLOW_ACTIVATION_S = 1.0


class _Activations(threading.local):
    """This thread's batch of activations (`activations()`): how deep in batches it is, the
    loop found running before the batch's first activation (to give back at its end), and the
    instance loop set as the running one since (None: no activation yet)."""

    depth = 0
    outer: asyncio.AbstractEventLoop | None = None
    current: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if not self.depth and self.current is not None:
            asyncio.events._set_running_loop(self.outer)
            self.outer = self.current = None


_batch = _Activations()


def activations() -> _Activations:
    """A batch of activations (deliveries, builds) in a row, for code that neither awaits nor
    uses the running loop between them: `with activations(): ...`. Each sets its own loop as
    the running one and leaves it set; the loop found before the first is given back once, at
    the batch's end (also when it raises). In CPython 3.11 getting and setting the running
    loop each call getpid() (a system call): three per activation otherwise, one here (none
    for the same instance again), plus two per batch."""
    return _batch


class _Soon(list[Any]):
    """A callback queued by call_soon: [callback, args, context]. Lighter than asyncio.Handle
    (its __init__ and _run are Python code, run for every result a workflow is given); `cancel`
    is all a caller can do with it."""

    __slots__ = ()

    def cancel(self) -> None:
        self[0] = None

    def cancelled(self) -> bool:
        return self[0] is None


class InstanceLoop(asyncio.AbstractEventLoop):
    """Just enough of an event loop for Futures and Tasks, run by hand."""

    def __init__(self, workflow: str, run_id: str = "") -> None:
        # A list, swapped out whole on each pass: same FIFO order as a deque, and an empty list
        # costs 56 bytes where a deque allocates a 500-byte block (tens of thousands of these
        # live at once).
        self._ready: list[_Soon] = []
        self._workflow = workflow
        self._run_id = run_id
        self._closed = False
        self.now_s = 0.0

    # -- what Futures and Tasks need --
    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        if context is None:  # as asyncio.Handle does (Futures and Tasks always pass theirs)
            context = contextvars.copy_context()
        handle = _Soon((callback, args, context))
        self._ready.append(handle)
        return handle  # type: ignore[return-value]

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(
        self, coro: Any, *, name: str | None = None, context: contextvars.Context | None = None
    ) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=self, name=name, context=context)

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return self._closed

    def time(self) -> float:
        return self.now_s

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if self._closed:
            return
        exc = context.get("exception")
        log.error("workflow %s: %s", self._workflow, context.get("message"), exc_info=exc)

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    # -- what must not be used from workflow code --
    def _not_durable(self, *args: Any, **kwargs: Any) -> Any:
        raise errors.WorkflowUsageError(
            f"workflow {self._workflow}: asyncio timers (asyncio.sleep, wait_for with a"
            " timeout, ...) and I/O cannot be replayed; use ctx.sleep() and do I/O in steps"
        )

    call_later = _not_durable  # type: ignore[assignment]
    call_at = _not_durable  # type: ignore[assignment]
    call_soon_threadsafe = _not_durable  # type: ignore[assignment]
    run_in_executor = _not_durable  # type: ignore[assignment]
    create_connection = create_server = getaddrinfo = _not_durable

    def run_until_quiet(self) -> None:
        batch = _batch
        if batch.depth:  # inside activations(): left set, given back at the batch's end
            outer = None
            if batch.current is not self:
                if batch.current is None:
                    batch.outer = asyncio.events._get_running_loop()
                asyncio.events._set_running_loop(self)
                batch.current = self
        else:
            outer = asyncio.events._get_running_loop()
            asyncio.events._set_running_loop(self)
        started = time.monotonic()
        try:
            while self._ready:
                ready, self._ready = self._ready, []
                for soon in ready:
                    callback, args, context = soon
                    if callback is None:
                        continue  # cancelled
                    try:
                        context.run(callback, *args)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        self.call_exception_handler(
                            {"message": f"Exception in callback {callback!r}", "exception": exc}
                        )
        finally:
            if not batch.depth:
                asyncio.events._set_running_loop(outer)
            took_s = time.monotonic() - started
            if took_s > SLOW_ACTIVATION_S:
                log.warning(
                    "workflow %s (run %s) blocked the event loop for %.2fs in one activation;"
                    " workflow code must not block: do slow or blocking work in a step",
                    self._workflow,
                    self._run_id,
                    took_s,
                )

    def close(self) -> None:
        self._closed = True
        self._ready.clear()
