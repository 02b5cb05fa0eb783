"""Garbage-collector settings for a process that runs the engine (the daemon, the benchmark).

The engine keeps many long-lived objects (live workflow instances, caches). With CPython's
default thresholds (700, 10, 10) full collections come often, and each walks all of them: with
100,000 runs waiting they took about a third of the CPU of a noop benchmark (docs/PERFORMANCE.md,
issue 15). `tune` freezes what start-up allocated (imported modules, the registry, the
configuration: never garbage) and collects young objects less often. Closed workflow instances
are freed by reference counting (WorkflowInstance.close breaks their one cycle), so rarer
collections do not leave them waiting in memory.
"""

from __future__ import annotations

import gc

# Young objects per collection of generation 0 (default 700); generation 0 collections per
# generation 1 collection (default 10); generation 1 collections per full one (default 10).
THRESHOLDS = (50_000, 20, 10)


def tune() -> tuple[int, ...]:
    """Collect once, freeze what survived, and raise the thresholds (process-wide). Returns the
    thresholds it replaced, for `untune`."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return previous


def untune(previous: tuple[int, ...]) -> None:
    """Undo `tune` (for a process that goes on to do something else: a test run, say)."""
    gc.unfreeze()
    gc.set_threshold(*previous)
