"""The hydration cache's bounds: entries, bytes per entry, and bytes in all."""

from __future__ import annotations

import sys

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.engine.cache import ENTRY_OVERHEAD_BYTES, HydrationCache


def held(cache: HydrationCache) -> dict[object, object]:
    return dict(cache._lru.items()) if cache._lru is not None else {}


def cost(values: dict[object, object]) -> int:
    return sum(sys.getsizeof(v) + ENTRY_OVERHEAD_BYTES for v in values.values())


def test_llm_sized_results_are_bounded_in_bytes_not_only_in_entries() -> None:
    budget = 1024 * 1024
    cache = HydrationCache(100_000, 65536, budget)
    text = "word " * 500  # 2.5 KB, an LLM answer
    for i in range(2_000):  # 5 MB of results offered
        blob = orjson.dumps(f"{i}:{text}")
        cache.put((1, 0, i), orjson.loads(blob), len(blob))
        assert cache.bytes <= budget
    assert cache.bytes == cost(held(cache))
    assert 300 < len(cache) < 420  # what 1 MiB holds: ~2.7 KB each
    assert (1, 0, 1_999) in held(cache) and (1, 0, 0) not in held(cache)  # oldest went first


def test_a_value_larger_than_the_whole_budget_is_not_kept() -> None:
    cache = HydrationCache(10, 1 << 20, 4096)
    cache.put((1, 0, 0), "small", 7)
    assert cache.get((1, 0, 1), orjson.dumps("x" * 10_000)) == "x" * 10_000
    assert list(held(cache)) == [(1, 0, 0)] and cache.bytes == cost(held(cache))


def test_a_zero_budget_turns_the_cache_off() -> None:
    cache = HydrationCache(10, 1024, 0)
    cache.put((1, 0, 0), 5, 1)
    assert len(cache) == 0 and cache.bytes == 0


@settings(max_examples=100, deadline=None)
@given(
    entries=st.integers(1, 8),
    budget=st.integers(0, 4000),
    ops=st.lists(
        st.tuples(
            st.booleans(),
            st.integers(0, 12),
            st.text(max_size=600) | st.integers(-(2**63), 2**63 - 1),
        ),
        max_size=60,
    ),
)
def test_the_byte_count_matches_what_is_held_and_stays_in_budget(
    entries: int, budget: int, ops: list[tuple[bool, int, object]]
) -> None:
    cache = HydrationCache(entries, 400, budget)
    for use_get, pos, value in ops:
        blob = orjson.dumps(value)
        key = (7, 0, pos)
        if use_get:
            got = cache.get(key, blob)
            assert got == value or key in held(cache)  # a hit gives what was kept there
        else:
            cache.put(key, value, len(blob))
        assert len(cache) <= entries
        assert cache.bytes == cost(held(cache)) <= budget
