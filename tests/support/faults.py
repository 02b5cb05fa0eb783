"""Real faults on real files, for the fault tests: a file even root cannot write (the immutable
attribute), another connection holding the write lock, a read-only mount, a full file system, and
running as an unprivileged user. The tests run as root, so permission bits alone stop nothing;
each helper skips the test when this machine cannot make its fault (no chattr, no mount rights).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.engine import write_lock

__all__ = ["as_nobody", "fill", "immutable", "read_only", "small_file_system", "write_lock"]

NOBODY = 65534


def chattr(flag: str, *paths: Path) -> bool:
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return True
    done = subprocess.run(["chattr", flag, *existing], capture_output=True, check=False)
    return done.returncode == 0


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """The files cannot be written, even by root, until the block ends."""
    try:
        if shutil.which("chattr") is None or not chattr("+i", *paths):
            pytest.skip("chattr +i does not work on this file system")
        yield
    finally:
        chattr("-i", *paths)  # always: an immutable file cannot even be deleted by pytest


def _mount(*args: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def _umount(directory: Path) -> None:
    # Lazy: a process the test left behind must not keep the mount (and the test's tmp dir) busy.
    subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """`directory` becomes a read-only bind mount of itself (EROFS, even for root)."""
    if not _mount("--bind", str(directory), str(directory)):
        pytest.skip("cannot bind-mount here (needs root and mount rights)")
    try:
        if not _mount("-o", "remount,bind,ro", str(directory)):
            pytest.skip("cannot remount a bind mount read-only here")
        yield
    finally:
        _umount(directory)


@contextlib.contextmanager
def small_file_system(directory: Path, size: str) -> Iterator[None]:
    """`directory` becomes a tmpfs of `size` (e.g. "512k"), to fill up for real."""
    directory.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        yield
    finally:
        _umount(directory)


def fill(directory: Path) -> None:
    """Write a filler file until the file system of `directory` has no space left."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = b"\0" * 4096
        with contextlib.suppress(OSError):
            while os.write(fd, chunk):
                pass
        with contextlib.suppress(OSError):  # the last, partial block
            while os.write(fd, b"\0"):
                pass
    finally:
        os.close(fd)


def as_nobody() -> list[str]:
    """The argv prefix that runs a command as user and group nobody (no root powers)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("running as another user needs root and setpriv")
    prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if not _nobody_can_import(tuple(prefix)):
        # A venv inside a folder only root may enter (mktemp -d is 0700): nobody cannot load the
        # package at all, which says nothing about how it handles the file. .ci/run makes its
        # venv world-readable so CI runs these tests.
        pytest.skip(f"user nobody cannot import executor with {sys.executable}")
    return prefix


@functools.cache
def _nobody_can_import(prefix: tuple[str, ...]) -> bool:
    done = subprocess.run(
        [*prefix, sys.executable, "-c", "import executor.cli, orjson, aiosqlite"],
        capture_output=True,
        cwd="/",
        timeout=60,
        check=False,
    )
    return done.returncode == 0
