"""Benchmark the engine in-process: `python scripts/bench.py --help`."""

from __future__ import annotations

import sys
from pathlib import Path

# The harness lives in the repository (benchmarks/), not in the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.main import main

if __name__ == "__main__":
    raise SystemExit(main())
