"""Every workload `scripts/bench.py --workload NAME` knows, in --help order.

A new workload is a module with a `Workload` entry (benchmarks/options.py): add it here.
"""

from __future__ import annotations

from benchmarks import ceiling, engine_run, floor, prompt, quota, repair, signals, starting
from benchmarks.options import Workload

WORKLOADS: tuple[Workload, ...] = (
    *engine_run.WORKLOADS,
    floor.WORKLOAD,
    ceiling.WORKLOAD,
    prompt.WORKLOAD,
    *quota.WORKLOADS,
    *repair.WORKLOADS,
    signals.WORKLOAD,
    starting.WORKLOAD,
)
