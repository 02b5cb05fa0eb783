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
    """The README's one test command is the last thing .ci/run does, after installing the test
    extra the README installs: a change to either shows here."""
    ci = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    shell = [
        line
        for block in re.findall(r"```sh\n(.*?)```", README, re.S)
        for line in block.splitlines()
    ]
    tests = [line for line in shell if "pytest" in line]
    assert tests == ["python -m pytest -q"], tests
    assert ci[-1] == tests[0], ci[-1]
    assert any("pip install -e '.[test]'" in line for line in shell)
    assert any("pip install" in line and '-e ".[test]"' in line for line in ci)


def test_readme_exit_codes_are_the_table_the_code_uses() -> None:
    """README's exit-code table is executor.exitcodes, row for row (backticks aside)."""
    from executor.exitcodes import MEANINGS

    rows = re.findall(r"^\| (\d+) \| (.*?) \|$", README, re.M)
    assert [(int(code), text.replace("`", "")) for code, text in rows] == [
        (int(code), text) for code, text in MEANINGS.items()
    ]
