"""The README's example runs as written, and its set-up commands are the ones CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

README = (REPO / "README.md").read_text()


def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    (tmp_path / "hello.py").write_text(code)
    first = subprocess.run(
        [sys.executable, "hello.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 3
    assert "'summary': 'DURABLE STEPS', 'words': 4" in lines[0]
    # Same idempotency keys: the same runs, with the same (replayed, deterministic) results.
    second = subprocess.run(
        [sys.executable, "hello.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == lines


def test_readme_test_command_is_the_one_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README
    assert "python -m pytest -q" in ci


def test_readme_exit_codes_are_the_table_the_code_uses() -> None:
    """README's exit-code table is executor.exitcodes, row for row (backticks aside)."""
    from executor.exitcodes import MEANINGS

    rows = re.findall(r"^\| (\d+) \| (.*?) \|$", README, re.M)
    assert [(int(code), text.replace("`", "")) for code, text in rows] == [
        (int(code), text) for code, text in MEANINGS.items()
    ]
