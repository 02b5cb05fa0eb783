"""Which shard a run lives in (a stable hash of its id or shard key), and which engine should own
a shard (rendezvous hashing over the live engines)."""

from __future__ import annotations

import functools
import hashlib
import os
import time
import zlib
from collections.abc import Sequence


def shard_of(key: str, shards: int) -> int:
    """Stable shard of a run id or shard key (crc32: the same in every process and release)."""
    return zlib.crc32(key.encode()) % shards


# Every 3-hex-digit ending, to try as the last digits of a random UUID.
_ENDINGS = [f"{i:03x}".encode() for i in range(4096)]


class _Randomness:
    """os.urandom read 4 KiB at a time: a read per id was a system call that lets go of the GIL,
    and the event loop's thread can then wait a whole switch interval (5 ms) to get it back."""

    def __init__(self) -> None:
        self._pid = 0
        self._buf = b""
        self._at = 0

    def take16(self) -> bytes:
        if self._at + 16 > len(self._buf) or self._pid != os.getpid():  # not shared with a fork
            self._pid = os.getpid()
            self._buf, self._at = os.urandom(4096), 0
        self._at += 16
        return self._buf[self._at - 16 : self._at]


_random = _Randomness()


def time_ordered_uuid() -> str:
    """A UUID version 7 (RFC 9562) as str(uuid.UUID) writes it: 48 bits of UNIX milliseconds, then
    random bits from the buffered randomness.

    Run ids are the key of a unique index: random (version 4) ids put each new run on a random
    leaf page of it, so a batch of starts dirtied about one page per run once the index outgrew a
    batch (and read it back when the file outgrew the page cache), and the cost of starting a
    run grew with the runs stored (docs/PERFORMANCE.md, issue 15, flatness). Ids that grow with
    time are appended at the index's right edge, whatever the backlog.
    """
    b = bytearray(_random.take16())
    b[0:6] = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    b[6] = (b[6] & 0x0F) | 0x70  # version 7
    b[8] = (b[8] & 0x3F) | 0x80  # the RFC 4122 (9562) variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def run_id_for_shard(shard: int, shards: int) -> str:
    """A time-ordered run id (time_ordered_uuid) whose shard_of() is `shard`.

    The last three hex digits are chosen, continuing the crc32 of the rest, so the id needs about
    `shards` crc32 steps over three bytes, not a retry per random id.
    """
    while True:
        head = time_ordered_uuid()[:-3]
        crc = zlib.crc32(head.encode())
        for ending in _ENDINGS:
            if zlib.crc32(ending, crc) % shards == shard:
                return head + ending.decode()


def _score(shard: int, engine: int) -> bytes:
    # blake2b, not hash(): the same in every process and release.
    return hashlib.blake2b(f"{shard}:{engine}".encode(), digest_size=8).digest()


def rendezvous(shard: int, engines: Sequence[int]) -> int | None:
    """The engine that scores highest for `shard` (None if there is none): rendezvous (highest
    random weight) hashing, so a join or a death changes the winner of only about 1/N shards."""
    return max(engines, key=lambda e: _score(shard, e), default=None)


@functools.lru_cache(maxsize=64)
def assign(shards: tuple[int, ...], engines: tuple[int, ...]) -> dict[int, int]:
    """Which engine should own each shard: rendezvous hashing with bounded loads.

    Each shard goes to the highest-scoring engine that has fewer than ceil(S/N) shards so far
    (shards taken in order), so every daemon computes the same owners from the same rows, with
    no coordinator; a join or a death moves about S/N shards plus a few the cap displaces; and
    no engine gets more than ceil(S/N) (plain rendezvous can give 5 of 8 shards to one of three).
    """
    if not engines:
        return {}
    cap = -(-len(shards) // len(engines))
    load = dict.fromkeys(engines, 0)
    out = {}
    for shard in shards:
        for engine in sorted(engines, key=lambda e: _score(shard, e), reverse=True):
            if load[engine] < cap:
                out[shard] = engine
                load[engine] += 1
                break
    return out
