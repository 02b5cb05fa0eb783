"""What every test tier shares: one engine builder and database reader (engine.py), one daemon
and CLI harness (daemon.py), and one module of workflows the daemon runs in acceptance tests
(flows.py). The golden files and their workflows are in tests/golden/."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
