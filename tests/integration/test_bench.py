"""Smoke test of the benchmark harness (benchmarks/, run by scripts/bench.py): every workload at
a tiny size, output checked for sanity.

No timing is asserted: speed is reported (docs/PERFORMANCE.md), never tested.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import main as bench
from benchmarks.workloads import WORKLOADS
from tests.support import REPO

# Small and quick: a short poll so tiny runs do not wait on it, few shards and slots.
FAST = [
    "--poll-interval",
    "0.02",
    "--shards",
    "2",
    "--concurrency",
    "8",
    "--sample-interval",
    "0.01",
]


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code = bench.main(list(argv))
    out = capsys.readouterr().out
    report: dict[str, Any] = json.loads(out)
    assert code == 0, report
    return report


def check_engine_report(report: dict[str, Any], workflows: int, steps_per_workflow: int) -> None:
    assert report["completed"] is True
    assert report["engine_crashed"] is None
    assert report["workflows"] == workflows
    assert report["succeeded"] == workflows
    assert report["failed"] == 0
    assert report["steps_per_workflow"] == steps_per_workflow
    assert report["steps"] == workflows * steps_per_workflow
    assert report["engine_load"]["steps"] == report["steps"]
    assert report["engine_load"]["finished"] == workflows
    assert report["wall_s"] > 0
    assert report["steps_per_s"] > 0
    assert report["start_s"] >= 0
    assert report["cpu_s_per_1000_steps"] >= 0
    assert 0 < report["latency_p50_s"] <= report["latency_p99_s"] <= report["latency_max_s"]
    assert report["latency_max_s"] <= report["wall_s"] + 1e-3
    assert 0 <= report["busy_ratio"] <= 1
    assert 0 <= report["in_flight_max"] <= report["slots"]
    for name in ("first_10pct_done_frac", "first_started_10pct_done_frac", "last_10pct_frac"):
        assert 0 <= report[name] <= 1, name
    assert report["first_10pct_done_s"] <= report["first_started_10pct_done_s"]
    if workflows > 1:
        assert -1 <= report["spearman_start_vs_finish"] <= 1
    assert report["rss_idle_kib"] > 0
    assert report["rss_peak_kib"] > 0
    assert report["machine"]["sqlite"]
    assert len(report["cpu_calibration_ms"]) == 2
    assert all(ms > 0 for ms in report["cpu_calibration_ms"])


def test_noop(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_main(capsys, "--workload", "noop", "-W", "20", "-K", "3", *FAST)
    check_engine_report(report, 20, 3)
    assert report["start_overlaps_execution"] is True


def test_start(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_main(capsys, "--workload", "start", "-W", "50", "--batch", "20")
    assert report["workflows"] == 50 and report["start_runs_per_s"] > 0
    assert report["rss_idle_kib"] > 0 and report["rss_peak_kib"] > 0
    assert report["file_bytes"] > 0


def test_noop_with_the_default_gc_reports_collections(capsys: pytest.CaptureFixture[str]) -> None:
    import gc

    before = gc.get_threshold()
    report = run_main(capsys, "--workload", "noop", "-W", "5", "-K", "2", *FAST)
    assert report["gc_tuned"] is True and gc.get_threshold() == before  # put back
    assert len(report["gc_collections"]) == len(report["gc_s"]) == 3
    report = run_main(capsys, "--workload", "noop", "-W", "5", "-K", "2", "--default-gc", *FAST)
    assert report["gc_tuned"] is False and gc.get_threshold() == before


def test_noop_prefill_full_durability_asyncio_no_instance_cache(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "bench.sqlite"
    report = run_main(
        capsys,
        "-W",
        "20",
        "-K",
        "3",
        "--prefill",
        "--durability",
        "full",
        "--loop",
        "asyncio",
        "--instance-cache",
        "0",
        "--batch",
        "7",
        "--db",
        str(db),
        *FAST,
    )
    check_engine_report(report, 20, 3)
    assert report["start_overlaps_execution"] is False
    assert report["drain_s"] == report["wall_s"]
    assert report["durability"] == "full"
    # Without live instances, every replay rebuilds the run from its journal.
    assert report["engine_load"]["full_replays"] == report["engine_load"]["replays"]
    assert db.exists()


def test_sleep(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_main(
        capsys,
        "--workload",
        "sleep",
        "-W",
        "20",
        "-K",
        "3",
        "-S",
        "0.01",
        "--timeline",
        "--trace-steps",
        *FAST,
    )
    check_engine_report(report, 20, 3)
    timeline = report["timeline"]
    assert sum(second["finished"] for second in timeline) == 20
    assert sum(second["steps"] for second in timeline) <= 60
    assert 0 <= report["turnaround_p50_ms"] <= report["turnaround_p99_ms"]
    assert report["turnaround_p99_ms"] <= report["turnaround_max_ms"]
    assert report["ideal_steps_per_s"] == pytest.approx(16 / 0.01)
    assert report["efficiency"] > 0


def test_fanout(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_main(capsys, "--workload", "fanout", "-W", "10", "-F", "4", *FAST)
    check_engine_report(report, 10, 5)


def test_long(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_main(capsys, "--workload", "long", "-K", "50", *FAST)
    check_engine_report(report, 1, 50)
    assert report["spearman_start_vs_finish"] is None
    assert report["step_window"] == 24  # 49 gaps between 50 steps: half of them, rounded down
    assert report["step_ms_first"] > 0
    assert report["step_ms_last"] > 0
    assert report["step_time_ratio"] > 0
    assert report["turnaround_p50_ms"] >= 0


def test_ceiling_via_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--workload",
            "ceiling",
            "-W",
            "30",
            "-K",
            "3",
            "--shards",
            "2",
            "--ceiling-batch",
            "16",
            "--json-indent",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["completed"] is True
    assert set(report["results"]) == {"normal", "full"}
    for row in report["results"].values():
        assert row["steps"] == 90
        assert row["runs_by_status"] == {"succeeded": 30}
        assert row["step_equivalents_per_s"] > 0
        assert row["transactions"] >= 3 * 90 // 16
        assert all(us >= 0 for us in row["us_per_step"].values())


def test_noop_with_large_results(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_main(
        capsys, "--workload", "noop", "-W", "10", "-K", "2", "--result-bytes", "5000", *FAST
    )
    check_engine_report(report, 10, 2)
    assert report["file_bytes"] > 0


def test_floor(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_main(capsys, "--workload", "floor", "-W", "40", "-K", "2", "-S", "0.01", *FAST[2:])
    assert report["completed"] is True and report["steps"] == 80
    assert report["efficiency"] > 0 and 0 <= report["busy_ratio"] <= 1
    assert 0 <= report["busy_while_queued"] <= 1  # 40 runs on 16 slots: work waited
    assert report["cpu_s_per_1000_steps"] >= 0


def test_llm_against_its_floor(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_main(
        capsys,
        *("--workload", "llm", "-W", "30", "-K", "2", "-S", "0.01", "--sleep-max", "0.03"),
        *("--arg-bytes", "2000", "--result-bytes", "3000", "--vs-floor"),
        *FAST,
    )
    check_engine_report(report, 30, 2)
    assert report["params"]["arg_bytes"] == 2000 and report["file_bytes"] > 30 * 2 * 3000 / 3
    assert report["floor"]["completed"] is True and report["floor"]["steps"] == 60
    assert report["floor"]["params"]["result_bytes"] == 3000
    assert report["over_floor"]["wall"] > 0 and report["over_floor"]["cpu_per_step"] > 0


def test_prompt(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_main(capsys, "--workload", "prompt", "-W", "300", "--prompt-bytes", "20000")
    assert report["runs"] == 300 and report["prompt_bytes"] == 20000
    # One stored copy of the prompt, not 300: far less than 300 x 20,000 bytes (an empty file
    # is ~0.3 MB with 8 KiB pages: a page per table and index).
    assert 0 < report["file_bytes"] < 300 * 20000 / 3


def test_quota(capsys: pytest.CaptureFixture[str]) -> None:
    # Two rows, a second of backlog each: a per-second quota and the paced per-minute one.
    report = run_main(capsys, "--workload", "quota", "--rows", "rps200,rpm6000", "--seconds", "1")
    assert [r["row"] for r in report["rows"]] == ["rps200", "rpm6000"]
    for row in report["rows"]:
        assert row["succeeded"] == row["calls"] > 0
        assert row["achieved_pct"] > 0 and row["over_quota"] >= 0
    assert report["rows"][1]["most_in_any_window"]["1:100"]["requests"] <= 100


def test_quota_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_main(capsys, "--workload", "quota-cpu", "-W", "200", "-S", "0.01", "--repeat", "1")
    assert [r["limit"] for r in report["runs"]] == [False, True]
    assert report["never_bound"] is True
    assert report["cpu_us_per_step_no_limit"] > 0 and report["cpu_us_per_step_limit"] > 0
    assert report["limiter_us_per_step"] > 0 and report["limiter_share"] > 0


def test_the_retry_and_purge_workloads(capsys: pytest.CaptureFixture[str]) -> None:
    retry = run_main(capsys, "--workload", "retry", "-W", "300", "--new-runs", "100", *FAST)
    assert retry["completed"] is True and retry["action_runs"] == 300
    assert retry["action_runs_per_s"] > 0 and retry["engine_steps_per_s_alone"] > 0
    assert retry["engine_ratio_during_action"] >= 0
    purge = run_main(capsys, "--workload", "purge", "-W", "1000", "--shards", "2")
    assert purge["completed"] is True and purge["purged"] == 900 and purge["left"] == 100
    assert purge["file_bytes_after"] < purge["file_bytes_before"]


def test_signals(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_main(
        capsys, "--workload", "signals", "-W", "20", "-K", "5", "--rounds", "2", *FAST
    )
    assert report["signals"] == 40 and report["signals_per_s"] > 0
    assert report["caught_up"] + report["full_replays"] > 0


def test_every_workload_has_a_smoke_test_here() -> None:
    tested = {
        "noop",
        "sleep",
        "fanout",
        "long",
        "llm",
        "floor",
        "ceiling",
        "prompt",
        "quota",
        "quota-cpu",
        "retry",
        "purge",
        "signals",
        "start",
    }
    assert {w.name for w in WORKLOADS} == tested, "add a small run of the new workload here"


def test_help_documents_defaults_and_targets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in (
        "--prefill",
        "OVERLAPS",
        "first_10pct_done_frac",
        "targets",
        "10,000",
        "SQLite itself",
        "--instance-cache",
    ):
        assert needle in text


def test_existing_db_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    db.write_bytes(b"")
    assert bench.main(["-W", "1", "-K", "1", "--db", str(db)]) == 1
    assert "fresh" in capsys.readouterr().err


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["-W", "0"])
    assert exit_info.value.code == 2


def test_profile_writes_a_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("pyinstrument")
    out = tmp_path / "profile.txt"
    run_main(capsys, "-W", "5", "-K", "2", "--profile", str(out), *FAST)
    assert out.read_text().strip()


def test_noop_in_two_daemon_processes_on_postgres(
    capsys: pytest.CaptureFixture[str], pg_empty_url: str
) -> None:
    report = run_main(
        capsys,
        *("-W", "40", "-K", "3", "--daemons", "2", "--database", pg_empty_url, *FAST),
    )
    assert report["completed"] is True and report["engine_crashed"] is None
    assert report["daemons"] == 2 and report["succeeded"] == 40 and report["steps"] == 120
    assert report["steps_per_s"] > 0 and report["wall_s"] > 0
    assert len(report["daemon_cpu_s"]) == 2 and all(c > 0 for c in report["daemon_cpu_s"])
    assert report["daemon_exit_codes"] == [0, 0]
    assert report["server_cpu_us_per_step"] is None or report["server_cpu_us_per_step"] > 0


def test_daemons_are_refused_on_sqlite(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["-W", "1", "-K", "1", "--daemons", "2"]) == 1
    assert "--daemons needs --database postgresql://" in capsys.readouterr().err
