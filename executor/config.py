"""Configuration: frozen dataclasses with the embedded defaults.

This module is a leaf: the store, the engine and the daemon all read their settings from these
types, and only the loader (below the dataclasses) knows about files and the environment.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from executor import configvalues as cv
from executor.configvalues import LoggerLevels
from executor.errors import ConfigError
from executor.schedules import ScheduleSpec, from_table

Durability = Literal["normal", "full"]
LoopKind = Literal["auto", "uvloop", "asyncio"]
ReplayArgsPolicy = Literal["log", "strict"]  # vocabulary.ReplayArgs
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "text", "json"]


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    path: Path = Path("executor.sqlite")
    # A PostgreSQL URL ("postgresql://user@host/dbname"): the store is that database instead of
    # the SQLite file at `path` (docs/SCALE-OUT.md). Empty: SQLite.
    url: str = ""
    # normal: a power loss may lose the last commits (WAL not yet checkpointed to disk); a process
    # crash loses nothing. full: fsync on every commit.
    durability: Durability = "normal"
    busy_timeout_s: float = 5.0
    # Let the group read the database files (mode 0640 instead of 0600).
    group_readable: bool = False
    # The daemon runs SQLite's quick_check before it writes anything (about a second per GB):
    # a damaged file stops it with exit 3 instead of being written to.
    quick_check_on_start: bool = True
    # SQLite's page size for a NEW file (an existing file keeps its own). 8 KiB: an LLM's
    # 2.5 KB prompt or answer shares its page with two others instead of taking a 4 KiB page
    # alone; 16 KiB saves no more and makes each commit's WAL frames longer (docs/PAYLOADS.md).
    page_size: int = 8 * 1024
    # zlib on stored payloads (arguments and results over 1 KiB) of at least this many encoded
    # bytes, kept when it saves an eighth; off: never. Below 4 KiB it costs more CPU per step
    # than the whole of a plain asyncio program's (docs/PAYLOADS.md).
    payload_compression: bool = True
    payload_compress_min_bytes: int = 4 * 1024

    @property
    def compress_min_bytes(self) -> int | None:
        """Stored payloads of at least this many encoded bytes are compressed; None: never."""
        return self.payload_compress_min_bytes if self.payload_compression else None

    @property
    def where(self) -> str:
        """What messages call this database: the file, or the URL without its password."""
        return cv.redact_url(self.url) if self.url else str(self.path)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    shards: int = 8
    concurrency: int = 100  # slots per shard
    poll_interval_s: float = 0.1
    # Group commit of step results: 0 commits after one pass of the event loop (the results of
    # that pass together; more gather while a commit runs). A window adds its length to every
    # step's latency: 2 ms here made one-step-at-a-time runs 3x slower (docs/PERFORMANCE.md).
    flush_interval_s: float = 0.0
    drain_timeout_s: float = 30.0
    heartbeat_interval_s: float = 2.0
    lease_s: float = 15.0
    hydration_cache_entries: int = 100_000
    hydration_cache_entry_max_bytes: int = 64 * 1024
    # Memory the hydration cache may hold (results, keys and bookkeeping); 0 disables it.
    hydration_cache_bytes: int = 32 * 1024 * 1024
    instance_cache_size: int = 10_000  # live workflow instances kept in memory; 0 = always replay
    payload_limit_bytes: int = 64 * 1024 * 1024
    # After this long without being able to write, the engine drains and exits non-zero.
    write_failure_limit_s: float = 60.0
    # Steps in flight per concurrency key (Client.start(concurrency_key=...)); 0 = no cap.
    # [concurrency_keys] overrides it per key.
    concurrency_key_cap: int = 0
    # A recorded step called with other arguments on replay (an edited prompt): "log" keeps the
    # journal's result and counts it; "strict" parks the run.
    replay_args: ReplayArgsPolicy = "log"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    workflows: tuple[str, ...] = ()
    loop: LoopKind = "auto"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"
    # Per-logger levels, e.g. httpx = "warning": a logger and its children log at that level
    # whatever log.level says (a chatty HTTP client, or one module at debug).
    levels: LoggerLevels = field(default_factory=LoggerLevels)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # The engine stores a small sample row and its counters every heartbeat, for the dashboard's
    # plots and for Prometheus (`executor serve`, or the port below).
    samples: bool = True
    # The daemon's own Prometheus endpoint: 0 = none (the default: the daemon opens no port).
    port: int = 0
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    # Finished runs (succeeded, failed, cancelled) are purged with their journal and payloads
    # this many days after they finished; 0 = never (the default: nothing is deleted unless the
    # operator says so). `executor runs purge` does it on demand.
    finished_days: float = 0.0
    interval_s: float = 600.0  # how often the daemon looks for runs to purge
    batch: int = 500  # runs per transaction


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """A named quota, [limits.NAME]: any subset of the rates and a concurrency cap."""

    name: str
    requests_per_second: int | None = None
    requests_per_minute: int | None = None
    requests_per_hour: int | None = None
    tokens_per_second: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_hour: int | None = None
    concurrent: int | None = None
    # Pacing and the adaptive rate (engine/limits/); None: the documented default.
    pace: bool | None = None
    backoff: float | None = None
    floor: float | None = None
    recovery_s: float | None = None
    tolerance: float | None = None


@dataclass(frozen=True, slots=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    # Tuples, sorted by name, so the config stays hashable and compares by value.
    limits: tuple[LimitSpec, ...] = ()
    concurrency_keys: tuple[tuple[str, int], ...] = ()  # (key, cap) overrides
    schedules: tuple[ScheduleSpec, ...] = ()  # [schedules.NAME], sorted by name

    def replace(self, **sections: object) -> Config:
        return dataclasses.replace(self, **sections)  # type: ignore[arg-type]


# --- Loader ---------------------------------------------------------------------------------------
#
# Precedence, lowest first: the embedded defaults above, the base file, its drop-ins in lexical
# order, then EXECUTOR_<SECTION>_<FIELD> environment variables. Each value is validated where it is
# read, so an error names the file (or variable) that holds it, even if a later source overrides it.

# Read when it exists and no path was given; tests monkeypatch it so they never touch the real /etc.
DEFAULT_CONFIG_PATH = Path("/etc/executor/executor.toml")
DROPIN_DIR_NAME = "executor.d"
CONFIG_PATH_ENV = "EXECUTOR_CONFIG"
ENV_PREFIX = "EXECUTOR_"
# EXECUTOR_* variables that are not settings, so the "unknown variable" check must skip them.
RESERVED_ENV = frozenset({CONFIG_PATH_ENV})
DEFAULT_SOURCE = "default"

# Changes to these take effect on SIGHUP; any other changed key needs a restart.
LIVE_KEYS = frozenset(
    {
        "log.level",
        "log.format",
        "log.levels",
        "engine.concurrency",
        "engine.poll_interval_s",
        "engine.concurrency_key_cap",
        "retention.finished_days",
        "retention.interval_s",
        "retention.batch",
    }
)
# Tables with names chosen by the user: [limits.NAME] and [concurrency_keys]; always live.
LIMITS_SECTION = "limits"
CONCURRENCY_KEYS_SECTION = "concurrency_keys"
SCHEDULES_SECTION = "schedules"  # [schedules.NAME] (executor/schedules.py); live on SIGHUP
_LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(LimitSpec) if f.name != "name")
_LIMIT_NAME = re.compile(r"[A-Za-z0-9_-]+")

_KIB = 1024
_GIB = 1024 * 1024 * 1024

_SECTIONS: dict[
    str,
    type[
        DatabaseConfig | EngineConfig | DaemonConfig | LogConfig | MetricsConfig | RetentionConfig
    ],
] = {
    "database": DatabaseConfig,
    "engine": EngineConfig,
    "daemon": DaemonConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
    "retention": RetentionConfig,
}


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """The effective configuration, the files it came from, and where each key was set."""

    config: Config
    files: tuple[Path, ...]
    # "engine.concurrency" -> a file path, an environment variable name, or "default".
    sources: Mapping[str, str]


_KEYS: dict[str, cv.Spec] = {
    "database.path": cv.FilePath(),
    "database.url": cv.DatabaseUrl(),
    "database.durability": cv.Choice("normal", "full"),
    "database.busy_timeout_s": cv.Seconds(),
    "database.group_readable": cv.Bool(),
    "database.quick_check_on_start": cv.Bool(),
    "database.page_size": cv.PowerOfTwo(4 * _KIB, 64 * _KIB),
    "database.payload_compression": cv.Bool(),
    "database.payload_compress_min_bytes": cv.Int(0, _GIB),
    "engine.shards": cv.Int(1, 4096),
    "engine.concurrency": cv.Int(1, 100_000),
    "engine.poll_interval_s": cv.Seconds(),
    "engine.flush_interval_s": cv.Seconds(zero=True),
    "engine.drain_timeout_s": cv.Seconds(),
    "engine.heartbeat_interval_s": cv.Seconds(),
    "engine.lease_s": cv.Seconds(),
    "engine.hydration_cache_entries": cv.Int(0),
    "engine.hydration_cache_entry_max_bytes": cv.Int(0),
    "engine.hydration_cache_bytes": cv.Int(0),
    "engine.instance_cache_size": cv.Int(0),
    "engine.payload_limit_bytes": cv.Int(_KIB, _GIB),
    "engine.write_failure_limit_s": cv.Seconds(),
    "engine.concurrency_key_cap": cv.Int(0, cv.MAX_KEY_CAP),
    "engine.replay_args": cv.Choice("log", "strict"),
    "daemon.workflows": cv.Modules(),
    "daemon.loop": cv.Choice("auto", "uvloop", "asyncio"),
    "log.level": cv.Choice("debug", "info", "warning", "error"),
    "log.format": cv.Choice("auto", "text", "json"),
    "log.levels": cv.Levels(),
    "retention.finished_days": cv.Days(),
    "retention.interval_s": cv.Seconds(),
    "retention.batch": cv.Int(1, 100_000),
    "metrics.samples": cv.Bool(),
    "metrics.port": cv.Int(0, 65535),
    "metrics.host": cv.Host(),
}


def env_var_for(key: str) -> str:
    """The environment variable that sets a dotted key, e.g. EXECUTOR_ENGINE_CONCURRENCY."""
    return ENV_PREFIX + key.replace(".", "_").upper()


_ENV_KEYS = {env_var_for(key): key for key in _KEYS}


def load_config(
    config_path: Path | None = None, env: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Read the base file, its drop-ins and the environment; validate; freeze."""
    env = os.environ if env is None else env
    try:
        files = _files(config_path, env)
    except OSError as exc:  # a folder on the way we may not enter, a name too long, ...
        raise ConfigError(
            f"{exc.filename}: cannot read: {(exc.strerror or str(exc)).lower()}"
        ) from exc

    values: dict[str, object] = {}
    sources = dict.fromkeys(_KEYS, DEFAULT_SOURCE)
    for path in files:
        for key, value in _read_file(path).items():
            values[key] = value
            sources[key] = str(path)
    for key, (name, value) in _read_env(env).items():
        values[key] = value
        sources[key] = name

    config = _build(values)
    _check_cross_fields(config, sources, files)
    return LoadedConfig(config=config, files=tuple(files), sources=MappingProxyType(sources))


def render_config(loaded: LoadedConfig) -> str:
    """The effective configuration as TOML, every key annotated with where it was set."""
    if loaded.files:
        lines = ["# Files read, in order:"] + [f"#   {path}" for path in loaded.files]
    else:
        lines = ["# No config file found: embedded defaults and the environment only."]
    for section_name in _SECTIONS:
        section = getattr(loaded.config, section_name)
        lines += ["", f"[{section_name}]"]
        for item in dataclasses.fields(section):
            key = f"{section_name}.{item.name}"
            raw = getattr(section, item.name)
            # The URL may carry a password: `executor config` output ends up in tickets.
            value = cv.toml_value(cv.redact_url(raw) if key == "database.url" else raw)
            lines.append(f"{item.name} = {value}  # from {loaded.sources[key]}")
    for spec in loaded.config.limits:
        where = f"{LIMITS_SECTION}.{spec.name}"
        lines += ["", f"[{where}]  # from {loaded.sources.get(where, DEFAULT_SOURCE)}"]
        for name in _LIMIT_FIELDS:
            value = getattr(spec, name)
            if value is not None:
                source = loaded.sources.get(f"{where}.{name}", DEFAULT_SOURCE)
                lines.append(f"{name} = {cv.toml_value(value)}  # from {source}")
    if loaded.config.concurrency_keys:
        lines += ["", f"[{CONCURRENCY_KEYS_SECTION}]"]
        for name, cap in loaded.config.concurrency_keys:
            key = cv.toml_key(name)
            source = loaded.sources.get(f"{CONCURRENCY_KEYS_SECTION}.{key}", DEFAULT_SOURCE)
            lines.append(f"{key} = {cap}  # from {source}")
    for schedule in loaded.config.schedules:
        where = f"{SCHEDULES_SECTION}.{cv.toml_key(schedule.name)}"
        lines += ["", f"[{where}]  # from {loaded.sources.get(where, DEFAULT_SOURCE)}"]
        for item in dataclasses.fields(schedule):
            value = getattr(schedule, item.name)
            if item.name != "name":
                # args hold any JSON; the rest are strings.
                shown = json.dumps(list(value)) if item.name == "args" else cv.toml_value(value)
                lines.append(f"{item.name} = {shown}")
    return "\n".join(lines) + "\n"


def diff_live(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Split the keys that differ into (applied live on SIGHUP, needing a restart)."""
    live: list[str] = []
    restart: list[str] = []
    for section_name in _SECTIONS:
        old_section = getattr(old, section_name)
        new_section = getattr(new, section_name)
        for item in dataclasses.fields(old_section):
            if getattr(old_section, item.name) != getattr(new_section, item.name):
                key = f"{section_name}.{item.name}"
                (live if key in LIVE_KEYS else restart).append(key)
    old_limits = {s.name: s for s in old.limits}
    new_limits = {s.name: s for s in new.limits}
    live.extend(
        f"{LIMITS_SECTION}.{name}"
        for name in sorted(old_limits.keys() | new_limits.keys())
        if old_limits.get(name) != new_limits.get(name)
    )
    if old.concurrency_keys != new.concurrency_keys:
        live.append(CONCURRENCY_KEYS_SECTION)
    if old.schedules != new.schedules:
        live.append(SCHEDULES_SECTION)
    return live, restart


def _files(config_path: Path | None, env: Mapping[str, str]) -> list[Path]:
    """The base file and its drop-ins, in the order they apply."""
    base = _base_file(config_path, env)
    files: list[Path] = []
    if base is not None:
        files.append(base)
        dropins = base.parent / DROPIN_DIR_NAME
        if dropins.is_dir():
            # Dot-files are editor and package-manager leftovers, not configuration.
            found = (
                p for p in dropins.glob("*.toml") if p.is_file() and not p.name.startswith(".")
            )
            files.extend(sorted(found, key=lambda p: p.name))
    return files


def _base_file(config_path: Path | None, env: Mapping[str, str]) -> Path | None:
    if config_path is not None:
        if not config_path.exists():
            raise ConfigError(f"{config_path}: config file not found")
        return config_path
    from_env = env.get(CONFIG_PATH_ENV, "")
    if from_env:
        path = Path(from_env)
        if not path.exists():
            raise ConfigError(f"{CONFIG_PATH_ENV}: config file not found: {path}")
        return path
    # Read at call time (not bound as a default argument) so tests can monkeypatch it.
    if DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return None


def _read_file(path: Path) -> dict[str, object]:
    """Parse one TOML file into validated {dotted key: value}."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc

    values: dict[str, object] = {}
    for section_name, table in document.items():
        if section_name == LIMITS_SECTION:
            values.update(_read_limits(path, table))
            continue
        if section_name == CONCURRENCY_KEYS_SECTION:
            values.update(_read_concurrency_keys(path, table))
            continue
        if section_name == SCHEDULES_SECTION:
            values.update(_read_schedules(path, table))
            continue
        if section_name not in _SECTIONS and not isinstance(table, dict):
            raise ConfigError(f"{path}: {section_name}: unknown key{_top_level_hint(section_name)}")
        if section_name not in _SECTIONS:
            raise ConfigError(f"{path}: {section_name}: unknown section{_hint(section_name)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section_name}: expected a table, got {cv.show(table)}")
        for name, value in table.items():
            key = f"{section_name}.{name}"
            spec = _KEYS.get(key)
            if spec is None:
                raise ConfigError(f"{path}: {key}: unknown key{_hint(key)}")
            values[key] = _parse(spec, value, str(path), key, cv.show(value), from_env=False)
    return values


def _read_limits(path: Path, table: object) -> dict[str, object]:
    """[limits.NAME] tables into {"limits.NAME.FIELD": value}."""
    if not isinstance(table, dict):
        raise ConfigError(
            f"{path}: {LIMITS_SECTION}: expected tables like [limits.NAME], got {cv.show(table)}"
        )
    values: dict[str, object] = {}
    for name, limit in table.items():
        where = f"{LIMITS_SECTION}.{cv.toml_key(name)}"
        if not _LIMIT_NAME.fullmatch(name):
            raise ConfigError(
                f"{path}: {where}: a limit name may only hold letters, digits, _ and -"
            )
        if not isinstance(limit, dict):
            raise ConfigError(
                f"{path}: {where}: expected a table [{where}] with any of "
                + ", ".join(_LIMIT_FIELDS)
                + f", got {cv.show(limit)}"
            )
        for field_name, value in limit.items():
            key = f"{where}.{field_name}"
            spec = cv.LIMIT_SPECS.get(field_name)
            if spec is None:
                alias = cv.LIMIT_ALIASES.get(field_name.lower())
                known = [f"{where}.{known}" for known in _LIMIT_FIELDS]
                hint = f" (did you mean {where}.{alias}?)" if alias else _hint(key, known)
                raise ConfigError(f"{path}: {key}: unknown key{hint}")
            values[key] = _parse(spec, value, str(path), key, cv.show(value), from_env=False)
        values.setdefault(f"{where}", True)  # an empty table still declares the limit
    return values


def _read_concurrency_keys(path: Path, table: object) -> dict[str, object]:
    """[concurrency_keys] into {'concurrency_keys."KEY"': cap}."""
    if not isinstance(table, dict):
        raise ConfigError(
            f"{path}: {CONCURRENCY_KEYS_SECTION}: expected a table of"
            f' "key" = cap, got {cv.show(table)}'
        )
    values: dict[str, object] = {}
    spec = cv.Int(0, cv.MAX_KEY_CAP)
    for name, value in table.items():
        key = f"{CONCURRENCY_KEYS_SECTION}.{cv.toml_key(name)}"
        if not name:
            raise ConfigError(f"{path}: {key}: a concurrency key cannot be empty")
        values[key] = _parse(spec, value, str(path), key, cv.show(value), from_env=False)
    return values


def _read_schedules(path: Path, table: object) -> dict[str, object]:
    """[schedules.NAME] tables into {"schedules.NAME": ScheduleSpec}: a schedule is replaced
    whole by a later file that defines the same name."""
    if not isinstance(table, dict):
        raise ConfigError(
            f"{path}: {SCHEDULES_SECTION}: expected tables like [schedules.NAME],"
            f" got {cv.show(table)}"
        )
    values: dict[str, object] = {}
    for name, schedule in table.items():
        where = f"{path}: {SCHEDULES_SECTION}.{cv.toml_key(name)}"
        if not isinstance(schedule, dict):
            raise ConfigError(
                f"{where}: expected a table with workflow and cron, got {cv.show(schedule)}"
            )
        values[f"{SCHEDULES_SECTION}.{name}"] = from_table(name, schedule, where)
    return values


def _from_toml_key(text: str) -> str:
    return str(json.loads(text)) if text.startswith('"') else text


def _read_env(env: Mapping[str, str]) -> dict[str, tuple[str, object]]:
    """Validated {dotted key: (variable name, value)} from EXECUTOR_* variables."""
    values: dict[str, tuple[str, object]] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        key = _ENV_KEYS.get(name)
        if key is None:
            raise ConfigError(f"{name}: unknown setting{_hint(name, list(_ENV_KEYS))}")
        text = env[name]
        spec = _KEYS[key]
        value = _parse(spec, spec.from_env(text), name, key, cv.show(text), from_env=True)
        values[key] = (name, value)
    return values


def _parse(
    spec: cv.Spec, value: object, origin: str, key: str, shown: str, *, from_env: bool
) -> object:
    try:
        return spec.parse(value)
    except cv.Invalid as exc:
        got = shown if exc.got is None else exc.got
        expected = exc.expected
        if from_env and not exc.suffix and spec.env_expected is not None:
            expected = spec.env_expected
        raise ConfigError(f"{origin}: {key}{exc.suffix}: expected {expected}, got {got}") from None


def _build(values: Mapping[str, object]) -> Config:
    sections: dict[str, object] = {}
    for section_name, section_type in _SECTIONS.items():
        prefix = section_name + "."
        # Any: every value was checked against its key's spec, which mypy cannot follow.
        changes: dict[str, Any] = {
            k.removeprefix(prefix): v for k, v in values.items() if k.startswith(prefix)
        }
        sections[section_name] = dataclasses.replace(section_type(), **changes)
    limits: dict[str, dict[str, Any]] = {}
    caps: dict[str, int] = {}
    scheduled: dict[str, ScheduleSpec] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if head == LIMITS_SECTION:
            # Limit names are bare keys (no dots), so the first dot ends the name.
            name, _, field_name = rest.partition(".")
            fields = limits.setdefault(name, {})
            if field_name:
                fields[field_name] = value
        elif head == CONCURRENCY_KEYS_SECTION:
            caps[_from_toml_key(rest)] = int(value)  # type: ignore[call-overload]
        elif head == SCHEDULES_SECTION and isinstance(value, ScheduleSpec):
            scheduled[value.name] = value
    sections["limits"] = tuple(LimitSpec(name=name, **limits[name]) for name in sorted(limits))
    sections["concurrency_keys"] = tuple(sorted(caps.items()))
    sections["schedules"] = tuple(scheduled[name] for name in sorted(scheduled))
    return Config().replace(**sections)


def _check_cross_fields(config: Config, sources: Mapping[str, str], files: list[Path]) -> None:
    lease_key, heartbeat_key = "engine.lease_s", "engine.heartbeat_interval_s"
    lease, heartbeat = config.engine.lease_s, config.engine.heartbeat_interval_s
    if lease > heartbeat:
        return
    # Lead with whichever source was applied last: that is the change that broke the pair.
    order = {DEFAULT_SOURCE: 0} | {str(path): rank for rank, path in enumerate(files, 1)}
    env_rank = len(files) + 1
    lease_rank = order.get(sources[lease_key], env_rank)
    heartbeat_rank = order.get(sources[heartbeat_key], env_rank)
    origin = sources[heartbeat_key] if heartbeat_rank > lease_rank else sources[lease_key]
    raise ConfigError(
        f"{origin}: {lease_key}: expected more than {heartbeat_key} "
        f"({heartbeat} from {sources[heartbeat_key]}), "
        f"got {lease} (from {sources[lease_key]})"
    )


def _hint(name: str, candidates: list[str] | None = None) -> str:
    sections = [*_SECTIONS, LIMITS_SECTION, CONCURRENCY_KEYS_SECTION, SCHEDULES_SECTION]
    if candidates is None:
        candidates = sections if "." not in name else list(_KEYS)
    close = difflib.get_close_matches(name, candidates, n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    if "." not in name and candidates == sections:
        return " (expected one of " + ", ".join(sections) + ")"
    return ""


def _top_level_hint(name: str) -> str:
    # `concurrency = 5` above any [section] header is a common slip; point at the right table.
    matches = [key for key in _KEYS if key.endswith("." + name)]
    if matches:
        section, _, _ = matches[0].partition(".")
        return f" (settings go in a section: did you mean {matches[0]}, under [{section}]?)"
    return " (settings go in a section: " + ", ".join(f"[{s}]" for s in _SECTIONS) + ")"
