"""Benchmark the engine in-process: `python scripts/bench.py --help` (also `executor bench`)."""

from __future__ import annotations

from executor.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
