"""Times and durations as text, the same in the CLI and the dashboard: a UTC time (`when`), a
duration (`duration`) and a time relative to now (`relative`, `wait_span`). A leaf module."""

from __future__ import annotations

import datetime as dt


def when(ts: float | None) -> str:
    """UNIX seconds as `2026-11-27 14:00:05Z`; `-` for none."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def duration(seconds: float | None) -> str:
    """`350ms`, `12.50s`, `4.5m`, `3.2h`; `-` for none."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def relative(ts: float | None, now: float) -> str:
    """`in 4.5m` or `4.5m ago`; `-` for none."""
    if ts is None:
        return "-"
    delta = ts - now
    return f"in {duration(delta)}" if delta >= 0 else f"{duration(-delta)} ago"


def wait_span(until: float | None, since: float | None, now: float) -> str:
    """When a wait ends (`until <when> (in 4.5m)`) or, with no end, since when it has waited
    (`since <when> (4.5m ago)`); empty with neither."""
    if until is not None:
        return f"until {when(until)} ({relative(until, now)})"
    if since is not None:
        return f"since {when(since)} ({relative(since, now)})"
    return ""
