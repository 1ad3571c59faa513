"""The filter of known keys and its lookup budget (flood.py), through the KeyCache."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from keygate.cache.keys import MISS, KeyCache
from keygate.domain.errors import Unavailable
from keygate.domain.keys import digest
from keygate.domain.policy import KeySpec

from .conftest import Clock, add_key
from .fakes import MemoryStore


async def test_without_a_complete_filter_every_unknown_key_is_looked_up(cache: KeyCache, store: MemoryStore) -> None:
    assert not cache.synchronized
    for _ in range(10):
        assert await cache.credential(os.urandom(32)) is None
    assert store.lookups == 10


async def test_a_complete_filter_answers_alone_once_the_budget_is_spent(cache: KeyCache, store: MemoryStore,
                                                                       clock: Clock) -> None:
    _, secret = await add_key(store)
    await cache.rebuild_filter()
    assert cache.synchronized and cache.sizes()["known"] == 1
    answers = [await cache.credential(os.urandom(32)) for _ in range(10)]
    assert answers == [None] * 10 and store.lookups == 2  # the budget: 2 a second
    assert await cache.credential(secret) is not None  # a known key is always looked up
    clock.now += 1
    await cache.credential(os.urandom(32))
    assert store.lookups == 4  # within the next second's budget


async def test_a_key_created_while_the_filter_loads_is_known_once_it_is_loaded(
        cache: KeyCache, store: MemoryStore) -> None:
    await add_key(store)
    secret = digest("created-during-the-load")
    loading = asyncio.ensure_future(cache.rebuild_filter())
    await asyncio.sleep(0)  # the load has read the stored digests, not yet swapped the filter in
    async with store.transaction() as tx:
        await tx.insert_key(uuid.uuid4(), KeySpec(name="n", workspace_id="w", permissions=()), secret, "x", None)
    await loading
    for _ in range(5):  # the budget spent on made-up keys...
        await cache.credential(os.urandom(32))
    before = store.lookups
    assert await cache.credential(secret) is not None  # ...the new key is still looked up
    assert store.lookups == before + 1


async def test_a_lost_listener_makes_the_filter_incomplete(cache: KeyCache, store: MemoryStore) -> None:
    await cache.rebuild_filter()
    cache.desynchronize()
    for _ in range(5):
        await cache.credential(os.urandom(32))
    assert store.lookups == 5 and not cache.filter_overfull


async def test_a_lookup_the_database_cannot_answer_leaves_the_complete_filters_not_found(
        cache: KeyCache, store: MemoryStore) -> None:
    """Within the budget an unknown key is still confirmed; when that confirmation fails, the complete
    filter's answer stands (not found, as beyond the budget), while a key the filter knows fails closed."""
    _, secret = await add_key(store)
    await cache.rebuild_filter()
    store.reachable = False
    assert await cache.credential(os.urandom(32)) is None
    with pytest.raises(Unavailable):
        await cache.credential(secret)
    cache.desynchronize()  # an incomplete filter vouches for nothing: the failure is the answer
    with pytest.raises(Unavailable):
        await cache.credential(os.urandom(32))


async def test_the_filter_keeps_refusing_while_the_listeners_trust_has_lapsed(
        cache: KeyCache, store: MemoryStore, clock: Clock) -> None:
    """A ping answered late (the process did not run) lapses the trust in cached grants, not the filter:
    it only ever refuses, so made-up keys stay within the budget, and a failed confirmation is not found."""
    _, secret = await add_key(store)
    cache.synchronize(clock.now + 1)
    await cache.rebuild_filter()
    assert await cache.credential(secret) is not None
    clock.now += 5  # past the listener's deadline: nothing cached is fresh
    assert cache.peek(secret) is MISS
    before = store.lookups
    answers = [await cache.credential(os.urandom(32)) for _ in range(10)]
    assert answers == [None] * 10 and store.lookups == before + 2  # the budget, as while trusted
    store.reachable = False
    clock.now += 1
    assert await cache.credential(os.urandom(32)) is None
