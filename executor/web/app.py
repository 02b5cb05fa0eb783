"""The dashboard's pages and /metrics, served by the standard library's threading HTTP server.

Why the standard library: the pages are a few read-only GETs on loopback for one operator, so an
async framework and its server would add two dependencies for nothing; prometheus_client's own
endpoint is the same server. Jinja2 renders the pages (autoescaping every value, template
inheritance); every asset ships in this package, so it works with no internet.

Each request opens the database read-only (store/reader.py: the SQLite file, or a read-only
PostgreSQL session): the dashboard never writes, needs no daemon, and keeps working while one
restarts.
"""

from __future__ import annotations

import datetime as dt
import http.server
import logging
import re
import shlex
import time
import urllib.parse
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from executor import config, errors
from executor.exporter import registry_for
from executor.runfilter import FilterError, RunFilter
from executor.store import actions, history, overview, queues, samples
from executor.store.conn import Conn
from executor.store.history import error_line
from executor.store.reader import database_config, reading
from executor.timetext import duration, relative, wait_span, when
from executor.vocabulary import RunState
from executor.web import charts

log = logging.getLogger("executor.web")

RUN_STATUSES = [s.value for s in RunState]
FAILURE_WINDOWS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}
PAGE_SIZE = 100
_RUN_PATH = re.compile(r"^/runs/([^/]+)$")

Page = tuple[int, str, bytes]  # status, content type, body
Query = dict[str, list[str]]  # every value of each query-string key


def _one(query: Query, key: str) -> str | None:
    """The last non-empty value of `key`, or None."""
    values = [v for v in query.get(key, ()) if v]
    return values[-1] if values else None


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("executor.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(when=when, took=duration, error_line=error_line)
    return env


def retry_command(group: overview.FailureGroup, since: float) -> str:
    """The exact command that re-drives the group's runs, as a dry run first."""
    parts = ["executor", "runs", "retry", "--workflow", shlex.quote(group.workflow)]
    parts += ["--status", group.status]
    if group.step is not None:
        parts += ["--step", shlex.quote(group.step)]
    if group.error_type is not None:
        parts += ["--error", shlex.quote(group.error_type)]
    parts += ["--since", iso(since), "--dry-run"]
    return " ".join(parts)


def _limits_table(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    per: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        for entry in snap.get("limits") or ():
            name = entry.get("limit")
            if not name or entry.get("idle"):
                continue
            agg = per.setdefault(
                name,
                {
                    "limit": name,
                    "factor": 1.0,
                    "in_flight": 0,
                    "waiting": 0,
                    "parked": 0,
                    "rate_limited": 0,
                    "admitted": 0,
                },
            )
            agg["factor"] = min(agg["factor"], float(entry.get("factor", 1.0)))
            for key in ("in_flight", "waiting", "parked", "rate_limited", "admitted"):
                agg[key] += entry.get(key, 0)
    return [per[name] for name in sorted(per)]


class Dashboard:
    """Renders each page from one read-only connection to the database."""

    def __init__(self, database: config.DatabaseConfig | Path, busy_timeout_s: float = 5.0) -> None:
        self.database = database_config(database, busy_timeout_s)
        self.path = self.database.where  # what the pages call it
        self.env = _environment()
        self.metrics = registry_for(self.database)

    def handle(self, target: str) -> Page:
        url = urllib.parse.urlsplit(target)
        # Every value of each key: the runs page reads repeated ones (status, label).
        query = urllib.parse.parse_qs(url.query)
        route = url.path.rstrip("/") or "/"
        if route == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics)
        if route.startswith("/static/"):
            return self._static(route.removeprefix("/static/"))
        pages: Mapping[str, Callable[[Conn, Query, float], Page]] = {
            "/": self._overview,
            "/failures": self._failures,
            "/runs": self._runs,
        }
        found = _RUN_PATH.match(route)
        if route not in pages and found is None:
            return self._page(404, "error.html", message=f"no page at {url.path}")
        try:
            with reading(self.database, f"page {route}") as conn:
                now = time.time()
                if found is not None:
                    return self._run(conn, urllib.parse.unquote(found.group(1)), now)
                return pages[route](conn, query, now)
        except errors.StoreError as exc:
            return self._page(503, "error.html", message=str(exc))

    def _page(self, code: int, template: str, **values: Any) -> Page:
        values.setdefault("page", "")
        html = self.env.get_template(template).render(path=str(self.path), **values)
        return code, "text/html; charset=utf-8", html.encode()

    def _static(self, name: str) -> Page:
        if not re.fullmatch(r"[a-z0-9_-]+\.(css|svg|png)", name):
            return self._page(404, "error.html", message="no such asset")
        entry = resources.files("executor.web").joinpath("static", name)
        if not entry.is_file():
            return self._page(404, "error.html", message="no such asset")
        kind = {"css": "text/css", "svg": "image/svg+xml", "png": "image/png"}[name.rsplit(".")[1]]
        return 200, kind, entry.read_bytes()

    def _overview(self, conn: Conn, query: Query, now: float) -> Page:
        stats = queues.stats(conn, now)
        p = charts.plots(samples.read(conn, now - charts.LOOKBACK_S), now)
        plots = [
            charts.chart("Steps finished per second", {"steps/s": p.steps_per_s}),
            charts.chart(
                "Runs finished and failed attempts per minute",
                {"runs finished": p.runs_per_min, "failed attempts": p.failures_per_min},
            ),
            charts.chart("Queued tasks", {"queued": p.queued}),
            charts.chart("Oldest queued task age", {"oldest": p.oldest_s}, unit="s"),
            charts.chart("Slots in use", {"in flight": p.in_flight, "slots": p.slots}),
            charts.chart("Limits: saturation (0-1) ", p.saturation or {"none": []}, ymax=1.0),
            charts.chart("429s per minute", {"429s": p.rate_limited_per_min}),
        ]
        titles = [
            "Steps/s",
            "Runs/min",
            "Queued",
            "Oldest queued",
            "Slots in use",
            "Limits saturation",
            "429s/min",
        ]
        owners = stats.get("owners") or {}
        engines = [
            dict(
                e,
                age=relative(e["heartbeat_at"], now),
                owns=", ".join(
                    str(s) for s, o in sorted(owners.items()) if o and o["engine"] == e["id"]
                )
                or "-",
            )
            for e in stats["engines"]
        ]
        return self._page(
            200,
            "overview.html",
            page="overview",
            now=when(now),
            stats=stats,
            runs={s: stats["runs"].get(s, 0) for s in RUN_STATUSES},
            plots=list(zip(titles, plots, strict=True)),
            current={
                "steps/s": charts.latest(p.steps_per_s),
                "queued": charts.latest(p.queued),
                "in flight": charts.latest(p.in_flight),
            },
            engines=engines,
            limits=_limits_table(stats.get("limits") or []),
            saturation_names=sorted(p.saturation),
        )

    def _failures(self, conn: Conn, query: Query, now: float) -> Page:
        window = _one(query, "since") or "24h"
        window = window if window in FAILURE_WINDOWS else "24h"
        since = now - FAILURE_WINDOWS[window]
        groups = overview.failure_groups(conn, since)
        rows = [
            {
                "group": g,
                "command": retry_command(g, since),
                "runs_url": "/runs?"
                + urllib.parse.urlencode({"status": g.status, "workflow": g.workflow}),
                "first": relative(g.first_at, now),
                "last": relative(g.last_at, now),
            }
            for g in groups
        ]
        return self._page(
            200,
            "failures.html",
            page="failures",
            rows=rows,
            window=window,
            windows=list(FAILURE_WINDOWS),
            total=sum(g.runs for g in groups),
        )

    def _runs(self, conn: Conn, query: Query, now: float) -> Page:
        """Runs by RunFilter, with the query-string names of `executor runs list`'s options."""
        multi = {k: [v for v in vs if v] for k, vs in query.items()}
        given = {k: _one(query, k) for k in ("workflow", "since", "until", "error", "step")}
        problem = None
        where = RunFilter()
        try:
            where = RunFilter.parse(
                status=multi.get("status", []), label=multi.get("label", []), now=now, **given
            )
        except FilterError as exc:
            problem = exc.message  # shown above an empty list
        before = _one(query, "before")
        before_rid = int(before) if before and before.isdigit() else None
        runs = [] if problem else actions.page_runs(conn, where, before_rid, PAGE_SIZE)
        next_url = None
        if len(runs) == PAGE_SIZE:
            kept = [(k, v) for k, vs in multi.items() if k != "before" for v in vs]
            next_url = "/runs?" + urllib.parse.urlencode([*kept, ("before", runs[-1].rid)])
        lines = [
            {
                "run": r,
                "url": "/runs/" + urllib.parse.quote(r.id, safe=""),
                "created": when(r.created_at),
                "took": duration(None if r.finished_at is None else r.finished_at - r.created_at),
                "error": _error_summary(r.error),
                "labels": _labels(r.labels),
            }
            for r in runs
        ]
        return self._page(
            200,
            "runs.html",
            page="runs",
            lines=lines,
            statuses=RUN_STATUSES,
            workflows=overview.workflow_names(conn),
            chosen=set(multi.get("status", [])),
            workflow=given["workflow"] or "",
            fields={k: _one(query, k) or "" for k in ("since", "until", "error", "step")},
            label=", ".join(multi.get("label", [])),
            labels_given=multi.get("label", []),
            described=None if problem else where.describe(),
            problem=problem,
            next_url=next_url,
        )

    def _run(self, conn: Conn, run_id: str, now: float) -> Page:
        found = history.run_history(conn, run_id, now)
        if found is None:
            return self._page(404, "error.html", message=f"no run with id {run_id!r}")
        return self._page(
            200,
            "run.html",
            page="runs",
            h=found,
            timeline=charts.timeline(found, now),
            waiting=[(w, wait_span(w.until, w.since, now)) for w in found.waiting],
            now=now,
        )


def _error_summary(blob: bytes | None) -> str:
    if blob is None:
        return ""
    try:
        error = orjson.loads(blob)
    except orjson.JSONDecodeError:
        return "(unreadable error)"
    line = error_line(error) if isinstance(error, dict) else str(error)
    return (line or "")[:120]


def _labels(stored: str | None) -> str:
    if not stored:
        return ""
    try:
        labels = orjson.loads(stored)
    except orjson.JSONDecodeError:
        return ""
    return " ".join(f"{k}={v}" for k, v in labels.items()) if isinstance(labels, dict) else ""


class _Handler(http.server.BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "executor-dashboard"

    def do_GET(self) -> None:
        try:
            status, kind, body = self.dashboard.handle(self.path)
        except Exception:
            log.exception("dashboard: %s failed", self.path)
            status, kind, body = 500, "text/plain; charset=utf-8", b"internal error; see the log\n"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        # Read-only, same-origin pages: no framing, no scripts from anywhere.
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self'")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_server(
    database: config.DatabaseConfig | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    busy_timeout_s: float = 5.0,
) -> http.server.ThreadingHTTPServer:
    """A server for the dashboard of `database` (not started: call serve_forever)."""
    handler = type("Handler", (_Handler,), {"dashboard": Dashboard(database, busy_timeout_s)})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
