"""Write health: one outage of the database, one error log; past the limit, the engine stops.

Every loop that writes reports each write here. A loop whose writes have failed for longer than
engine.write_failure_limit_s gets StoreWriteError raised into it, so it dies and the supervisor
stops the engine (better than holding results in memory forever).
"""

from __future__ import annotations

import logging
import time

from executor import errors

log = logging.getLogger("executor.engine")


class WriteHealth:
    """Which loops cannot write the database, and since when."""

    def __init__(self, failure_limit_s: float) -> None:
        self.failure_limit_s = failure_limit_s
        # Loop name -> when its writes started failing (monotonic): one outage, one error log.
        self._failing: dict[str, float] = {}
        self._outage_began = 0.0  # monotonic; when the current outage's first failed write began

    def failed(self, exc: errors.StoreError, what: str) -> None:
        """A write of loop `what` failed: log the outage once; past the limit, raise (the loop
        dies, so the engine stops)."""
        if isinstance(exc, errors.StoreCorrupt):
            raise exc  # a damaged file is not an outage: never retry writing into it
        now = time.monotonic()
        # The outage began when the first failed attempt began, not when it gave up waiting.
        began = now if exc.started_at is None else exc.started_at
        if not self._failing:
            self._outage_began = began
            log.error("cannot write the database; holding results and retrying: %s", exc)
        else:
            log.debug("%s: still cannot write the database: %s", what, exc)
        since = self._failing.setdefault(what, began)
        if now - since > self.failure_limit_s:
            raise errors.StoreWriteError(
                f"could not write the database for {self.failure_limit_s:.0f}s"
                f" (engine.write_failure_limit_s): {exc}"
            ) from exc

    def ok(self, what: str) -> None:
        """A write of loop `what` succeeded."""
        if not self._failing:
            return
        since = self._failing.pop(what, None)
        if since is not None and not self._failing:
            # The whole outage, not the share of the loop that recovered last.
            log.warning(
                "database writable again after %.1fs", time.monotonic() - self._outage_began
            )
