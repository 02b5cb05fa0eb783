"""In-memory caches: decoded step results (hydration) and live workflow instances.

Both are bounded LRUs (lru-dict, a C implementation: a lookup costs about as much as a dict's).
The hydration cache is bounded in bytes as well as in entries: its entries are step results,
and an LLM step returns kilobytes of text, so a count alone does not bound its memory.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from typing import Any

from lru import LRU

from executor import codec

_MISSING = object()
# What an entry costs beside its value: the lru-dict node and hash slot (~100 bytes, measured
# with tracemalloc) and the (run, generation, position) key tuple with its run id (~100).
ENTRY_OVERHEAD_BYTES = 200
DEFAULT_BUDGET_BYTES = 32 * 1024 * 1024


def _charge(value: Any) -> int:
    # The values are str, int, float, bool or None (codec.is_immutable): getsizeof is exact.
    return sys.getsizeof(value) + ENTRY_OVERHEAD_BYTES


class HydrationCache:
    """Decoded step results by journal id, so a replay does not decode the same result again.

    Only immutable values (str, int, float, bool, None) are kept: a list or dict handed to one
    replay could be mutated by the workflow code and leak into the next, so those are decoded
    fresh each time. Errors are never cached. Results larger than `max_bytes` (encoded) are not
    kept. At most `entries` values and `budget_bytes` of memory (values with their keys and
    the cache's own bookkeeping) are held; the least recently used go first.
    """

    def __init__(
        self, entries: int, max_bytes: int, budget_bytes: int = DEFAULT_BUDGET_BYTES
    ) -> None:
        on = entries > 0 and budget_bytes > 0
        self._lru: Any = LRU(entries, callback=self._evicted) if on else None
        self._max_bytes = max_bytes
        self.budget_bytes = budget_bytes
        self.bytes = 0  # what the entries held now cost, by _charge

    def _evicted(self, _key: Any, value: Any) -> None:
        self.bytes -= _charge(value)  # evicted by the entry count

    def get(self, key: Hashable, blob: bytes) -> Any:
        lru = self._lru
        if lru is not None:
            value = lru.get(key, _MISSING)
            if value is not _MISSING:
                return value
        value = codec.decode(blob)
        if lru is not None and len(blob) <= self._max_bytes and codec.is_immutable(value):
            self._keep(key, value)
        return value

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Keep a value we already have decoded (it must be immutable)."""
        lru = self._lru
        if lru is None or size > self._max_bytes:
            return
        # _keep inlined for the common case, a new key and room in the budget: this runs for
        # every result a live workflow is given.
        charge = sys.getsizeof(value) + ENTRY_OVERHEAD_BYTES
        if key in lru or self.bytes + charge > self.budget_bytes:
            self._keep(key, value)
            return
        self.bytes += charge
        lru[key] = value  # may evict one entry by count (the callback subtracts it)

    def _keep(self, key: Hashable, value: Any) -> None:
        lru = self._lru
        old = lru.pop(key, _MISSING)
        if old is not _MISSING:
            self.bytes -= _charge(old)
        charge = _charge(value)
        if charge > self.budget_bytes:
            return
        self.bytes += charge
        lru[key] = value  # may evict one entry by count (the callback subtracts it)
        while self.bytes > self.budget_bytes:
            # Not popitem: lru-dict 1.4.1's keeps a reference to every item it pops.
            oldest, gone = lru.peek_last_item()
            del lru[oldest]
            self.bytes -= _charge(gone)

    def __len__(self) -> int:
        return 0 if self._lru is None else len(self._lru)


class InstanceCache:
    """Live workflow instances by run, least recently used evicted (and closed) first."""

    def __init__(self, size: int, on_evict: Callable[[Any], None]) -> None:
        self.size = size
        self._on_evict = on_evict
        self._lru: Any = LRU(size, callback=self._evicted) if size > 0 else None

    def _evicted(self, _key: Any, value: Any) -> None:
        self._on_evict(value)

    def get(self, rid: int) -> Any:
        return None if self._lru is None else self._lru.get(rid)

    def put(self, rid: int, inst: Any) -> None:
        if self._lru is None:
            self._on_evict(inst)
        else:
            self._lru[rid] = inst

    def pop(self, rid: int) -> Any:
        if self._lru is None:
            return None
        return self._lru.pop(rid, None)

    def room(self) -> int | None:
        """Instances that fit before one is evicted; None when there is no cache (size 0)."""
        return None if self._lru is None else self.size - len(self._lru)

    def items(self) -> list[tuple[int, Any]]:
        """(run, instance) pairs, without moving any to the front."""
        return [] if self._lru is None else list(self._lru.items())

    def clear(self) -> None:
        if self._lru is not None:
            for value in list(self._lru.values()):
                self._on_evict(value)
            self._lru.clear()

    def __contains__(self, rid: int) -> bool:
        return self._lru is not None and rid in self._lru  # no move to the front

    def __len__(self) -> int:
        return 0 if self._lru is None else len(self._lru)
