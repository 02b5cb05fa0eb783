"""The adaptive rate of one bucket: how 429s slow it down and how it recovers.

A provider answers 429 for two different reasons, and they need opposite reactions:

- the quota really is spent (ours, or a key shared with other clients, or a provider quota lower
  than configured): most requests are refused until it refills. The rate must come down and the
  key must pause for the Retry-After, or every request in flight is wasted.
- sporadic refusals (load shedding, a shard of the provider's fleet busy) while far from the
  quota: a few percent of requests, spread out. Slowing down does not help, and halving the rate
  and pausing the key on each of them halved throughput (issue 14).

So a 429 only slows the key when 429s are a real share of its recent answers: the share of 429s
among the last ~SHARE_OF_LAST answers is above `tolerance` (10%: 3% of random refusals stay well
below it, while a spent quota refuses most requests and crosses it within about a dozen 429s).
Then the rate is multiplied by `backoff` (at most once per DECREASE_COOLDOWN_S: the 429s of one
burst are one signal) but never below `floor` of the configured rate, and the key pauses for the
Retry-After. Without such 429s the rate climbs back linearly, from the floor to the configured
rate in `recovery_s`. Otherwise only the refused step waits for its Retry-After. All four are
settable per limit ([limits.NAME]).
"""

from __future__ import annotations

import math

# Defaults of the per-limit settings (docs/LIMITS.md).
BACKOFF = 0.7
FLOOR = 0.25
RECOVERY_S = 20.0
TOLERANCE = 0.1
# The share of 429s is an exponential average over about this many answers.
SHARE_OF_LAST = 100
# One decrease per this long: the 429s of one burst all answer requests sent before the first
# decrease could take effect.
DECREASE_COOLDOWN_S = 1.0


class AdaptiveRate:
    """A factor in [floor, 1] that scales a bucket's configured rates (or its concurrency)."""

    __slots__ = (
        "backoff",
        "floor",
        "last_429",
        "low",
        "rate_limited",
        "recovery_s",
        "share",
        "since",
        "tolerance",
    )

    def __init__(
        self,
        backoff: float | None = None,
        floor: float | None = None,
        recovery_s: float | None = None,
        tolerance: float | None = None,
    ) -> None:
        self.low = 1.0  # the factor at `since`, from which it climbs back
        self.since = -math.inf
        self.share = 0.0  # recent share of 429s among answers
        self.rate_limited = 0
        self.last_429 = -math.inf
        self.configure(backoff, floor, recovery_s, tolerance)

    def configure(
        self,
        backoff: float | None,
        floor: float | None,
        recovery_s: float | None,
        tolerance: float | None,
    ) -> None:
        self.backoff = BACKOFF if backoff is None else backoff
        self.floor = FLOOR if floor is None else floor
        self.recovery_s = RECOVERY_S if recovery_s is None else recovery_s
        self.tolerance = TOLERANCE if tolerance is None else tolerance
        self.low = max(self.low, self.floor)

    def factor(self, now: float) -> float:
        """The effective rate as a fraction of the configured rate, at `now`."""
        if self.low >= 1.0:
            return 1.0
        climbed = (now - self.since - DECREASE_COOLDOWN_S) / self.recovery_s * (1.0 - self.floor)
        if climbed <= 0:
            return self.low
        if self.low + climbed >= 1.0:
            self.low = 1.0
            return 1.0
        return self.low + climbed

    def answered(self) -> None:
        """A request of the bucket got an answer other than 429."""
        share = self.share
        if share:
            share -= share / SHARE_OF_LAST
            self.share = share if share > 1e-6 else 0.0

    def on_429(self, now: float) -> bool:
        """A request got a 429; True if it slowed the bucket (the key pauses for Retry-After),
        False if it was sporadic (only its step waits)."""
        self.rate_limited += 1
        self.last_429 = now
        self.share += (1.0 - self.share) / SHARE_OF_LAST
        if self.share <= self.tolerance:
            return False
        if now - self.since >= DECREASE_COOLDOWN_S:
            self.low = max(self.floor, self.factor(now) * self.backoff)
            self.since = now
        return True

    def idle(self) -> bool:
        return self.low >= 1.0
