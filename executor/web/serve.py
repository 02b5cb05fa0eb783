"""`executor serve`: run the dashboard until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from executor import config, errors
from executor.store.reader import database_config, reading
from executor.web.app import make_server


def serve(
    database: config.DatabaseConfig | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    busy_timeout_s: float = 5.0,
    out: TextIO | None = None,
) -> None:
    """Serve the dashboard of `database` on host:port (0: any free port) until SIGINT/SIGTERM.

    Prints the URL as the first line on `out` (stdout), so a script can read where it listens.
    """
    cfg = database_config(database, busy_timeout_s)
    with reading(cfg, "serve"):
        pass  # a clear error now, not on the first page
    try:
        server = make_server(cfg, host, port)
    except OSError as exc:
        raise errors.ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    thread = threading.Thread(target=server.serve_forever, name="executor.web", daemon=True)
    thread.start()
    try:
        bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        stream = out if out is not None else sys.stdout
        print(
            f"serving http://{shown}:{bound_port}/ for {cfg.where} (read-only); Ctrl-C stops",
            file=stream,
            flush=True,
        )
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
