"""`executor replay-check`: would the code deployed now replay the runs in flight?

It opens the database read-only, rebuilds each selected run's workflow from its journal with the
code the configuration names (the same full replay the engine does: engine/replayer.replay_run),
and reports every run that would be parked: the position, what the journal holds there and what
the code asks for. Nothing is written and no step runs. Patches (`ctx.patched`) take the branch
each run recorded, so a patched change passes.

Under `engine.replay_args = "log"` a recorded step called with other arguments (an edited prompt)
does not park its run; such runs are listed apart ("arguments changed"), and count as divergent
only with --strict.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from executor import config, errors, registry
from executor.engine.cache import HydrationCache
from executor.engine.replayer import replay_run
from executor.store import repository
from executor.store.conn import Conn
from executor.store.reader import database_config, reading
from executor.vocabulary import ReplayArgs, RunState

DEFAULT_STATUSES = (RunState.RUNNING, RunState.PARKED)
_BATCH = 500


@dataclass(frozen=True, slots=True)
class Divergence:
    """A run the code would not replay as recorded."""

    run_id: str
    workflow: str
    status: str  # the run's status now
    position: int | None  # None: the run cannot be rebuilt at all (unknown workflow, ...)
    journal: str  # what the journal holds there
    code: str  # what the code asks for

    def describe(self) -> str:
        if self.position is None:
            return f"run {self.run_id} ({self.workflow}, {self.status}): {self.code}"
        return (
            f"run {self.run_id} ({self.workflow}, {self.status}): at position {self.position}"
            f" the journal holds {self.journal}, the code asks for {self.code}"
        )


@dataclass(frozen=True, slots=True)
class ArgsChanged:
    """A recorded step the code now calls with other arguments (kept under replay_args=log)."""

    run_id: str
    workflow: str
    position: int
    step: str
    journal_fingerprint: str
    code_fingerprint: str


@dataclass(slots=True)
class Report:
    path: Path | str  # the file, or the PostgreSQL URL without its password
    statuses: tuple[str, ...]
    strict: bool
    checked: int = 0
    elapsed_s: float = 0.0
    divergences: list[Divergence] = field(default_factory=list)
    args_changed: list[ArgsChanged] = field(default_factory=list)
    by_workflow: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.divergences

    @property
    def rate(self) -> float:
        """Runs rebuilt per second."""
        return self.checked / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "statuses": list(self.statuses),
            "strict": self.strict,
            "checked": self.checked,
            "runs_by_workflow": dict(sorted(self.by_workflow.items())),
            "elapsed_s": round(self.elapsed_s, 3),
            "runs_per_s": round(self.rate, 1),
            "divergences": [
                {
                    "run_id": d.run_id,
                    "workflow": d.workflow,
                    "status": d.status,
                    "position": d.position,
                    "journal": d.journal,
                    "code": d.code,
                }
                for d in self.divergences
            ],
            "args_changed": [
                {
                    "run_id": a.run_id,
                    "workflow": a.workflow,
                    "position": a.position,
                    "step": a.step,
                    "journal_fingerprint": a.journal_fingerprint,
                    "code_fingerprint": a.code_fingerprint,
                }
                for a in self.args_changed
            ],
        }

    def summary(self, per_kind: int = 20) -> str:
        runs = len({a.run_id for a in self.args_changed})
        head = (
            f"{self.path}: {self.checked} runs ({', '.join(self.statuses)}) replayed in"
            f" {self.elapsed_s:.2f}s ({self.rate:,.0f} runs/s): "
        )
        head += "ok" if self.ok else f"{len(self.divergences)} would be parked"
        if self.args_changed:
            head += f"; {runs} with changed step arguments"
            head += " (parked under --strict)" if self.strict else " (their recorded results stand)"
        lines = [head]
        lines += [f"  diverges: {d.describe()}" for d in self.divergences[:per_kind]]
        if len(self.divergences) > per_kind:
            lines.append(f"  ... and {len(self.divergences) - per_kind} more (use --json)")
        seen: set[tuple[str, str, int]] = set()
        for a in self.args_changed:
            key = (a.workflow, a.step, a.position)
            if key in seen:
                continue
            seen.add(key)
            if len(seen) > per_kind:
                lines.append("  ... (use --json for every run)")
                break
            count = sum(1 for b in self.args_changed if (b.workflow, b.step, b.position) == key)
            lines.append(
                f"  arguments changed: {a.workflow}: step {a.step} at position {a.position}"
                f" in {count} runs (e.g. run {a.run_id}: recorded {a.journal_fingerprint},"
                f" now {a.code_fingerprint})"
            )
        return "\n".join(lines)


def replay_check(
    database: config.DatabaseConfig | Path | str,
    reg: registry.Registry | None = None,
    *,
    statuses: Sequence[str] = DEFAULT_STATUSES,
    workflows: Sequence[str] | None = None,
    limit: int | None = None,
    strict: bool = False,
    payload_limit: int = config.EngineConfig().payload_limit_bytes,
) -> Report:
    """Rebuild the selected runs with the workflows of `reg` (default: the default registry)
    and report which would be parked. Never writes the file."""
    reg = registry.default_registry if reg is None else reg
    for status in statuses:
        if status not in set(RunState):
            raise errors.ExecutorError(f"unknown status {status!r}; one of {', '.join(RunState)}")
    cfg = database_config(database, 10.0)
    report = Report(cfg.where if cfg.url else cfg.path, tuple(statuses), strict)
    policy = ReplayArgs.STRICT if strict else ReplayArgs.LOG
    hydration = HydrationCache(10_000, 65536)
    started = time.perf_counter()
    with reading(cfg, "replay-check") as conn:
        for batch in _batches(conn, statuses, workflows, limit):
            snapshots = repository.load_runs(conn, batch)
            for rid in batch:
                snap = snapshots.get(rid)
                if snap is not None:
                    _check_one(snap, reg, hydration, payload_limit, policy, report)
    report.elapsed_s = time.perf_counter() - started
    return report


def _batches(
    conn: Conn,
    statuses: Sequence[str],
    workflows: Sequence[str] | None,
    limit: int | None,
) -> Iterable[list[int]]:
    after = 0
    left = limit
    params: dict[str, Any] = {
        "statuses": orjson.dumps(list(statuses)).decode(),
        "workflows": None if workflows is None else orjson.dumps(list(workflows)).decode(),
    }
    while left is None or left > 0:
        n = _BATCH if left is None else min(_BATCH, left)
        rids = [
            r
            for (r,) in conn.execute(
                conn.q["replay_check_runs"], {**params, "after": after, "limit": n}
            )
        ]
        if not rids:
            return
        yield rids
        after = rids[-1]
        if left is not None:
            left -= len(rids)


def _check_one(
    snap: Any,
    reg: registry.Registry,
    hydration: HydrationCache,
    payload_limit: int,
    policy: ReplayArgs,
    report: Report,
) -> None:
    report.checked += 1
    report.by_workflow[snap.workflow] += 1
    try:
        inst = replay_run(snap, reg, hydration, payload_limit, policy)
    except errors.ExecutorError as exc:
        report.divergences.append(
            Divergence(snap.id, snap.workflow, snap.status, None, "", f"cannot be rebuilt: {exc}")
        )
        return
    try:
        nd = inst.nondeterminism
        if nd is not None:
            report.divergences.append(
                Divergence(snap.id, snap.workflow, snap.status, nd.position, nd.journal, nd.code)
            )
        else:
            # Fed every recorded result, the code has asked for everything the old code had
            # asked for by then. A journal entry past that is a step the new code would not
            # take: the engine would park the run at its next result; report it now.
            extra = [p for p in inst.journal if p >= inst.next_pos]
            if extra:
                e = inst.journal[min(extra)]
                report.divergences.append(
                    Divergence(
                        snap.id,
                        snap.workflow,
                        snap.status,
                        e.pos,
                        f"{e.kind} {e.name}",
                        "nothing there (with the results recorded, the code stops before it)",
                    )
                )
        for pos, step, journal_fp, code_fp in inst.args_changed:
            report.args_changed.append(
                ArgsChanged(snap.id, snap.workflow, pos, step, journal_fp, code_fp)
            )
    finally:
        with contextlib.suppress(Exception):
            inst.close()
