"""The client reads the daemon's configuration: the database path, shards and payload limit come
from the same file (and drop-ins and environment), so code does not repeat the path."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor import Client, errors

pytestmark = pytest.mark.anyio


def _config(tmp_path: Path, db: Path, limit: int = 2048) -> Path:
    path = tmp_path / "executor.toml"
    path.write_text(
        f'[database]\npath = "{db}"\n\n[engine]\nshards = 3\npayload_limit_bytes = {limit}\n'
    )
    return path


async def test_the_client_uses_the_daemons_config_file(tmp_path: Path) -> None:
    db = tmp_path / "from-config.sqlite"
    cfg = _config(tmp_path, db)
    async with Client(config_file=cfg) as client:
        assert client.db.path == db and client.db.shards == 3
        run = await client.start("wf", "small")
        assert (await client.status(run)).workflow == "wf"
        with pytest.raises(errors.PayloadError, match="over the payload limit of 2048"):
            await client.start("wf", "x" * 3000)
    assert db.exists()


async def test_without_arguments_the_client_finds_the_config_like_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "env.sqlite"
    monkeypatch.setenv("EXECUTOR_CONFIG", str(_config(tmp_path, db)))
    monkeypatch.setenv("EXECUTOR_ENGINE_PAYLOAD_LIMIT_BYTES", "4096")  # the environment wins
    async with Client() as client:
        assert client.db.path == db and client.payload_limit_bytes == 4096


async def test_a_path_given_in_code_still_wins(tmp_path: Path) -> None:
    db = tmp_path / "explicit.sqlite"
    async with Client(db, config_file=_config(tmp_path, tmp_path / "other.sqlite")) as client:
        assert client.db.path == db and client.payload_limit_bytes == 2048
    assert not (tmp_path / "other.sqlite").exists()


def test_a_missing_config_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match=r"nope.toml: config file not found"):
        Client(config_file=tmp_path / "nope.toml")
