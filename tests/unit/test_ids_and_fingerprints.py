"""Run ids (time-ordered UUIDs) from buffered randomness, and fingerprints hashed in pieces: the
same values as the plain calls they replace (uuid.UUID's layout, one blake2b over the input)."""

from __future__ import annotations

import hashlib
import time
import uuid

from hypothesis import given
from hypothesis import strategies as st

from executor import codec
from executor.store import sharding


def test_run_uuids_are_version_7_rfc_4122_and_distinct() -> None:
    before = time.time_ns() // 1_000_000
    ids = [sharding.time_ordered_uuid() for _ in range(3000)]  # several refills of the buffer
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, text)
        assert before <= parsed.int >> 80 <= after  # 48 bits of UNIX milliseconds


def test_run_ids_grow_with_time() -> None:
    # Appended at the right edge of the unique index on runs.id, not on a random page of it:
    # ids made a millisecond apart sort in that order (within one millisecond, any order).
    earlier = [sharding.run_id_for_shard(s % 8, 8) for s in range(200)]
    deadline = time.monotonic() + 1.0
    first_ms = max(uuid.UUID(i).int >> 80 for i in earlier)
    while time.time_ns() // 1_000_000 <= first_ms and time.monotonic() < deadline:
        time.sleep(0.0005)
    later = [sharding.run_id_for_shard(s % 8, 8) for s in range(200)]
    assert max(earlier) < min(later)


def test_run_ids_land_on_their_shard() -> None:
    for shard in range(16):
        assert sharding.shard_of(sharding.run_id_for_shard(shard, 16), 16) == shard


@given(st.binary(max_size=9000))
def test_a_fingerprint_is_one_blake2b_of_the_whole_input(data: bytes) -> None:
    assert codec.fingerprint(data) == hashlib.blake2b(data, digest_size=8).hexdigest()


def test_fingerprints_around_the_piece_size() -> None:
    for n in (2046, 2047, 2048, 4094, 4095, 4096, 100_000):
        data = bytes(i % 251 for i in range(n))
        assert codec.fingerprint(data) == hashlib.blake2b(data, digest_size=8).hexdigest()
