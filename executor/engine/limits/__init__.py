"""Quotas for API-bound steps: request and token rates, concurrency, per-key caps.

    window.py    sliding-window logs, and the pace derived from long windows
    adaptive.py  how 429s slow a bucket down and how it recovers
    bucket.py    the budget of one limit for one key, and the groups tasks park in
    limiter.py   every limit of an engine: admit, wait or park; 429s; unparks; snapshots
    wake.py      waking the dispatcher when released tasks fall due

docs/LIMITS.md describes the behaviour; the engine uses `Limiter`, `Ticket` and `WakeTimer`.
"""

from __future__ import annotations

from executor.engine.limits.limiter import CostTooHigh, Decision, Limiter, Ticket, check_steps
from executor.engine.limits.wake import WakeTimer

__all__ = ["CostTooHigh", "Decision", "Limiter", "Ticket", "WakeTimer", "check_steps"]
