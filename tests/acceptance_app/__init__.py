"""Workflows the acceptance tests run in a real daemon (tests/test_daemon.py, tests/test_cli.py)."""

from __future__ import annotations
