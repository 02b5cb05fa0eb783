"""Acceptance: the real daemon refuses a step that names a limit which is not configured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from executor.exitcodes import ExitCode


def test_the_daemon_refuses_a_typo_in_one_line_naming_step_limit_and_closest(
    tmp_path: Path,
) -> None:
    (tmp_path / "typo_app.py").write_text(
        "from executor import step\n\n\n"
        '@step(limits=["anthropc"])\n'
        "async def complete(prompt: str) -> str:\n"
        "    return prompt\n"
    )
    (tmp_path / "executor.toml").write_text(
        f'[database]\npath = "{tmp_path / "executor.sqlite"}"\n'
        '[daemon]\nworkflows = ["typo_app"]\n'
        "[limits.anthropic]\nrequests_per_minute = 4000\n"
    )
    daemon = subprocess.run(
        [sys.executable, "-m", "executor", "run", "--config", "executor.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert daemon.returncode == ExitCode.USAGE, daemon.stderr
    (line,) = [x for x in daemon.stderr.splitlines() if x.startswith("executor: error:")]
    assert "step typo_app.complete" in line and "'anthropc'" in line
    assert "did you mean 'anthropic'?" in line
