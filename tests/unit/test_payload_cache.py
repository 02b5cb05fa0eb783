"""The cache of resolved payloads (store/payloads.py) stays within its entries and bytes, and
returns what was put for as long as it holds it."""

from __future__ import annotations

import sys

from hypothesis import given
from hypothesis import strategies as st

from executor.store.payloads import _Resolved

OPS = st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=1, max_size=200)


@given(OPS)
def test_the_cache_is_bounded_in_entries_and_bytes(ops: list[tuple[int, bool]]) -> None:
    cache = _Resolved(entries=8, budget=100, largest=30)
    for key, read in ops:
        k = key.to_bytes(2, "big")
        size = key * 2  # 0 to 40 bytes: a key (a digest) always names the same bytes
        value = bytes([key]) * size
        if read:
            got = cache.get(k)
            assert got is None or got == value
        else:
            cache.put(k, value)
            if size > 30:
                assert cache.get(k) is None  # too large to keep
            else:
                assert cache.get(k) == value  # the newest entry always stays
        held = [cache.get(i.to_bytes(2, "big")) for i in range(21)]
        assert all(v is None or v == bytes([i]) * i * 2 for i, v in enumerate(held))
        assert len(cache) <= 8
        assert cache.bytes == sum(len(v) for v in held if v is not None) <= 100


def test_an_evicted_payload_is_freed() -> None:
    """Nothing keeps a payload the cache let go of, whichever bound evicted it."""
    for entries, budget in ((2, 10**6), (10**6, 64)):
        cache = _Resolved(entries=entries, budget=budget, largest=64)
        values = [bytes([i]) * 40 for i in range(4)]  # distinct objects, 40 bytes each
        before = [sys.getrefcount(v) for v in values]
        for i, v in enumerate(values):
            cache.put(bytes([i]), v)
        assert cache.get(bytes([0])) is None  # evicted
        assert sys.getrefcount(values[0]) == before[0]
