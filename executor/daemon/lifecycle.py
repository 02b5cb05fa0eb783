"""The daemon: start the engine, serve until asked to stop, then shut down in one ordered sequence.

Signal handlers only record what was asked and wake the main loop, which is the one place that acts:

    SIGTERM, SIGINT  graceful drain: stop claiming, let in-flight steps finish (within
                     engine.drain_timeout_s), release the rest, flush, exit 0
    second SIGINT    exit at once with ExitCode.FORCED; safe, because everything recorded is
                     committed and unfinished claims return to the queue when their lease runs out
    SIGHUP           re-read the config; apply what can change live, log what needs a restart

The main loop also sends the systemd watchdog pings and STATUS= lines, so a wedged event loop stops
the pings and systemd restarts the process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from executor import config, errors, gcsettings, registry, vocabulary
from executor.daemon import logs, retention, startsignals
from executor.daemon.notify import Notifier
from executor.daemon.workflows import import_workflows
from executor.engine.engine import Engine, EngineCrashed
from executor.exitcodes import ExitCode

log = logging.getLogger("executor.daemon")

STATUS_INTERVAL_S = 5.0  # how often STATUS= carries the engine's load to `systemctl status`
# The engine bounds each phase of its own shutdown (drain_timeout_s for steps, write_failure_limit_s
# for the last flush, a few seconds for each task join); past those plus this margin, it is stuck.
SHUTDOWN_MARGIN_S = 30.0
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_EPOCH_REASON = vocabulary.NEWER_EPOCH


def loop_factory(kind: config.LoopKind, source: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop constructor for daemon.loop; ConfigError if uvloop is required but missing."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise errors.ConfigError(
                    f'{source}: daemon.loop: "uvloop" but uvloop is not installed'
                    ' (pip install uvloop, or set loop = "auto")'
                ) from None
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return asyncio.new_event_loop


class Daemon:
    """The long-running `executor run` process around one Engine."""

    def __init__(
        self,
        loaded: config.LoadedConfig,
        *,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        notifier: Notifier | None = None,
        takeover: bool = False,
    ) -> None:
        self.loaded = loaded
        # Start even while another live engine works on the file (it drains); else refuse.
        self.takeover = takeover
        # What is in effect: the startup config plus the live keys applied by reloads since.
        self.cfg = loaded.config
        self.config_path = config_path
        self.env = env  # None: read os.environ again at every reload
        self.notifier = notifier if notifier is not None else Notifier()
        self.engine: Engine | None = None
        self._wake: asyncio.Event | None = None
        self._signals: list[int] = []  # received and not yet acted on, in order
        self._stop_reason: str | None = None
        self._stopping_since: float | None = None  # monotonic; set once, when stopping began
        self._drain_started: float | None = None  # monotonic; when we asked the engine to drain

    # -- entry point --

    def run(self) -> int:
        """Set up logging, import the workflows, then serve on the configured loop; return the
        exit code. Startup failures raise (ConfigError, StoreError, WorkflowImportError)."""
        cfg = self.cfg
        factory = loop_factory(cfg.daemon.loop, self.loaded.sources["daemon.loop"])
        logs.setup_logging(cfg.log.level, cfg.log.format, levels=cfg.log.levels)
        files = ", ".join(str(p) for p in self.loaded.files) or "none (defaults and environment)"
        log.info("executor daemon starting (pid %d); config files: %s", os.getpid(), files)
        if self._stopped_while_starting("before importing the workflows"):
            return ExitCode.OK
        import_workflows(
            cfg.daemon.workflows, f"{self.loaded.sources['daemon.workflows']}: daemon.workflows"
        )
        _log_workflows(cfg.daemon.workflows)
        if self._stopped_while_starting("before opening the database"):
            return ExitCode.OK
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(self._serve())

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        # Installed before the engine starts, so a SIGTERM during startup still means "drain".
        for sig in _HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        # What arrived before these handlers (see startsignals); a SIGHUP then asked to re-read
        # the config this start has just read.
        self._signals += [s for s in startsignals.take() if s in startsignals.STOP_SIGNALS]
        try:
            return await self._serve_engine(type(loop).__module__.split(".")[0])
        finally:
            for sig in _HANDLED_SIGNALS:
                loop.remove_signal_handler(sig)

    def _stopped_while_starting(self, stage: str) -> bool:
        name = startsignals.stop_requested()
        if name is not None:
            log.info("received %s while starting, %s: exiting without starting", name, stage)
        return name is not None

    def _on_signal(self, signum: int) -> None:
        # Runs as a loop callback (add_signal_handler), but still: record and wake, nothing more.
        self._signals.append(signum)
        assert self._wake is not None
        self._wake.set()

    # -- serving --

    async def _serve_engine(self, loop_name: str) -> int:
        assert self._wake is not None
        cfg = self.cfg
        if self._signals:
            name = signal.Signals(self._signals[0]).name
            log.info("received %s while starting, before opening the database: exiting", name)
            return ExitCode.OK
        engine = Engine(
            cfg.engine,
            cfg.database,
            limits=cfg.limits,
            concurrency_keys=dict(cfg.concurrency_keys),
            samples=cfg.metrics.samples,
            schedules=cfg.schedules,
            takeover=self.takeover,
        )
        self.engine = engine
        await engine.start()
        gcsettings.tune()  # after the workflows' imports and the engine's start-up
        stop_metrics: Callable[[], None] = _no_metrics
        purging = asyncio.create_task(
            retention.run(lambda: self.cfg, asyncio.Event()), name="executor.daemon.retention"
        )
        purging.add_done_callback(_retention_ended)
        waiter = asyncio.create_task(engine.wait(), name="executor.daemon.engine-wait")
        waiter.add_done_callback(lambda _: self._wake.set() if self._wake else None)
        try:
            stop_metrics = _serve_metrics(cfg)
            load = engine.load()
            log.info(
                "daemon ready: pid %d, %s loop, database %s, %d slots (%d per shard)",
                os.getpid(),
                loop_name,
                cfg.database.where,
                load["slots"],
                engine.concurrency,
            )
            self.notifier.ready(self._status_text())
            await self._main_loop(waiter)
        except asyncio.CancelledError:
            # An outer cancel (e.g. the loop's owner going away) is a graceful stop, not an abort.
            self._begin_stop("the daemon task was cancelled")
            await asyncio.shield(asyncio.wait([waiter]))
            raise
        except BaseException:
            # A bug of ours, or the metrics port taken: still stop the engine, which closes the
            # database; an open connection's thread would keep the process from ever exiting.
            self._begin_stop("the daemon failed")
            await asyncio.wait([waiter], timeout=self._shutdown_limit_s())
            raise
        finally:
            stop_metrics()
            # Each purge batch is its own transaction: cancelling between or during them is safe.
            purging.cancel()
            await asyncio.wait([purging])
        return self._exit_code(waiter)

    async def _main_loop(self, waiter: asyncio.Task[None]) -> None:
        assert self._wake is not None and self.engine is not None
        engine = self.engine
        watchdog_s = self.notifier.watchdog_interval_s()
        if watchdog_s is not None:
            log.info("systemd watchdog: pinging every %.3fs", watchdog_s)
        next_watchdog = time.monotonic()
        next_status = time.monotonic() + STATUS_INTERVAL_S
        while True:
            self._wake.clear()
            self._handle_signals()
            if engine.draining and self._stopping_since is None:
                # The engine drains by itself on a newer epoch or when a background task died.
                self._begin_stop(engine.stop_reason)
            if waiter.done():
                return
            now = time.monotonic()
            if self._stopping_since is not None:
                limit_s = self._shutdown_limit_s()
                if now - self._stopping_since > limit_s:
                    log.critical(
                        "shutdown: the engine did not stop within %.0fs; exiting now", limit_s
                    )
                    self._exit_now(ExitCode.INTERNAL)
            if watchdog_s is not None and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + watchdog_s
            if now >= next_status:
                self.notifier.status(self._status_text())
                next_status = now + STATUS_INTERVAL_S
            due = min(next_status, next_watchdog) if watchdog_s is not None else next_status
            try:
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _handle_signals(self) -> None:
        received, self._signals = self._signals, []
        for signum in received:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP and self._stopping_since is not None:
                # A READY=1 after STOPPING=1 would tell systemd we are back up.
                log.info("received SIGHUP while stopping: not reloading")
            elif signum == signal.SIGHUP:
                self._reload()
            elif self._stop_reason is None:
                log.info("received %s", name)
                self._stop_reason = f"received {name}"
                self._begin_stop(self._stop_reason)
            elif signum == signal.SIGINT:
                log.warning(
                    "second SIGINT: exiting now without draining; in-flight steps return to the"
                    " queue once their lease runs out (engine.lease_s)"
                )
                self._exit_now(ExitCode.FORCED)
            else:
                log.info(
                    "received %s: already stopping (%s); SIGINT again to force an exit",
                    name,
                    self._stop_reason,
                )

    # -- the ordered shutdown --

    def _shutdown_limit_s(self) -> float:
        return (
            self.cfg.engine.drain_timeout_s
            + self.cfg.engine.write_failure_limit_s
            + SHUTDOWN_MARGIN_S
        )

    def _begin_stop(self, reason: str) -> None:
        """Phase 1 of the shutdown: tell systemd, and have the engine stop claiming and drain."""
        assert self.engine is not None
        if self._stopping_since is not None:
            return
        self._stopping_since = time.monotonic()
        if self._stop_reason is None:
            self._stop_reason = reason
        self.notifier.stopping(f"stopping: {reason}")
        # The engine logs its own steps (drain, cancel stragglers, flush, release, close).
        if self.engine.draining:
            log.info("shutdown 1/2: the engine is stopping by itself (%s)", reason)
            return
        log.info(
            "shutdown 1/2 (%s): draining %d in-flight steps for up to %.1fs, then flushing"
            " and releasing the rest",
            reason,
            self.engine.load()["in_flight"],
            self.cfg.engine.drain_timeout_s,
        )
        self._drain_started = self._stopping_since
        self.engine.request_stop(reason)

    def _exit_code(self, waiter: asyncio.Task[None]) -> int:
        """Phase 2: the engine has stopped; say why we exit and with which code."""
        assert self.engine is not None
        exc = waiter.exception()
        if isinstance(exc, EngineCrashed):
            cause = exc.__cause__
            code = ExitCode.DATABASE if isinstance(cause, errors.StoreError) else ExitCode.INTERNAL
            # The engine logged the traceback when its task died.
            log.critical("shutdown 2/2: the engine crashed (%s); exiting with code %d", exc, code)
            return code
        if exc is not None:
            log.critical(
                "shutdown 2/2: waiting for the engine failed; exiting with code %d",
                ExitCode.INTERNAL,
                exc_info=exc,
            )
            return ExitCode.INTERNAL
        reason = self.engine.stop_reason or self._stop_reason
        if reason == _EPOCH_REASON:
            reason += " (`executor bump-epoch`, or another daemon started on this database)"
        took = ""
        if self._drain_started is not None:  # else the engine stopped before we noticed
            took = f" in {time.monotonic() - self._drain_started:.2f}s"
        log.info("shutdown 2/2: stopped cleanly%s; exiting because %s", took, reason)
        return ExitCode.OK

    @staticmethod
    def _exit_now(code: int) -> None:
        # Skips the drain on purpose: every recorded result is already committed, and claims the
        # engine still holds come back after engine.lease_s.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(code)

    # -- reloading --

    def _reload(self) -> None:
        assert self.engine is not None
        self.notifier.reloading("reloading the configuration")
        log.info("received SIGHUP: reloading the configuration")
        try:
            new = config.load_config(self.config_path, self.env)
        except errors.ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            self.notifier.ready(self._status_text())
            return
        live, restart = config.diff_live(self.cfg, new.config)
        effective = _with_live_keys(self.cfg, new.config, live)
        try:
            log_cfg = effective.log
            if "log.format" in live:
                logs.setup_logging(log_cfg.level, log_cfg.format, levels=log_cfg.levels)
            elif "log.level" in live or "log.levels" in live:
                logs.set_level(log_cfg.level, log_cfg.levels)
        except errors.ConfigError as exc:  # load_config validated both, so this is a bug
            log.error("reload: could not apply the log settings: %s", exc)
        self.cfg = effective
        self.loaded = new
        engine_cfg = effective.engine
        if "engine.concurrency" in live:
            self.engine.set_concurrency(engine_cfg.concurrency)
        if "engine.poll_interval_s" in live:
            self.engine.set_poll_interval(engine_cfg.poll_interval_s)
        if any(_is_limit_key(key) for key in live):
            self.engine.set_limits(
                effective.limits,
                key_cap=engine_cfg.concurrency_key_cap,
                key_caps=dict(effective.concurrency_keys),
            )
        if config.SCHEDULES_SECTION in live:
            self.engine.set_schedules(effective.schedules)
        for key in live:
            section_name, _, name = key.partition(".")
            section = getattr(effective, section_name)
            if dataclasses.is_dataclass(section) and name:
                log.info("%s changed to %s (%s, applied live)", name, getattr(section, name), key)
            else:
                log.info("%s changed (applied live)", key)
        for key in restart:
            log.warning(
                "%s changed in %s but needs a restart to take effect", key, new.sources[key]
            )
        if not live and not restart:
            log.info("reload: nothing changed")
        self.notifier.ready(self._status_text())

    def _status_text(self) -> str:
        assert self.engine is not None
        state = "draining" if self.engine.draining else "running"
        load = " ".join(f"{key}={value}" for key, value in self.engine.load().items())
        return f"{state}: {load}"


def _no_metrics() -> None:
    """What stops the metrics endpoint when there is none."""


def _serve_metrics(cfg: config.Config) -> Callable[[], None]:
    """Start the opt-in Prometheus endpoint ([metrics] port); return what stops it."""
    metrics = cfg.metrics
    if metrics.port == 0:
        return lambda: None
    # Imported only when asked for: most daemons never open a port.
    from prometheus_client import start_http_server

    from executor.exporter import registry_for

    registry = registry_for(cfg.database)
    try:
        server, thread = start_http_server(metrics.port, metrics.host, registry)
    except OSError as exc:
        log.error(
            "metrics: cannot listen on %s:%d (metrics.host, metrics.port): %s; no endpoint",
            metrics.host,
            metrics.port,
            exc,
        )
        return lambda: None
    log.info("metrics: http://%s:%d/metrics", metrics.host, metrics.port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)

    return stop


def _retention_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("retention stopped: %r; finished runs are no longer purged", task.exception())


def _log_workflows(modules: tuple[str, ...]) -> None:
    reg = registry.default_registry
    if not reg.workflows:
        log.warning(
            "no workflows loaded (daemon.workflows: %s): the runs this daemon replays are parked"
            " until a daemon that has their workflow resumes them",
            ", ".join(modules) or "empty",
        )
        return
    names = [f"{w.name}@{w.version}" if w.version else w.name for w in reg.workflows.values()]
    log.info(
        "loaded %d workflows from %s: %s; %d steps",
        len(names),
        ", ".join(modules) or "already imported modules",
        ", ".join(sorted(names)),
        len(reg.steps),
    )


def _is_limit_key(key: str) -> bool:
    return key in (config.CONCURRENCY_KEYS_SECTION, "engine.concurrency_key_cap") or key.startswith(
        config.LIMITS_SECTION + "."
    )


def _with_live_keys(running: config.Config, new: config.Config, live: list[str]) -> config.Config:
    """The running config with the live keys taken from `new`; restart-only keys keep their
    running values, so the next reload reports them again until a restart applies them."""
    effective = running
    for key in live:
        section_name, _, name = key.partition(".")
        section = getattr(effective, section_name)
        if dataclasses.is_dataclass(section) and not isinstance(section, type) and name:
            value = getattr(getattr(new, section_name), name)
            section = dataclasses.replace(section, **{name: value})
        else:
            # A table of user-chosen names ([limits.NAME], [concurrency_keys]) changes whole.
            section = getattr(new, section_name)
        effective = effective.replace(**{section_name: section})
    return effective
