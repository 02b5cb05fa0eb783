"""The overview's series from sample rows: counters differenced per engine (a restarted engine
counts from 0), gauges from each engine's last sample in a bucket, gaps where nothing was
sampled; and the SVG drawn from them."""

from __future__ import annotations

from executor.store.samples import Sample
from executor.web import charts

NOW = 1_800_000_000.0


def sample(engine: int, ago: float, steps: int, **kw: object) -> Sample:
    fields = {"in_flight": 2, "slots": 10, "queued": 5, "oldest_queued_s": 1.5}
    fields.update(kw)
    return Sample(
        engine,
        NOW - ago,
        steps,
        step_failures=0,
        runs_finished=steps // 2,
        in_flight=int(fields["in_flight"]),  # type: ignore[call-overload]
        slots=int(fields["slots"]),  # type: ignore[call-overload]
        rate_limited=0,
        limits={"llm": {"saturation": 0.5, "rate_limited": 0}},
        queued=int(fields["queued"]),  # type: ignore[call-overload]
        oldest_queued_s=fields["oldest_queued_s"],  # type: ignore[arg-type]
    )


def test_rates_per_engine_and_gaps() -> None:
    width = charts.WINDOW_S / charts.BUCKETS
    rows = [
        sample(1, 4000, 1000),  # before the window: only a baseline for engine 1
        sample(1, 110, 1600),
        sample(1, 95, 1900),
        sample(2, 99, 300),  # engine 2 started inside the window: it counts from 0
    ]
    p = charts.plots(rows, NOW)
    got = [v for v in p.steps_per_s if v is not None]
    assert sum(v * width for v in got) == (1900 - 1000) + 300
    assert p.steps_per_s[0] is None  # nothing sampled an hour ago: a gap, not a zero
    last = max(i for i, v in enumerate(p.slots) if v is not None)
    assert p.slots[last] == 20 and p.in_flight[last] == 4  # slots add up over engines
    assert p.queued[last] == 5  # the queue is the file's: not added up
    assert p.saturation["llm"][last] == 0.5


def test_chart_is_svg_with_a_line_and_escaped_title() -> None:
    svg = charts.chart("<q>", {"a": [None, 1.0, 2.0, None, 3.0], "b": [0.0] * 5})
    assert svg.startswith("<svg") and "&lt;q&gt;" in svg and "<q>" not in svg
    assert svg.count("<polyline") == 2  # a's first run and b; a's lone last point is a dot
    assert svg.count("<circle") == 1
