"""The config loader: files, drop-ins, environment, provenance and validation errors."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executor import config
from executor.config import Config, ConfigError, load_config
from tests.support import REPO

SHIPPED_CONFIG = REPO / "config" / "executor.toml"
SHIPPED_DROPIN = REPO / "config" / "executor.d" / "50-example.toml.off"


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point the /etc default at a path that does not exist, whatever this machine has."""
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "executor.toml")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={} if env is None else env)
    message = info.value.message
    assert "\n" not in message
    return message


def all_keys() -> list[str]:
    # Every key of the fixed sections; [limits.NAME] and [concurrency_keys] hold names the user
    # picks, so they have no fixed keys.
    return [
        f"{section.name}.{item.name}"
        for section in dataclasses.fields(Config)
        if dataclasses.is_dataclass(getattr(Config(), section.name))
        for item in dataclasses.fields(getattr(Config(), section.name))
    ]


# --- Sources and precedence -------------------------------------------------------------------


def test_no_file_gives_the_embedded_defaults() -> None:
    loaded = load_config(env={})
    assert loaded.config == Config()
    assert loaded.files == ()
    assert set(loaded.sources) == set(all_keys())
    assert set(loaded.sources.values()) == {"default"}


def test_default_path_is_used_when_it_exists(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base = write(tmp_path / "etc" / "executor.toml", "[engine]\nshards = 3\n")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", base)
    loaded = load_config(env={})
    assert loaded.config.engine.shards == 3
    assert loaded.files == (base,)


def test_every_dataclass_field_has_a_spec() -> None:
    # A field added to a dataclass without a spec would be impossible to set from a file.
    assert set(config._KEYS) == set(all_keys())


def test_base_and_dropins_merge_in_lexical_order(tmp_path: Path) -> None:
    base = write(
        tmp_path / "executor.toml",
        '[engine]\nconcurrency = 10\nshards = 2\n[log]\nlevel = "warning"\n',
    )
    dropins = tmp_path / "executor.d"
    # Written out of order, so directory order cannot pass for lexical order by luck.
    late = write(dropins / "90-late.toml", "[engine]\nconcurrency = 90\n")
    early = write(dropins / "10-early.toml", '[engine]\nconcurrency = 20\n[log]\nformat = "json"\n')
    write(dropins / "50-middle.toml", "[database]\ndurability = 'full'\n")
    write(dropins / "README.md", "not toml")
    write(dropins / ".99-editor-backup.toml", "[engine]\nconcurrency = 99\n")
    (dropins / "60-dir.toml").mkdir()

    loaded = load_config(base, env={})

    assert loaded.files == (base, early, dropins / "50-middle.toml", late)
    engine = loaded.config.engine
    assert (engine.concurrency, engine.shards) == (90, 2)  # later wins; the table merged
    assert loaded.config.log.level == "warning"
    assert loaded.config.log.format == "json"
    assert loaded.config.database.durability == "full"
    assert loaded.sources["engine.concurrency"] == str(late)
    assert loaded.sources["engine.shards"] == str(base)
    assert loaded.sources["log.format"] == str(early)
    assert loaded.sources["engine.lease_s"] == "default"


def test_a_later_file_replaces_a_list_rather_than_appending(tmp_path: Path) -> None:
    base = write(tmp_path / "executor.toml", '[daemon]\nworkflows = ["a.b", "c"]\n')
    write(tmp_path / "executor.d" / "10.toml", '[daemon]\nworkflows = ["d.e"]\n')
    assert load_config(base, env={}).config.daemon.workflows == ("d.e",)


def test_no_base_file_means_no_dropins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "executor.d" / "10.toml", "[engine]\nconcurrency = 5\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}).config == Config()


def test_environment_overrides_files_and_records_the_variable(tmp_path: Path) -> None:
    base = write(tmp_path / "executor.toml", "[engine]\nconcurrency = 10\n")
    env = {
        "EXECUTOR_ENGINE_CONCURRENCY": "50",
        "EXECUTOR_DATABASE_PATH": "/x.sqlite",
        "EXECUTOR_DAEMON_WORKFLOWS": "a.b, c.d",
        "EXECUTOR_DATABASE_GROUP_READABLE": "yes",
        "EXECUTOR_ENGINE_POLL_INTERVAL_S": "0.5",
        "EXECUTOR_ENGINE_LEASE_S": "20",
        "EXECUTOR_LOG_LEVEL": "debug",
        "HOME": "/root",  # not ours: ignored
    }
    loaded = load_config(base, env=env)
    cfg = loaded.config
    assert cfg.engine.concurrency == 50
    assert cfg.database.path == Path("/x.sqlite")
    assert cfg.daemon.workflows == ("a.b", "c.d")
    assert cfg.database.group_readable is True
    assert cfg.engine.poll_interval_s == 0.5
    assert cfg.engine.lease_s == 20.0
    assert isinstance(cfg.engine.lease_s, float)
    assert cfg.log.level == "debug"
    assert loaded.sources["engine.concurrency"] == "EXECUTOR_ENGINE_CONCURRENCY"
    assert loaded.sources["database.path"] == "EXECUTOR_DATABASE_PATH"
    assert loaded.sources["engine.shards"] == "default"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("no", False)],
)
def test_environment_booleans(text: str, expected: bool) -> None:
    env = {"EXECUTOR_DATABASE_GROUP_READABLE": text}
    assert load_config(env=env).config.database.group_readable is expected


def test_empty_workflows_variable_clears_the_list(tmp_path: Path) -> None:
    base = write(tmp_path / "executor.toml", '[daemon]\nworkflows = ["a.b"]\n')
    env = {"EXECUTOR_DAEMON_WORKFLOWS": ""}
    assert load_config(base, env=env).config.daemon.workflows == ()


def test_executor_config_variable_names_the_base_file(tmp_path: Path) -> None:
    base = write(tmp_path / "custom.toml", "[engine]\nshards = 16\n")
    write(tmp_path / "executor.d" / "10.toml", "[engine]\nconcurrency = 7\n")
    loaded = load_config(env={"EXECUTOR_CONFIG": str(base)})
    assert (loaded.config.engine.shards, loaded.config.engine.concurrency) == (16, 7)
    assert loaded.files[0] == base


def test_explicit_path_beats_executor_config(tmp_path: Path) -> None:
    explicit = write(tmp_path / "a.toml", "[engine]\nshards = 1\n")
    other = write(tmp_path / "b.toml", "[engine]\nshards = 2\n")
    loaded = load_config(explicit, env={"EXECUTOR_CONFIG": str(other)})
    assert loaded.config.engine.shards == 1


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    message = error_of(missing)
    assert str(missing) in message
    assert "not found" in message


def test_missing_executor_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    message = error_of(env={"EXECUTOR_CONFIG": str(missing)})
    assert message.startswith("EXECUTOR_CONFIG: ")
    assert str(missing) in message


# --- Errors -------------------------------------------------------------------------------------


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "executor.toml", "[engine]\nconcurrency = ten\n")
    message = error_of(path)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in message


def test_syntax_error_in_a_dropin_names_the_dropin(tmp_path: Path) -> None:
    base = write(tmp_path / "executor.toml", "")
    bad = write(tmp_path / "executor.d" / "10-x.toml", "[engine\n")
    assert error_of(base).startswith(f"{bad}: invalid TOML: ")


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "executor.toml"
    path.write_bytes(b'[log]\nlevel = "\xff"\n')
    assert error_of(path).startswith(f"{path}: invalid TOML")


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path / "executor.toml", "[quotas.stripe]\nrate = 5\n")
    assert error_of(path) == (
        f"{path}: quotas: unknown section (expected one of database, engine, daemon, log, metrics,"
        " retention, limits, concurrency_keys, schedules)"
    )


def test_unknown_section_suggests_a_close_name(tmp_path: Path) -> None:
    path = write(tmp_path / "executor.toml", "[engin]\nshards = 5\n")
    assert error_of(path) == f"{path}: engin: unknown section (did you mean engine?)"


def test_unknown_key_suggests_a_close_name(tmp_path: Path) -> None:
    path = write(tmp_path / "executor.toml", "[engine]\nconcurency = 5\n")
    assert error_of(path) == (
        f"{path}: engine.concurency: unknown key (did you mean engine.concurrency?)"
    )


def test_nested_table_in_a_section_is_an_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path / "executor.toml", "[engine.extra]\nx = 1\n")
    assert error_of(path).startswith(f"{path}: engine.extra: unknown key")


def test_key_outside_any_section(tmp_path: Path) -> None:
    path = write(tmp_path / "executor.toml", "concurrency = 5\n")
    message = error_of(path)
    assert message.startswith(f"{path}: concurrency: unknown key")
    assert "engine.concurrency" in message


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    path = write(tmp_path / "executor.toml", "engine = 5\n")
    assert error_of(path) == f"{path}: engine: expected a table, got 5"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[engine]\nconcurrency = "ten"',
            'engine.concurrency: expected an integer from 1 to 100000, got "ten"',
        ),
        ("[engine]\nconcurrency = 1.5", "engine.concurrency: expected an integer from 1 to 100000"),
        (
            "[engine]\nconcurrency = true",
            "engine.concurrency: expected an integer from 1 to 100000, got true",
        ),
        ("[engine]\nconcurrency = 0", "engine.concurrency: expected an integer from 1 to 100000"),
        ("[engine]\nconcurrency = 100001", "engine.concurrency: expected an integer"),
        ("[engine]\nshards = 0", "engine.shards: expected an integer from 1 to 4096, got 0"),
        ("[engine]\nshards = 4097", "engine.shards: expected an integer from 1 to 4096"),
        ("[engine]\nlease_s = true", "engine.lease_s: expected a number of seconds greater than 0"),
        ("[engine]\npoll_interval_s = 0", "engine.poll_interval_s: expected a number of seconds"),
        ("[engine]\ndrain_timeout_s = -1.0", "engine.drain_timeout_s: expected a number"),
        ("[engine]\nflush_interval_s = inf", "engine.flush_interval_s: expected a number"),
        ("[engine]\nheartbeat_interval_s = nan", "engine.heartbeat_interval_s: expected"),
        ("[engine]\nwrite_failure_limit_s = '60'", "engine.write_failure_limit_s: expected"),
        ("[database]\nbusy_timeout_s = 0.0", "database.busy_timeout_s: expected a number"),
        (
            "[engine]\ninstance_cache_size = -1",
            "engine.instance_cache_size: expected an integer >= 0",
        ),
        ("[engine]\nhydration_cache_entries = -5", "engine.hydration_cache_entries: expected"),
        ("[engine]\nhydration_cache_entry_max_bytes = -1", "engine.hydration_cache_entry_max"),
        (
            "[engine]\npayload_limit_bytes = 1023",
            "engine.payload_limit_bytes: expected an integer from 1024 to 1073741824, got 1023",
        ),
        ("[engine]\npayload_limit_bytes = 1073741825", "engine.payload_limit_bytes: expected"),
        (
            "[database]\ndurability = 'fsync'",
            'database.durability: expected one of "normal", "full", got "fsync"',
        ),
        ("[database]\npath = ''", 'database.path: expected a non-empty path string, got ""'),
        ("[database]\npath = 5", "database.path: expected a non-empty path string, got 5"),
        (
            "[database]\ngroup_readable = 1",
            "database.group_readable: expected true or false, got 1",
        ),
        (
            "[database]\npage_size = 12288",
            "database.page_size: expected a power of two from 4096 to 65536, got 12288",
        ),
        ("[database]\npage_size = 2048", "database.page_size: expected a power of two from"),
        ("[database]\npage_size = 131072", "database.page_size: expected a power of two from"),
        ("[database]\npage_size = '16384'", "database.page_size: expected a power of two"),
        (
            "[database]\npayload_compression = 'off'",
            'database.payload_compression: expected true or false, got "off"',
        ),
        (
            "[database]\npayload_compress_min_bytes = -1",
            "database.payload_compress_min_bytes: expected an integer from 0 to 1073741824, got -1",
        ),
        ("[database]\npayload_compress_min_bytes = 4.5", "payload_compress_min_bytes: expected"),
        ("[daemon]\nloop = 'trio'", 'daemon.loop: expected one of "auto", "uvloop", "asyncio"'),
        ("[log]\nlevel = 'verbose'", 'log.level: expected one of "debug", "info", "warning"'),
        ("[log]\nformat = 'xml'", 'log.format: expected one of "auto", "text", "json", got "xml"'),
        (
            "[daemon]\nworkflows = 'a.b'",
            'daemon.workflows: expected a list of dotted module names, got "a.b"',
        ),
        (
            "[daemon]\nworkflows = ['a.b', 'a..b']",
            'daemon.workflows[1]: expected a dotted module name like "myapp.workflows", got "a..b"',
        ),
        ("[daemon]\nworkflows = ['a-b']", "daemon.workflows[0]: expected a dotted module name"),
        ("[daemon]\nworkflows = [1]", "daemon.workflows[0]: expected a dotted module name"),
        ("[daemon]\nworkflows = ['x:y']", 'got "x:y"'),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, toml: str, message: str) -> None:
    base = write(tmp_path / "executor.toml", "")
    dropin = write(tmp_path / "executor.d" / "10-x.toml", toml + "\n")
    got = error_of(base)
    assert got.startswith(f"{dropin}: ")
    assert message in got


def test_bad_value_is_an_error_even_if_a_later_file_overrides_it(tmp_path: Path) -> None:
    base = write(tmp_path / "executor.toml", "[engine]\nshards = 0\n")
    write(tmp_path / "executor.d" / "10.toml", "[engine]\nshards = 4\n")
    assert error_of(base).startswith(f"{base}: engine.shards: ")


def test_integer_is_accepted_where_seconds_are_expected(tmp_path: Path) -> None:
    path = write(tmp_path / "executor.toml", "[engine]\ndrain_timeout_s = 10\n")
    value = load_config(path, env={}).config.engine.drain_timeout_s
    assert value == 10.0
    assert isinstance(value, float)


def test_long_values_are_shortened_to_keep_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "executor.toml", f'[log]\nlevel = "{"x" * 500}"\n')
    message = error_of(path)
    assert len(message) < 250
    assert message.endswith("...")


def test_lease_not_above_heartbeat_names_both_keys(tmp_path: Path) -> None:
    base = write(tmp_path / "executor.toml", "[engine]\nheartbeat_interval_s = 5.0\n")
    dropin = write(tmp_path / "executor.d" / "10-x.toml", "[engine]\nlease_s = 5\n")
    message = error_of(base)
    assert message == (
        f"{dropin}: engine.lease_s: expected more than engine.heartbeat_interval_s "
        f"(5.0 from {base}), got 5.0 (from {dropin})"
    )


def test_cross_field_error_leads_with_the_source_applied_last(tmp_path: Path) -> None:
    # lease_s keeps its default of 15 s; the heartbeat set in the environment broke the pair.
    message = error_of(env={"EXECUTOR_ENGINE_HEARTBEAT_INTERVAL_S": "15"})
    assert message.startswith("EXECUTOR_ENGINE_HEARTBEAT_INTERVAL_S: engine.lease_s: ")
    assert "engine.heartbeat_interval_s" in message
    assert "from default" in message


def test_unknown_executor_variable_is_an_error() -> None:
    message = error_of(env={"EXECUTOR_ENGINE_CONCURENCY": "5"})
    assert message == (
        "EXECUTOR_ENGINE_CONCURENCY: unknown setting (did you mean EXECUTOR_ENGINE_CONCURRENCY?)"
    )
    assert error_of(env={"EXECUTOR_LIMITS": "x"}).startswith("EXECUTOR_LIMITS: unknown setting")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "EXECUTOR_ENGINE_CONCURRENCY",
            "ten",
            "EXECUTOR_ENGINE_CONCURRENCY: engine.concurrency: expected an integer from 1 to 100000,"
            ' got "ten"',
        ),
        (
            "EXECUTOR_ENGINE_SHARDS",
            "0",
            'engine.shards: expected an integer from 1 to 4096, got "0"',
        ),
        ("EXECUTOR_ENGINE_SHARDS", "2.0", 'got "2.0"'),
        ("EXECUTOR_ENGINE_LEASE_S", "soon", "engine.lease_s: expected a number of seconds"),
        ("EXECUTOR_ENGINE_LEASE_S", "nan", 'got "nan"'),
        (
            "EXECUTOR_DATABASE_GROUP_READABLE",
            "maybe",
            'database.group_readable: expected true, false, yes, no, 1 or 0, got "maybe"',
        ),
        ("EXECUTOR_DATABASE_PAGE_SIZE", "5000", "database.page_size: expected a power of two"),
        ("EXECUTOR_DATABASE_PAYLOAD_COMPRESSION", "never", "payload_compression: expected true"),
        ("EXECUTOR_LOG_LEVEL", "loud", 'log.level: expected one of "debug"'),
        ("EXECUTOR_DATABASE_PATH", "", "database.path: expected a non-empty path string"),
        (
            "EXECUTOR_DAEMON_WORKFLOWS",
            "a.b,,c",
            "daemon.workflows[1]: expected a dotted module name",
        ),
        ("EXECUTOR_DAEMON_WORKFLOWS", "a b", 'got "a b"'),
    ],
)
def test_bad_environment_values_name_variable_and_key(name: str, value: str, message: str) -> None:
    got = error_of(env={name: value})
    assert got.startswith(f"{name}: ")
    assert message in got


def test_empty_limits_section_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path / "executor.toml", "[limits]\n[concurrency_keys]\n")
    assert load_config(path, env={}).config == Config()


# --- Shipped files ------------------------------------------------------------------------------


def test_shipped_config_is_exactly_the_defaults(tmp_path: Path) -> None:
    # Copied alone, so the example drop-in beside it in the repository is not read.
    base = tmp_path / "executor.toml"
    shutil.copy(SHIPPED_CONFIG, base)
    loaded = load_config(base, env={})
    assert loaded.config == Config()
    # Every key is written out, not left to the embedded defaults.
    assert set(loaded.sources.values()) == {str(base)}


def test_the_repositorys_config_folder_loads_to_the_defaults() -> None:
    # The example drop-in beside executor.toml is inactive (.off): running from a checkout with
    # `-c config/executor.toml` gets exactly the documented defaults.
    loaded = load_config(SHIPPED_CONFIG, env={})
    assert loaded.config == Config()
    assert set(loaded.sources.values()) == {str(SHIPPED_CONFIG)}


def test_shipped_example_dropin_applies_once_renamed(tmp_path: Path) -> None:
    base = tmp_path / "executor.toml"
    shutil.copy(SHIPPED_CONFIG, base)
    dropin = tmp_path / "executor.d" / "50-local.toml"
    dropin.parent.mkdir()
    shutil.copy(SHIPPED_DROPIN, dropin)
    loaded = load_config(base, env={})
    assert loaded.config.engine.concurrency == 200
    assert loaded.config.log.level == "debug"
    assert loaded.sources["engine.concurrency"] == str(dropin)


# --- render_config and diff_live ----------------------------------------------------------------


def test_render_lists_every_key_with_its_source(tmp_path: Path) -> None:
    base = write(tmp_path / "executor.toml", "[engine]\nconcurrency = 10\n")
    loaded = load_config(base, env={"EXECUTOR_LOG_LEVEL": "debug"})
    text = config.render_config(loaded)
    lines = text.splitlines()
    for key in all_keys():
        name = key.partition(".")[2]
        (line,) = [ln for ln in lines if ln.startswith(f"{name} = ")]
        assert line.endswith(f"  # from {loaded.sources[key]}"), line
    assert f"concurrency = 10  # from {base}" in lines
    assert 'level = "debug"  # from EXECUTOR_LOG_LEVEL' in lines
    assert "shards = 8  # from default" in lines
    assert str(base) in lines[1]


def test_render_without_files_says_so() -> None:
    assert "No config file" in config.render_config(load_config(env={}))


def test_diff_live_classifies_changed_keys() -> None:
    old = Config()
    assert config.diff_live(old, old) == ([], [])
    new = old.replace(
        log=dataclasses.replace(old.log, level="debug", format="json"),
        engine=dataclasses.replace(old.engine, concurrency=5, poll_interval_s=1.0, shards=2),
        database=dataclasses.replace(old.database, path=Path("/other.sqlite")),
    )
    live, restart = config.diff_live(old, new)
    assert live == ["engine.concurrency", "engine.poll_interval_s", "log.level", "log.format"]
    assert restart == ["database.path", "engine.shards"]


# --- Properties -----------------------------------------------------------------------------------

module_names = st.from_regex(r"[a-z_][a-z0-9_]{0,6}(\.[a-z_][a-z0-9_]{0,6}){0,3}", fullmatch=True)
seconds = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    heartbeat = draw(seconds)
    return Config(
        database=config.DatabaseConfig(
            path=Path(draw(st.text(min_size=1, max_size=20).filter(lambda s: "\0" not in s))),
            durability=draw(st.sampled_from(["normal", "full"])),
            busy_timeout_s=draw(seconds),
            group_readable=draw(st.booleans()),
        ),
        engine=config.EngineConfig(
            shards=draw(st.integers(1, 4096)),
            concurrency=draw(st.integers(1, 100_000)),
            poll_interval_s=draw(seconds),
            flush_interval_s=draw(seconds),
            drain_timeout_s=draw(seconds),
            heartbeat_interval_s=heartbeat,
            lease_s=heartbeat + draw(st.floats(min_value=1e-3, max_value=1e3)),
            hydration_cache_entries=draw(st.integers(0, 2**40)),
            hydration_cache_entry_max_bytes=draw(st.integers(0, 2**40)),
            hydration_cache_bytes=draw(st.integers(0, 2**40)),
            instance_cache_size=draw(st.integers(0, 2**40)),
            payload_limit_bytes=draw(st.integers(1024, 1024**3)),
            write_failure_limit_s=draw(seconds),
        ),
        daemon=config.DaemonConfig(
            workflows=tuple(draw(st.lists(module_names, max_size=4))),
            loop=draw(st.sampled_from(["auto", "uvloop", "asyncio"])),
        ),
        log=config.LogConfig(
            level=draw(st.sampled_from(["debug", "info", "warning", "error"])),
            format=draw(st.sampled_from(["auto", "text", "json"])),
        ),
    )


@settings(max_examples=60, deadline=None)
@given(configs())
def test_rendered_config_loads_back_unchanged(cfg: Config) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "rendered.toml"
        loaded = config.LoadedConfig(cfg, (), dict.fromkeys(all_keys(), "default"))
        path.write_text(config.render_config(loaded), encoding="utf-8")
        assert load_config(path, env={}).config == cfg


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(
        [
            ("engine.shards", 1, 4096),
            ("engine.concurrency", 1, 100_000),
            ("engine.payload_limit_bytes", 1024, 1024**3),
            ("engine.instance_cache_size", 0, 2**62),
        ]
    ),
    data=st.data(),
)
def test_valid_integers_round_trip_through_toml_and_env(
    key: tuple[str, int, int], data: st.DataObject
) -> None:
    dotted, low, high = key
    value = data.draw(st.integers(low, high))
    section, name = dotted.split(".")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "executor.toml"
        path.write_text(f"[{section}]\n{name} = {value}\n")
        from_file = load_config(path, env={}).config
    from_env = load_config(env={config.env_var_for(dotted): str(value)}).config
    assert getattr(getattr(from_file, section), name) == value
    assert getattr(getattr(from_env, section), name) == value


@settings(max_examples=60, deadline=None)
@given(st.integers().filter(lambda n: not 1 <= n <= 100_000))
def test_out_of_range_concurrency_is_always_rejected(value: int) -> None:
    with pytest.raises(ConfigError, match=r"^EXECUTOR_ENGINE_CONCURRENCY: engine\.concurrency: "):
        load_config(env={"EXECUTOR_ENGINE_CONCURRENCY": str(value)})


def test_database_url_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "executor.toml"
    path.write_text('[database]\nurl = "postgresql://app@db.internal:5433/executor"\n')
    assert load_config(path, env={}).config.database.url == (
        "postgresql://app@db.internal:5433/executor"
    )
    env = {"EXECUTOR_DATABASE_URL": "postgres://other@/x?host=/run/postgresql"}
    loaded = load_config(path, env=env)
    assert loaded.config.database.url == "postgres://other@/x?host=/run/postgresql"
    assert loaded.sources["database.url"] == "EXECUTOR_DATABASE_URL"
    # Empty: back to the SQLite file.
    assert load_config(path, env={"EXECUTOR_DATABASE_URL": ""}).config.database.url == ""


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://u:s3cret@h/db", "the scheme postgresql:// or postgres://"),
        ("sqlite:///x.sqlite", "SQLite needs no URL: set database.path"),
        ("postgresql://u:s3cret@h:port/db", "a PostgreSQL URL"),
        ("postgresql://u:s3cret@h/my db", "a PostgreSQL URL"),
    ],
)
def test_a_bad_database_url_names_the_key_and_hides_the_password(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"EXECUTOR_DATABASE_URL": url})
    message = str(caught.value)
    assert message.startswith("EXECUTOR_DATABASE_URL: database.url: expected")
    assert expected in message
    assert "s3cret" not in message


def test_rendered_config_hides_the_database_password() -> None:
    env = {"EXECUTOR_DATABASE_URL": "postgresql://app:s3cret@h/db?password=s3cret"}
    text = config.render_config(load_config(env=env))
    assert 'url = "postgresql://app:***@h/db?password=***"  # from EXECUTOR_DATABASE_URL' in text
    assert "s3cret" not in text
