"""Run ids from buffered randomness, and fingerprints hashed in pieces: the same values as the
plain calls they replace (uuid.uuid4, one blake2b over the whole input)."""

from __future__ import annotations

import hashlib
import uuid

from hypothesis import given
from hypothesis import strategies as st

from executor import codec
from executor.store import sharding


def test_random_uuids_are_version_4_rfc_4122_and_distinct() -> None:
    ids = [sharding.random_uuid() for _ in range(3000)]  # several refills of the buffer
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


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
