"""The systemd units pass `systemd-analyze verify`, and the install script stages them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from executor.config import EngineConfig
from tests.support import REPO

UNITS = REPO / "systemd"
INSTALL = REPO / "scripts" / "install-service.sh"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
VERIFY_TIMEOUT_S = 60
# The final flush and close after the drain need a moment before systemd's SIGKILL.
MIN_STOP_MARGIN_S = 5

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)


def staged_unit(source: Path, directory: Path, name: str | None = None) -> Path:
    """Copy a unit with ExecStart pointing at a binary that exists, so verify can check the rest."""
    text = re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", source.read_text())
    target = directory / source.name
    target.write_text(text)
    if name is None:
        return target
    # A template is verified through one of its instances.
    instance = directory / name
    instance.symlink_to(target.name)
    return instance


def verify(unit: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_S,
        check=False,
    )
    ours = [
        line
        for line in result.stderr.splitlines()
        if unit.name in line or str(unit.parent) in line or "executor" in line
    ]
    assert result.returncode == 0, result.stderr
    assert ours == [], result.stderr


def directives(unit: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


@needs_systemd_analyze
def test_service_unit_verifies(tmp_path: Path) -> None:
    verify(staged_unit(UNITS / "executor.service", tmp_path))


@needs_systemd_analyze
def test_template_unit_verifies_as_an_instance(tmp_path: Path) -> None:
    verify(staged_unit(UNITS / "executor@.service", tmp_path, "executor@demo.service"))


@needs_systemd_analyze
def test_verify_catches_unknown_directives(tmp_path: Path) -> None:
    # Guards the guard: systemd-analyze exits 0 on unknown keys, only stderr reveals them.
    unit = staged_unit(UNITS / "executor.service", tmp_path)
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nNoSuchDirective=1\n"))
    with pytest.raises(AssertionError, match="NoSuchDirective"):
        verify(unit)


@pytest.mark.parametrize("name", ["executor.service", "executor@.service"])
def test_stop_timeout_outlasts_the_drain(name: str) -> None:
    found = directives(UNITS / name)
    assert int(found["TimeoutStopSec"]) >= EngineConfig().drain_timeout_s + MIN_STOP_MARGIN_S
    assert found["Type"] == "notify"
    assert found["KillSignal"] == "SIGTERM"
    assert "MemoryDenyWriteExecute" not in found


def test_template_keeps_instances_apart() -> None:
    found = directives(UNITS / "executor@.service")
    assert found["ExecStart"].endswith("--config /etc/executor/%i/executor.toml")
    assert found["StateDirectory"] == "executor/%i"
    assert found["Environment"] == "EXECUTOR_DATABASE_PATH=/var/lib/executor/%i/executor.sqlite"


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_S,
        check=False,
    )


def test_install_script_stages_files_idempotently(tmp_path: Path) -> None:
    first = run_install(
        "--prefix", str(tmp_path), "--instance", "demo", "--executable", "/bin/true"
    )
    assert first.returncode == 0, first.stderr
    config = tmp_path / "etc" / "executor" / "executor.toml"
    assert config.read_text() == (REPO / "config" / "executor.toml").read_text()
    assert (tmp_path / "etc" / "executor" / "executor.d").is_dir()
    assert (tmp_path / "etc" / "executor" / "demo" / "executor.toml").is_file()
    unit = tmp_path / "etc" / "systemd" / "system" / "executor.service"
    assert directives(unit)["ExecStart"] == "/bin/true run --config /etc/executor/executor.toml"
    assert (tmp_path / "etc" / "systemd" / "system" / "executor@.service").is_file()
    if SYSTEMD_ANALYZE is not None:
        verify(unit)  # the --executable rewrite keeps the unit valid

    config.write_text("# edited by the admin\n")
    second = run_install("--prefix", str(tmp_path), "--instance", "demo")
    assert second.returncode == 0, second.stderr
    assert config.read_text() == "# edited by the admin\n"
    assert "exists, kept" in second.stdout


def test_install_script_dry_run_changes_nothing(tmp_path: Path) -> None:
    result = run_install("--prefix", str(tmp_path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "+ install" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_install_script_rejects_bad_arguments() -> None:
    assert run_install("--bogus").returncode == 2
    assert run_install("--dry-run", "--instance", "../x").returncode == 1
