"""In-memory caches: decoded step results (hydration) and live workflow instances.

Both are bounded LRUs (lru-dict, a C implementation: a lookup costs about as much as a dict's).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from lru import LRU

from executor import codec

_MISSING = object()


class HydrationCache:
    """Decoded step results by journal id, so a replay does not decode the same result again.

    Only immutable values (str, int, float, bool, None) are kept: a list or dict handed to one
    replay could be mutated by the workflow code and leak into the next, so those are decoded
    fresh each time. Errors are never cached. Results larger than `max_bytes` are not kept.
    """

    def __init__(self, entries: int, max_bytes: int) -> None:
        self._lru: Any = LRU(entries) if entries > 0 else None
        self._max_bytes = max_bytes

    def get(self, key: Hashable, blob: bytes) -> Any:
        lru = self._lru
        if lru is not None:
            value = lru.get(key, _MISSING)
            if value is not _MISSING:
                return value
        value = codec.decode(blob)
        if lru is not None and len(blob) <= self._max_bytes and codec.is_immutable(value):
            lru[key] = value
        return value

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Keep a value we already have decoded (it must be immutable)."""
        if self._lru is not None and size <= self._max_bytes:
            self._lru[key] = value

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

    def clear(self) -> None:
        if self._lru is not None:
            for value in list(self._lru.values()):
                self._on_evict(value)
            self._lru.clear()

    def __contains__(self, rid: int) -> bool:
        return self._lru is not None and rid in self._lru  # no move to the front

    def __len__(self) -> int:
        return 0 if self._lru is None else len(self._lru)
