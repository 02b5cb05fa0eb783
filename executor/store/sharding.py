"""Which shard a run lives in (a stable hash of its id or shard key), and which engine should own
a shard (rendezvous hashing over the live engines)."""

from __future__ import annotations

import hashlib
import uuid
import zlib
from collections.abc import Sequence


def shard_of(key: str, shards: int) -> int:
    """Stable shard of a run id or shard key (crc32: the same in every process and release)."""
    return zlib.crc32(key.encode()) % shards


# Every 3-hex-digit ending, to try as the last digits of a random UUID.
_ENDINGS = [f"{i:03x}".encode() for i in range(4096)]


def run_id_for_shard(shard: int, shards: int) -> str:
    """A random UUID-shaped run id whose shard_of() is `shard`.

    The last three hex digits are chosen, continuing the crc32 of the rest, so the id needs about
    `shards` crc32 steps over three bytes, not a retry per random id.
    """
    while True:
        head = str(uuid.uuid4())[:-3]
        crc = zlib.crc32(head.encode())
        for ending in _ENDINGS:
            if zlib.crc32(ending, crc) % shards == shard:
                return head + ending.decode()


def rendezvous(shard: int, engines: Sequence[int]) -> int | None:
    """The engine that should own `shard` among `engines` (None if there is none).

    Rendezvous (highest random weight) hashing: every engine scores every shard and the highest
    score wins, so each daemon computes the same owner from the same rows with no coordinator,
    and a join or a death moves only the shards whose winner changed (about 1/N of them).
    blake2b, not hash(): the same in every process and release.
    """
    best: tuple[bytes, int] | None = None
    for engine in engines:
        score = hashlib.blake2b(f"{shard}:{engine}".encode(), digest_size=8).digest()
        if best is None or score > best[0]:
            best = (score, engine)
    return None if best is None else best[1]
