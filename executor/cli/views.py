"""Plain-text views for a terminal: one run's history (`show`), the limits of `executor stats`.

JSON output needs none of this: the verbs print the records' to_dict() as they are.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from executor.cli.common import table
from executor.runinfo import RunHistory, Waiting, error_line
from executor.timetext import duration, wait_span, when

_ERROR_WIDTH = 60


def clock(ts: float | None) -> str:
    """Time of day with milliseconds (UTC): steps of one run are seconds apart."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def _cut(text: str | None, width: int = _ERROR_WIDTH) -> str | None:
    if text is None or len(text) <= width:
        return text
    return text[: width - 3] + "..."


def waiting_line(w: Waiting, now: float) -> str:
    span = wait_span(w.until, w.since, now)
    return f"{w.detail}, {span}" if span else w.detail


def history_text(h: RunHistory, now: float) -> str:
    head = [
        ("run", h.id),
        ("workflow", h.workflow + (f" (version {h.version})" if h.version else "")),
        ("status", h.status),
        ("shard", f"{h.shard}, owned by {h.owner or 'no engine now'}"),
        ("created", when(h.created_at)),
        ("finished", when(h.finished_at)),
        ("events", str(h.events)),
    ]
    if h.error is not None:
        head.append(("error", error_line(h.error) or "-"))
    lines = [f"{key + ':':<10} {value}" for key, value in head]
    lines.append("")
    rows = [
        (
            p.pos,
            p.kind,
            p.name,
            p.state,
            p.attempts,
            clock(p.started_at if p.started_at is not None else p.scheduled_at),
            clock(p.finished_at),
            duration(p.duration_s),
            _cut(error_line(p.error)),
        )
        for p in h.positions
    ]
    if rows:
        headers = ("POS", "KIND", "NAME", "STATUS", "ATTEMPTS", "STARTED", "FINISHED", "TOOK")
        lines.append(table((*headers, "LAST ERROR"), rows))
    else:
        lines.append("(no journal positions yet)")
    lines.append("")
    lines.append("waiting on:")
    lines += [f"  {waiting_line(w, now)}" for w in h.waiting]
    return "\n".join(lines)


def _rate(entry: dict[str, Any]) -> str:
    rates = entry.get("rates") or {}
    parts = []
    for name, rate in sorted(rates.items()):
        short = name.replace("requests_per_", "req/").replace("tokens_per_", "tok/")
        short = short.replace("second", "s").replace("minute", "min")
        configured, effective = rate.get("configured"), rate.get("effective")
        shown = f"{effective:g}" if effective == configured else f"{effective:g} of {configured}"
        parts.append(f"{shown} {short}")
    concurrent = entry.get("concurrent")
    if concurrent:
        parts.append(f"{concurrent.get('effective')} of {concurrent.get('configured')} at once")
    return ", ".join(parts) or "-"


def limits_text(snapshots: Sequence[dict[str, Any]]) -> str:
    """Each engine's limits as a table: rates (effective of configured), use, waits, 429s."""
    out: list[str] = []
    for snap in snapshots:
        limits = snap.get("limits") or []
        rows = [
            (
                entry.get("limit"),
                entry.get("key") or "",
                "idle" if entry.get("idle") else _rate(entry),
                entry.get("in_flight"),
                entry.get("waiting"),
                entry.get("parked"),
                entry.get("rate_limited"),
                entry.get("admitted"),
            )
            for entry in limits
        ]
        out.append(f"limits of engine {snap.get('engine')}:")
        if rows:
            headers = ("LIMIT", "KEY", "RATE", "IN_FLIGHT", "WAITING", "PARKED", "429S")
            out.append(table((*headers, "ADMITTED"), rows))
        keys = snap.get("concurrency_keys") or []
        if keys:
            out.append("")
            out.append(
                table(
                    ("CONCURRENCY_KEY", "CAP", "IN_FLIGHT", "PARKED"),
                    [
                        (k.get("key"), k.get("cap"), k.get("in_flight"), k.get("parked"))
                        for k in keys
                    ],
                )
            )
        if not rows and not keys:
            out.append("  (none in use)")
    return "\n".join(out)
