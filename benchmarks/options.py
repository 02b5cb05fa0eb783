"""The benchmark's command line: shared options, per-workload defaults, and the --help text.

Workloads (benchmarks/workloads.py) are described by a `Workload` entry: its help lines, the
defaults of the shared options it wants, any options of its own, and the function that runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from executor import config

# Defaults of the shared options a workload leaves to the engine's own.
_ENGINE = config.EngineConfig()
_COMMON_DEFAULTS: dict[str, Any] = {
    "workflows": 1,
    "steps": 1,
    "sleep_s": 0.0,
    "fanout": 1,
    "shards": _ENGINE.shards,
    "concurrency": _ENGINE.concurrency,
    "poll_interval": _ENGINE.poll_interval_s,
    "instance_cache": _ENGINE.instance_cache_size,
    "result_bytes": 0,
    "arg_bytes": 0,
    "sleep_max_s": 0.0,
}

START_BATCH = 1000  # runs per Client.start_many transaction
CEILING_BATCH = 500  # steps per transaction in the ceiling workload
SAMPLE_INTERVAL_S = 0.05  # how often the busy-slot sampler reads Engine.load()
TIMEOUT_S = 600.0


class Workload(NamedTuple):
    """One entry of the workload table (benchmarks/workloads.py)."""

    name: str
    help: str  # its paragraph under "workloads:" in --help, lines after the first indented
    # (options, every parsed argument, a fresh folder for its files) -> the report
    run: Callable[[Options, argparse.Namespace, Path], dict[str, Any]]
    # Values of -W -K -S -F --shards --concurrency ... when the command line leaves them unset.
    defaults: Mapping[str, Any] = {}
    # Options of its own, added to the parser (read them from the Namespace in `run`).
    add_arguments: Callable[[argparse._ArgumentGroup], None] | None = None


def _workloads_help(workloads: Sequence[Workload]) -> str:
    lines = ["workloads:"]
    for w in workloads:
        first, *rest = w.help.strip("\n").splitlines()
        lines.append(f"  {w.name:<8} {first}")
        lines += [f"           {line.strip()}" for line in rest]
    return "\n".join(lines) + "\n\n"


EPILOG = """\
timing (all from time.perf_counter()):
  Starting is timed on its own (start_s): W runs through Client.start_many, --batch runs per
  transaction. By default starting OVERLAPS execution: the engine is already running while the
  runs are being started, and the measured window (wall_s) runs from the first start_many call
  to the last finish. With --prefill every run is started before the engine starts, and wall_s
  (also given as drain_s) runs from the engine's start to the last finish.
  A run finishes when the engine's on_finish(run_id, status) callback fires, which is after the
  commit that finishes it. A run's latency runs from the moment its start_many transaction
  returned (or from the engine's start, with --prefill, if later) to its finish.

output fields (one JSON object on stdout):
  wall_s, steps_per_s, workflows_per_s   the measured window and the rates over it
  start_s, start_runs_per_s              time to start all W runs (and the start rate)
  cpu_s_per_1000_steps                   user+sys CPU of this process (all its threads,
                                         getrusage RUSAGE_SELF) over the window, per 1,000 steps
  loop_cpu_s_per_1000_steps              the same for the event loop's thread alone (thread_time):
                                         the rest is the database thread's (and SQLite's)
  cpu_cores                              that CPU time over wall_s (2.0 = both cores busy)
  latency_p50_s/_p99_s/_max_s            per-run latency, nearest-rank percentiles
  first_10pct_done_s (and _frac)         when 10% of the runs (any of them) had finished,
                                         measured from the start of the window (_frac: over
                                         wall_s). The FIFO target reads this one.
  first_started_10pct_done_s (and _frac) when the 10% of runs that were STARTED first had all
                                         finished (a stricter FIFO reading)
  last_10pct_s (and _frac)               the tail: from the moment 90% had finished until the
                                         last one finished
  spearman_start_vs_finish               Spearman rank correlation of start order and finish
                                         order (1.0 = strict FIFO; null for fewer than 2 runs)
  rss_idle_kib, rss_peak_kib             resident memory before any run was started (engine and
                                         client open), and the process peak (ru_maxrss)
  rss_per_slot_kib                       (peak - idle) / total slots
  busy_ratio                             mean of Engine.load()["in_flight"], sampled every
                                         --sample-interval over the window, over total slots
  ideal_steps_per_s, efficiency          sleep and fanout with S > 0: the rate if every slot
                                         were always sleeping (slots / S), and our share of it
  step_ms_first/_last, step_time_ratio   long: mean time per step over the first and the last
                                         100 steps (fewer for short runs: step_window) and
                                         last / first
  turnaround_p50/_p99/_max/_mean_ms      with --trace-steps (and for long): from the end of one
                                         step's body to the start of the next step of the same
                                         run: the engine's record-replay-claim cycle plus any
                                         wait for a free slot
  timeline                               with --timeline: per second of the window, the mean
                                         slots in flight, steps executed and runs finished
  succeeded, failed, completed           run outcomes; completed is false on --timeout
  gc_collections, gc_s                   garbage collections per generation (0, 1, 2) and the
                                         seconds spent in them, over the window; gc_tuned says
                                         whether the daemon's settings were applied (--default-gc)
  cpu_calibration_ms                     a fixed pure-Python loop timed before and after the run
                                         (about 16 ms here on a fast CPU): on a shared VM the CPU
                                         speed varies, and a slow calibration marks a slow run

targets (this 2-core machine; reported in docs/PERFORMANCE.md, never asserted):
  noop  W=10,000 K=5: >= 10,000 steps/s with --durability normal, >= 5,000 with full
  sleep S=1, 100 shards x 50 slots, W=20,000 K=5: >= 95% of the ideal 5,000 steps/s, and
        <= 10 KiB of RSS per slot above the idle baseline
  FIFO  sleep at W=20,000: spearman >= 0.95 and first_10pct_done_frac <= 0.15 (no run can
        finish before K*S, so that fraction cannot go below K*S / wall_s: 0.25 of the ideal)
  long  K=1,000: step_time_ratio <= 1.2

exit status: 0 when every run succeeded, 1 when one failed, the engine crashed or --timeout
passed (the JSON is printed all the same), 2 on bad arguments.
"""

# --- command line --------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _compress_min(text: str) -> int:
    if text == "off":
        return -1
    return _non_negative_int(text)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _defaults_text(workloads: Sequence[Workload], key: str) -> str:
    return "; ".join(f"{w.name} {w.defaults[key]:,}" for w in workloads if key in w.defaults)


def build_parser(workloads: Sequence[Workload], prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark the executor engine in-process on a fresh SQLite file and print"
        " one JSON object.",
        epilog=_workloads_help(workloads) + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workload",
        choices=[w.name for w in workloads],
        default="noop",
        help="what to run (default: noop; see below)",
    )
    parser.add_argument(
        "-W",
        dest="workflows",
        type=_positive_int,
        default=None,
        help=f"workflows to start (default: {_defaults_text(workloads, 'workflows')})",
    )
    parser.add_argument(
        "-K",
        dest="steps",
        type=_positive_int,
        default=None,
        help="sequential steps per workflow (default: "
        f"{_defaults_text(workloads, 'steps')}; fanout does not use it)",
    )
    parser.add_argument(
        "-S",
        dest="sleep_s",
        type=_non_negative_float,
        default=None,
        help="seconds each sleep step awaits (default: sleep 1.0; fanout 0, "
        "i.e. its branches return at once)",
    )
    parser.add_argument(
        "-F",
        dest="fanout",
        type=_positive_int,
        default=None,
        help="parallel branches per fanout workflow (default: 10)",
    )
    parser.add_argument(
        "--shards",
        type=_positive_int,
        default=None,
        help=f"engine shards (default: sleep 100, others {_ENGINE.shards})",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=None,
        help=f"slots per shard (default: sleep 50, others {_ENGINE.concurrency})",
    )
    parser.add_argument(
        "--durability",
        choices=("normal", "full"),
        default=None,
        help="SQLite synchronous=NORMAL or FULL (default: normal; ceiling runs"
        " both unless this is given)",
    )
    parser.add_argument(
        "--result-bytes",
        dest="result_bytes",
        type=_non_negative_int,
        default=None,
        help="noop, long, llm and floor: each step returns text of about this many bytes,"
        " different for every step and compressible like prose (default: llm 2,500, others 0,"
        " a small int); the report adds file_bytes, the database with its WAL and payload files",
    )
    parser.add_argument(
        "--arg-bytes",
        dest="arg_bytes",
        type=_non_negative_int,
        default=None,
        help="llm and floor: each step is called with a prompt of about this many bytes,"
        " different for every step (default: llm 2,500, others 0)",
    )
    parser.add_argument(
        "--sleep-max",
        dest="sleep_max_s",
        type=_non_negative_float,
        default=None,
        help="llm and floor: each step sleeps between S and this many seconds (spread evenly,"
        " the same for the same run and step in every program); 0 or less than S: exactly S"
        " (default: llm 0.8, others 0)",
    )
    parser.add_argument(
        "--page-size",
        dest="page_size",
        type=int,
        default=None,
        help="SQLite page size of the new database file (database.page_size; default: its"
        f" default, {config.DatabaseConfig().page_size})",
    )
    parser.add_argument(
        "--compress-min",
        dest="compress_min",
        type=_compress_min,
        default=None,
        help="zlib on stored payloads from this many bytes, or off"
        " (database.payload_compress_min_bytes and payload_compression; default: theirs)",
    )
    parser.add_argument(
        "--vs-floor",
        dest="vs_floor",
        action="store_true",
        help="sleep and llm: afterwards run the floor workload with the same shape in a"
        " subprocess and add its report (floor) and ours over it (over_floor)",
    )
    parser.add_argument(
        "--instance-cache",
        dest="instance_cache",
        type=_non_negative_int,
        default=None,
        help="live workflow instances kept in memory; 0 replays every run from"
        f" its journal at every step (default: {_ENGINE.instance_cache_size:,})",
    )
    parser.add_argument(
        "--poll-interval",
        dest="poll_interval",
        type=_positive_float,
        default=None,
        help=f"engine poll interval, seconds (default: {_ENGINE.poll_interval_s})",
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=START_BATCH,
        help=f"runs per Client.start_many transaction (default: {START_BATCH:,})",
    )
    parser.add_argument(
        "--prefill",
        action="store_true",
        help="start every run before the engine starts, and time the drain on"
        " its own (default: start while the engine runs)",
    )
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop (default: uvloop)",
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=None,
        help="database file to create; it must not exist (default: a file in a"
        " new temporary folder, removed afterwards). ceiling adds"
        " .normal/.full to it",
    )
    parser.add_argument(
        "--database",
        metavar="URL",
        default=None,
        help="run on PostgreSQL at this postgresql:// URL instead of a SQLite file: an empty"
        " database (it is migrated); the report adds the server's CPU when it runs here",
    )
    parser.add_argument(
        "--ceiling-batch",
        dest="ceiling_batch",
        type=_positive_int,
        default=CEILING_BATCH,
        help=f"ceiling: steps per transaction (default: {CEILING_BATCH})",
    )
    parser.add_argument(
        "--sample-interval",
        dest="sample_interval",
        type=_positive_float,
        default=SAMPLE_INTERVAL_S,
        help=f"seconds between busy-slot samples (default: {SAMPLE_INTERVAL_S})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=TIMEOUT_S,
        help=f"give up waiting for the runs after this many seconds (default: {TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="add a per-second timeline (slots in flight, steps, finishes) to the output",
    )
    parser.add_argument(
        "--trace-steps",
        dest="trace_steps",
        action="store_true",
        help="record when every step starts and ends (16 bytes per step, which shows in the"
        " memory figures) and report the turnaround: from one step's end to the start of the"
        " next step of the same run (always on for long; not for fanout)",
    )
    parser.add_argument(
        "--no-metrics",
        dest="no_metrics",
        action="store_true",
        help="turn the engine's metrics and samples off ([metrics] samples = false), to"
        " measure what they cost",
    )
    parser.add_argument(
        "--default-gc",
        dest="default_gc",
        action="store_true",
        help="keep CPython's garbage-collector settings instead of applying what the daemon"
        " applies once its engine has started (executor/gcsettings.py), to measure them",
    )
    parser.add_argument(
        "--json-indent",
        dest="json_indent",
        type=_non_negative_int,
        default=None,
        help="indent the JSON output (default: one line)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="profile the run's main thread with pyinstrument (if installed) and"
        " write the report there: HTML if the name ends in .html, else text"
        " (default: no profiling)",
    )
    for w in workloads:
        if w.add_arguments is not None:
            w.add_arguments(parser.add_argument_group(f"{w.name} workload"))
    return parser


@dataclass(frozen=True, slots=True)
class Options:
    workload: str
    workflows: int
    steps: int
    sleep_s: float
    fanout: int
    shards: int
    concurrency: int
    durability: config.Durability | None
    instance_cache: int
    poll_interval: float
    batch: int
    prefill: bool
    loop: str
    db: Path | None
    ceiling_batch: int
    sample_interval: float
    timeout: float
    timeline: bool
    trace_steps: bool
    result_bytes: int = 0
    arg_bytes: int = 0
    sleep_max_s: float = 0.0
    vs_floor: bool = False
    metrics: bool = True  # the engine's telemetry and sample row per heartbeat ([metrics])
    tune_gc: bool = True  # gcsettings.tune() once the engine has started, as the daemon does
    database: str | None = None  # a PostgreSQL URL: run there instead of on a SQLite file
    page_size: int | None = None  # database.page_size; None: the default
    compress_min: int | None = None  # database.payload_compress_min_bytes; -1: off

    def database_config(self, path: Path) -> config.DatabaseConfig:
        """The [database] settings of the run: its file (or URL) and the options above."""
        cfg = config.DatabaseConfig(
            path=path, url=self.database or "", durability=self.durability or "normal"
        )
        if self.page_size is not None:
            cfg = dataclasses.replace(cfg, page_size=self.page_size)
        if self.compress_min is not None:
            off = self.compress_min < 0
            cfg = dataclasses.replace(
                cfg,
                payload_compression=not off,
                payload_compress_min_bytes=max(0, self.compress_min),
            )
        return cfg

    @property
    def steps_per_workflow(self) -> int:
        return self.fanout + 1 if self.workload == "fanout" else self.steps

    def sleep_of(self, index: int, i: int) -> float:
        """Seconds step i of run `index` sleeps: S, or spread evenly over [S, --sleep-max]."""
        if self.sleep_max_s <= self.sleep_s:
            return self.sleep_s
        spread = ((index * 1_000_003 + i) * 2_654_435_761 % 1000) / 999
        return self.sleep_s + (self.sleep_max_s - self.sleep_s) * spread

    @property
    def mean_sleep_s(self) -> float:
        return max(self.sleep_s, (self.sleep_s + self.sleep_max_s) / 2)

    @property
    def slots(self) -> int:
        return self.shards * self.concurrency

    def params(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__slots__}
        out["db"] = None if self.db is None else str(self.db)
        if self.database is not None:
            from executor.configvalues import redact_url

            out["database"] = redact_url(self.database)
        return out


def resolve(ns: argparse.Namespace, workloads: Sequence[Workload]) -> Options:
    """Fill the options left unset with the workload's defaults."""
    chosen = next(w for w in workloads if w.name == ns.workload)
    per = {**_COMMON_DEFAULTS, **chosen.defaults}

    def pick(name: str) -> Any:
        value = getattr(ns, name)
        return per[name] if value is None else value

    return Options(
        workload=ns.workload,
        workflows=pick("workflows"),
        steps=pick("steps"),
        sleep_s=pick("sleep_s"),
        fanout=pick("fanout"),
        shards=pick("shards"),
        concurrency=pick("concurrency"),
        durability=ns.durability,
        instance_cache=pick("instance_cache"),
        poll_interval=pick("poll_interval"),
        batch=ns.batch,
        prefill=ns.prefill,
        loop=ns.loop,
        db=ns.db,
        database=ns.database,
        ceiling_batch=ns.ceiling_batch,
        sample_interval=ns.sample_interval,
        timeout=ns.timeout,
        timeline=ns.timeline,
        trace_steps=ns.trace_steps,
        result_bytes=pick("result_bytes"),
        arg_bytes=pick("arg_bytes"),
        sleep_max_s=pick("sleep_max_s"),
        vs_floor=ns.vs_floor,
        metrics=not ns.no_metrics,
        tune_gc=not ns.default_gc,
        page_size=ns.page_size,
        compress_min=ns.compress_min,
    )
