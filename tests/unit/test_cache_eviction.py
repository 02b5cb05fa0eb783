"""What a bounded cache lets go of is freed: the hydration cache (engine/cache.py) when its bytes
bound evicts (lru-dict 1.4.1's popitem keeps a reference to every item it pops)."""

from __future__ import annotations

import sys

from executor.engine.cache import ENTRY_OVERHEAD_BYTES, HydrationCache


def test_a_value_evicted_by_the_bytes_bound_is_freed() -> None:
    values = [f"result {i} " + "x" * 300 for i in range(4)]  # distinct objects
    before = [sys.getrefcount(values[i]) for i in range(4)]
    budget = 2 * (sys.getsizeof(values[0]) + ENTRY_OVERHEAD_BYTES) + 10
    cache = HydrationCache(entries=100, max_bytes=10_000, budget_bytes=budget)
    for i in range(4):
        cache.put(i, values[i], len(values[i]))
    assert len(cache) == 2 and cache.bytes <= budget
    # The two evicted are referenced by `values` only; the two kept by the cache too.
    assert [sys.getrefcount(values[i]) - before[i] for i in range(4)] == [0, 0, 1, 1]
