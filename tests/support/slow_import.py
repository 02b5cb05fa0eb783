"""A workflow module whose import blocks until the file named by $SLOW_IMPORT_GATE exists, so a
test can signal the daemon while it is importing its workflows (a stage of its start-up)."""

from __future__ import annotations

import os
import time
from pathlib import Path

_GATE = Path(os.environ.get("SLOW_IMPORT_GATE", "/nonexistent"))
_READY = os.environ.get("SLOW_IMPORT_READY")
if _READY:
    Path(_READY).touch()  # tells the test the import has begun
_deadline = time.monotonic() + 20.0
while not _GATE.exists() and time.monotonic() < _deadline:
    time.sleep(0.01)
