"""`python scripts/bench.py`: run one workload, print one JSON object (see --help)."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.measure import calibrate_ms, machine
from benchmarks.options import Options, Workload, build_parser, resolve
from benchmarks.workloads import WORKLOADS
from executor import errors


@contextlib.contextmanager
def _profiled(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    try:
        import pyinstrument
    except ImportError:
        print("bench: pyinstrument is not installed; running without --profile", file=sys.stderr)
        yield
        return
    # Plain stack sampling of the main thread: every task's time shows up, not just the
    # awaiting coroutine's. The database threads do not appear; use py-spy for those.
    profiler = pyinstrument.Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        text = (
            profiler.output_html()
            if path.suffix == ".html"
            else profiler.output_text(unicode=False, color=False, show_all=False)
        )
        path.write_text(text)


def run(opts: Options, ns: Any = None, workloads: Sequence[Workload] = WORKLOADS) -> dict[str, Any]:
    """Run one benchmark and return its report."""
    workload = next(w for w in workloads if w.name == opts.workload)
    calibration = [calibrate_ms()]
    with contextlib.ExitStack() as stack:
        if opts.db is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        else:
            folder = opts.db.parent
        result = workload.run(opts, ns, folder)
    calibration.append(calibrate_ms())
    return {
        "workload": opts.workload,
        **result,
        "cpu_calibration_ms": calibration,
        "params": opts.params(),
        "machine": machine(),
    }


def main(argv: list[str] | None = None, workloads: Sequence[Workload] = WORKLOADS) -> int:
    ns = build_parser(workloads).parse_args(argv)
    opts = resolve(ns, workloads)
    try:
        with _profiled(ns.profile):
            report = run(opts, ns, workloads)
    except errors.ExecutorError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=ns.json_indent))
    ok = (
        report.get("completed", False)
        and not report.get("failed")
        and not report.get("engine_crashed")
    )
    return 0 if ok else 1
