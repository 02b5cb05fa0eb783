"""Rendezvous hashing (store/sharding.rendezvous, and `assign`, with bounded loads): every process
computes the same owners, a join or a death moves only (about) the shards that must move, and
`assign` never gives an engine more than its share."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from executor.store.sharding import assign, rendezvous

engines = st.lists(st.integers(1, 10_000), min_size=1, max_size=8, unique=True)


@given(engines, st.integers(1, 10_000))
def test_a_join_moves_shards_only_to_the_newcomer(live: list[int], newcomer: int) -> None:
    if newcomer in live:
        return
    before = {s: rendezvous(s, live) for s in range(64)}
    after = {s: rendezvous(s, [*live, newcomer]) for s in range(64)}
    assert all(after[s] in (before[s], newcomer) for s in range(64))


@given(engines.filter(lambda e: len(e) > 1), st.data())
def test_a_death_moves_only_the_dead_engines_shards(live: list[int], data: st.DataObject) -> None:
    dead = data.draw(st.sampled_from(live))
    rest = [e for e in live if e != dead]
    before = {s: rendezvous(s, live) for s in range(64)}
    after = {s: rendezvous(s, rest) for s in range(64)}
    assert all(after[s] == before[s] for s in range(64) if before[s] != dead)
    assert dead not in after.values()


@given(engines)
def test_the_owner_does_not_depend_on_the_order_of_the_engines(live: list[int]) -> None:
    assert [rendezvous(s, live) for s in range(16)] == [
        rendezvous(s, list(reversed(live))) for s in range(16)
    ]


def test_shards_spread_over_the_engines() -> None:
    owners = [rendezvous(s, [1, 2, 3]) for s in range(256)]
    assert all(60 <= owners.count(e) <= 110 for e in (1, 2, 3)), [
        owners.count(e) for e in (1, 2, 3)
    ]
    assert rendezvous(0, []) is None


SHARDS = tuple(range(64))


@given(engines)
def test_assign_gives_every_shard_an_owner_and_nobody_more_than_its_share(live: list[int]) -> None:
    owners = assign(SHARDS, tuple(live))
    assert set(owners) == set(SHARDS) and set(owners.values()) <= set(live)
    cap = -(-len(SHARDS) // len(live))
    assert max(list(owners.values()).count(e) for e in live) <= cap
    assert owners == assign(SHARDS, tuple(reversed(live)))  # the same in every process


@given(engines, st.integers(1, 10_000))
def test_a_join_moves_about_a_share_of_the_shards(live: list[int], newcomer: int) -> None:
    if newcomer in live:
        return
    before = assign(SHARDS, tuple(live))
    after = assign(SHARDS, (*live, newcomer))
    moved = sum(1 for s in SHARDS if before[s] != after[s])
    share = len(SHARDS) / (len(live) + 1)
    # The newcomer's share moves to it; the bound displaces some more, never most of them.
    cap = -(-len(SHARDS) // (len(live) + 1))
    assert list(after.values()).count(newcomer) >= len(SHARDS) - len(live) * cap
    assert moved <= 2 * share + len(live) + 1, (moved, share)
    assert assign(SHARDS, ()) == {}
