"""The package's import-time contract: `import executor` is cheap (the daemon's first signal
handlers come before the heavy imports), and every public name still resolves."""

from __future__ import annotations

import subprocess
import sys

import executor


def test_every_public_name_resolves() -> None:
    for name in executor.__all__:
        assert getattr(executor, name) is not None, name
    assert set(executor.__all__) <= set(dir(executor))


def test_importing_the_package_and_the_command_loads_no_engine() -> None:
    code = (
        "import sys, executor, executor.cli\n"
        "heavy = ('asyncio', 'aiosqlite', 'executor.engine.engine')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout
