"""docs/COMPOSING.md's two examples run as written and print what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

PAGE = (REPO / "docs" / "COMPOSING.md").read_text()
# The examples are the complete scripts: the blocks that end with asyncio.run(main()).
EXAMPLES = [b for b in re.findall(r"```python\n(.*?)```", PAGE, re.S) if "asyncio.run(main())" in b]


def run(tmp_path: Path, code: str) -> str:
    (tmp_path / "example.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_there_are_two_examples() -> None:
    assert len(EXAMPLES) == 2


@pytest.mark.parametrize("index", [0, 1], ids=["human-review", "map-reduce"])
def test_example_runs_as_written(tmp_path: Path, index: int) -> None:
    out = run(tmp_path, EXAMPLES[index])
    if index == 0:
        printed = re.search(r"It prints:\n\n```\n(.*?)```", PAGE, re.S)
        assert printed is not None
        assert out == printed.group(1)
    else:
        printed = re.search(r"It prints `(.*?)`\.", PAGE)
        assert printed is not None
        assert out.strip() == printed.group(1)
