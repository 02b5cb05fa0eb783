"""Plots as inline SVG, drawn on the server: no JavaScript, no CDN, nothing fetched.

Series come from the engines' sample rows (store/samples.py): counters are differenced per engine
(each engine counts from its start) and bucketed; gauges take each engine's last value in a
bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

from executor.store.history import RunHistory
from executor.store.samples import Sample

WINDOW_S = 3600.0
LOOKBACK_S = WINDOW_S + 300.0  # samples read: the window, and each engine's sample before it
BUCKETS = 120  # 30 s each
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 560, 130, 48, 18, 8
COLORS = ("#2f6fdf", "#d9534f", "#3c9d5d", "#e0a030", "#8a5cd1", "#3aa6b9")

Series = list[float | None]


@dataclass
class Plots:
    """Every series of the overview, one value (or None: no sample) per bucket."""

    start: float
    width_s: float
    steps_per_s: Series
    runs_per_min: Series
    failures_per_min: Series
    queued: Series
    oldest_s: Series
    in_flight: Series
    slots: Series
    rate_limited_per_min: Series
    saturation: dict[str, Series] = field(default_factory=dict)


def plots(samples: Sequence[Sample], now: float) -> Plots:
    width = WINDOW_S / BUCKETS
    # Buckets on multiples of their width, so a reload does not shift every point.
    start = (now // width + 1) * width - WINDOW_S

    def bucket(at: float) -> int | None:
        i = int((at - start) // width)
        return i if 0 <= i < BUCKETS else None

    def empty() -> Series:
        return [None] * BUCKETS

    out = Plots(
        start, width, empty(), empty(), empty(), empty(), empty(), empty(), empty(), empty()
    )
    totals = {"steps": empty(), "runs": empty(), "fail": empty(), "429": empty()}
    last: dict[tuple[int, int], Sample] = {}  # (bucket, engine) -> its last sample there
    previous: dict[int, Sample] = {}
    for s in sorted(samples, key=lambda s: s.at):
        i = bucket(s.at)
        before = previous.get(s.engine_id)
        previous[s.engine_id] = s
        if i is None:
            continue
        last[(i, s.engine_id)] = s
        # An engine's first sample counts from 0, its start. The caller reads a little before
        # the window, so an engine that started earlier has its previous sample here.
        for key, now_v, then_v in (
            ("steps", s.steps, before.steps if before else 0),
            ("runs", s.runs_finished, before.runs_finished if before else 0),
            ("fail", s.step_failures, before.step_failures if before else 0),
            ("429", s.rate_limited, before.rate_limited if before else 0),
        ):
            totals[key][i] = (totals[key][i] or 0) + max(0, now_v - then_v)
    out.steps_per_s = [None if v is None else v / width for v in totals["steps"]]
    per_min = 60.0 / width
    out.runs_per_min = [None if v is None else v * per_min for v in totals["runs"]]
    out.failures_per_min = [None if v is None else v * per_min for v in totals["fail"]]
    out.rate_limited_per_min = [None if v is None else v * per_min for v in totals["429"]]
    for (i, _), s in last.items():
        # The queue is the file's (every engine sees the same): the highest; slots add up.
        out.queued[i] = max(out.queued[i] or 0, s.queued)
        if s.oldest_queued_s is not None:
            out.oldest_s[i] = max(out.oldest_s[i] or 0.0, s.oldest_queued_s)
        elif out.oldest_s[i] is None:
            out.oldest_s[i] = 0.0
        out.in_flight[i] = (out.in_flight[i] or 0) + s.in_flight
        out.slots[i] = (out.slots[i] or 0) + s.slots
        for name, limit in (s.limits or {}).items():
            series = out.saturation.setdefault(name, empty())
            series[i] = max(series[i] or 0.0, float(limit.get("saturation", 0.0)))
    return out


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2g}"


def chart(
    title: str, lines: dict[str, Series], unit: str = "", ymax: float | None = None
) -> Markup:
    """A line chart of one or more series over the last hour, as an <svg> element."""
    values = [v for series in lines.values() for v in series if v is not None]
    top = ymax if ymax is not None else max(values, default=0.0)
    top = top if top > 0 else 1.0
    inner_w = WIDTH - PAD_LEFT - 4
    inner_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP + inner_h}" x2="{WIDTH - 4}"'
        f' y2="{PAD_TOP + inner_h}" class="axis"/>',
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{WIDTH - 4}" y2="{PAD_TOP}" class="grid"/>',
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" class="ylabel">'
        f"{_fmt(top)}{escape(unit)}</text>",
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + inner_h}" class="ylabel">0</text>',
    ]
    for label, x in (("-60m", 0.0), ("-30m", 0.5), ("now", 1.0)):
        anchor = "start" if x == 0 else "end" if x == 1 else "middle"
        parts.append(
            f'<text x="{PAD_LEFT + x * inner_w:.1f}" y="{HEIGHT - 4}" class="xlabel"'
            f' text-anchor="{anchor}">{label}</text>'
        )
    step = inner_w / (BUCKETS - 1)
    for color, (name, series) in zip(COLORS * 4, lines.items(), strict=False):
        runs: list[list[str]] = [[]]
        for i, v in enumerate(series):
            if v is None:
                if runs[-1]:
                    runs.append([])
                continue
            y = PAD_TOP + inner_h - min(v, top) / top * inner_h
            runs[-1].append(f"{PAD_LEFT + i * step:.1f},{y:.1f}")
        for points in runs:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            elif points:
                parts.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="1.5"'
                    f' points="{" ".join(points)}"><title>{escape(name)}</title></polyline>'
                )
    # A legend when there is more than one line, at the top left (recent data is on the right).
    if len(lines) > 1:
        x = PAD_LEFT + 8.0
        for color, name in zip(COLORS * 4, lines, strict=False):
            parts.append(
                f'<text x="{x:.0f}" y="{PAD_TOP + 10}" class="legend" fill="{color}">'
                f"{escape(name)}</text>"
            )
            x += 7.0 * len(name) + 14
    parts.append("</svg>")
    return Markup("".join(parts))


def latest(series: Series) -> float | None:
    return next((v for v in reversed(series) if v is not None), None)


_STATE_CLASS = {
    "succeeded": "ok",
    "failed": "bad",
    "in_flight": "busy",
    "retry_wait": "warn",
    "quota_wait": "warn",
    "quota_parked": "warn",
    "sleeping": "idle",
    "queued": "idle",
    "scheduled": "idle",
}


def timeline(h: RunHistory, now: float) -> Markup:
    """The run's journal as a waterfall: a row per position, queued (light) then running."""
    end = h.finished_at if h.finished_at is not None else now
    span = max(end - h.created_at, 1e-3)
    row_h, label_w, width = 22, 190, 760
    inner = width - label_w - 10
    height = row_h * max(1, len(h.positions)) + 24

    def x(ts: float) -> float:
        return label_w + max(0.0, min(1.0, (ts - h.created_at) / span)) * inner

    parts = [
        f'<svg class="timeline" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg"'
        f' role="img" aria-label="journal timeline">',
        f'<text x="{label_w}" y="{height - 6}" class="xlabel">0s</text>',
        f'<text x="{width - 10}" y="{height - 6}" class="xlabel" text-anchor="end">'
        f"{_fmt(span)}s</text>",
    ]
    for row, p in enumerate(h.positions):
        y = row * row_h + 4
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" class="label" text-anchor="end">'
            f"{p.pos} {escape(p.name[-24:])}</text>"
        )
        began = p.started_at if p.started_at is not None else None
        finish = p.finished_at if p.finished_at is not None else now
        x0 = x(p.scheduled_at)
        if began is not None and began > p.scheduled_at:
            parts.append(
                f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(1.0, x(began) - x0):.1f}"'
                f' height="10" class="wait"><title>queued</title></rect>'
            )
            x0 = x(began)
        cls = _STATE_CLASS.get(p.state, "idle")
        parts.append(
            f'<rect x="{x0:.1f}" y="{y + 2}" width="{max(2.0, x(finish) - x0):.1f}" height="14"'
            f' class="{cls}"><title>{escape(p.kind)} {escape(p.name)}: {escape(p.state)},'
            f" {p.attempts} attempt(s)</title></rect>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
