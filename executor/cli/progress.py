"""`executor watch`: a batch's progress, live, until none of its runs is running.

On a terminal, a rich progress bar (finished of total, succeeded, failed, parked, steps per
second, ETA); otherwise one JSON object per interval, for scripts and logs.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
)
from rich.text import Text

from executor.runinfo import BatchProgress

WINDOW_S = 30.0  # rates are averaged over this much recent history


@dataclass(frozen=True, slots=True)
class Rates:
    steps_per_s: float
    runs_per_s: float
    eta_s: float | None  # None: no runs finishing yet, or nothing left


class RateMeter:
    """Rates from the last WINDOW_S seconds of readings of a batch."""

    def __init__(self) -> None:
        self._history: collections.deque[tuple[float, int, int]] = collections.deque()

    def add(self, now: float, p: BatchProgress) -> Rates:
        self._history.append((now, p.finished, p.events))
        while len(self._history) > 2 and now - self._history[0][0] > WINDOW_S:
            self._history.popleft()
        t0, finished0, events0 = self._history[0]
        span = now - t0
        if span <= 0:
            return Rates(0.0, 0.0, None)
        runs_per_s = max(0, p.finished - finished0) / span
        steps_per_s = max(0, p.events - events0) / span
        left = p.running
        eta = left / runs_per_s if runs_per_s > 0 and left else None
        return Rates(steps_per_s, runs_per_s, eta)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _counts(p: BatchProgress) -> str:
    names = ("succeeded", "failed", "cancelled", "parked", "running")
    return "  ".join(f"{name} {p.runs.get(name, 0)}" for name in names)


def record(p: BatchProgress, r: Rates, now: float) -> dict[str, object]:
    return {
        "at": round(now, 3),
        "total": p.total,
        "finished": p.finished,
        "runs": p.runs,
        "steps_per_s": round(r.steps_per_s, 2),
        "runs_per_s": round(r.runs_per_s, 3),
        "eta_s": None if r.eta_s is None else round(r.eta_s, 1),
    }


async def watch(
    read: Callable[[], Awaitable[BatchProgress]],
    *,
    title: str,
    interval_s: float,
    terminal: bool,
    console: Console | None = None,
) -> BatchProgress:
    """Show the batch until none of its runs is running; return its last reading."""
    meter = RateMeter()
    if not terminal:
        while True:
            p = await read()
            now = time.time()
            print(json.dumps(record(p, meter.add(now, p), now)), flush=True)
            if p.running == 0:
                return p
            await asyncio.sleep(interval_s)
    console = console or Console()
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
        expand=True,
    )
    task = bar.add_task(title, total=None, eta="-")
    detail = Text()
    with Live(Group(bar, detail), console=console, refresh_per_second=4, transient=False) as live:
        while True:
            p = await read()
            rates = meter.add(time.time(), p)
            bar.update(task, total=p.total, completed=p.finished, eta=_eta(rates.eta_s))
            detail.plain = (
                f"{_counts(p)}   {rates.steps_per_s:.1f} steps/s  {rates.runs_per_s:.2f} runs/s"
            )
            live.refresh()
            if p.running == 0:
                return p
            await asyncio.sleep(interval_s)
