"""The long-running process: lifecycle, signals, systemd integration and logging."""

from __future__ import annotations
