"""Credentials through the KeyCache: ttl, refresh-ahead, single-flight, outage grace, negative entries,
invalidation, and the race between an invalidation and a read in flight."""

from __future__ import annotations

import asyncio
import math
import uuid

import pytest

from keygate.cache.keys import MISS, KeyCache
from keygate.domain import changes
from keygate.domain.errors import Unavailable
from keygate.domain.keys import digest
from keygate.domain.policy import KeySpec

from .conftest import TTL, Clock, add_key
from .fakes import MemoryStore


async def test_a_cached_key_answers_from_memory_until_its_ttl(cache: KeyCache, store: MemoryStore,
                                                              clock: Clock) -> None:
    key_id, secret = await add_key(store)
    assert cache.peek(secret) is MISS
    found = await cache.credential(secret)
    assert found is not None and found.key_id == key_id and store.lookups == 1
    clock.now += TTL * 0.5
    assert cache.peek(secret) == found and store.lookups == 1
    clock.now += TTL * 0.5
    assert cache.peek(secret) is MISS
    await cache.credential(secret)
    assert store.lookups == 2
    assert cache.hits["keys"] == 1 and cache.misses["keys"] == 2


async def test_a_hit_near_the_ttl_answers_at_once_and_refreshes_in_the_background(
        cache: KeyCache, store: MemoryStore, clock: Clock) -> None:
    _, secret = await add_key(store)
    found = await cache.credential(secret)
    clock.now += TTL * 0.9
    assert cache.peek(secret) == found  # answered from memory...
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert store.lookups == 2  # ...while the entry was read again
    clock.now += TTL * 0.5  # past the first read's ttl, within the refreshed one's
    assert cache.peek(secret) == found and store.lookups == 2


async def test_concurrent_lookups_of_one_key_make_one_read(cache: KeyCache, store: MemoryStore) -> None:
    _, secret = await add_key(store)
    store.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(cache.credential(secret)) for _ in range(20)]
    await asyncio.sleep(0)
    store.gate.set()
    found = await asyncio.gather(*waiting)
    assert len({c.key_id for c in found if c is not None}) == 1 and store.lookups == 1


async def test_while_the_database_is_unreachable_a_stale_key_answers_within_the_grace(
        cache: KeyCache, store: MemoryStore, clock: Clock) -> None:
    _, secret = await add_key(store)
    _, uncached = await add_key(store)
    found = await cache.credential(secret)
    store.reachable = False
    clock.now += TTL + 30
    assert cache.peek(secret) == found  # at once, without a read
    assert await cache.credential(secret) == found
    with pytest.raises(Unavailable):  # never cached: fails closed
        await cache.credential(uncached)
    clock.now += 60
    assert cache.peek(secret) is MISS
    with pytest.raises(Unavailable):  # past the grace: fails closed
        await cache.credential(secret)


async def test_a_stale_key_whose_read_fails_answers_within_the_grace(
        cache: KeyCache, store: MemoryStore, clock: Clock) -> None:
    _, secret = await add_key(store)
    found = await cache.credential(secret)
    clock.now += TTL + 1
    store.gate = asyncio.Event()
    reading = asyncio.ensure_future(cache.credential(secret))
    await asyncio.sleep(0)
    store.reachable = False  # the database goes away under the read
    store.gate.set()
    assert await reading == found


async def test_an_unknown_key_is_cached_as_unknown_until_a_key_with_that_secret_appears(
        cache: KeyCache, store: MemoryStore) -> None:
    secret = digest("not-yet-a-key")
    assert await cache.credential(secret) is None
    assert await cache.credential(secret) is None
    assert store.lookups == 1 and cache.hits["negative"] == 1
    async with store.transaction() as tx:  # a key with exactly that secret (its fingerprint is announced)
        await tx.insert_key(uuid.uuid4(), KeySpec(name="new", workspace_id="w", permissions=()), secret, "x", None)
    assert await cache.credential(secret) is not None


async def test_a_change_to_a_key_drops_it_at_once(cache: KeyCache, store: MemoryStore) -> None:
    key_id, secret = await add_key(store)
    before = await cache.credential(secret)
    assert before is not None and not before.disabled
    async with store.transaction() as tx:
        record = await tx.get_key(key_id)
        assert record is not None
        await tx.update_key(key_id, KeySpec(name="k", workspace_id="w", permissions=(), disabled=True))
    assert cache.peek(secret) is MISS
    after = await cache.credential(secret)
    assert after is not None and after.disabled


async def test_every_secret_of_a_rotated_key_is_dropped(cache: KeyCache, store: MemoryStore) -> None:
    key_id, old = await add_key(store)
    await cache.credential(old)
    cache.apply(changes.KeyChanged(key_id))
    assert cache.peek(old) is MISS


async def test_an_invalidation_during_a_read_is_not_undone_by_that_read(cache: KeyCache, store: MemoryStore) -> None:
    """The read may have seen the row before the change: answering with it is fine (it began before),
    keeping it would serve the old row for a whole ttl after the change."""
    key_id, secret = await add_key(store)
    store.gate = asyncio.Event()
    reading = asyncio.ensure_future(cache.credential(secret))
    while not store.lookups:  # the read has begun
        await asyncio.sleep(0)
    cache.apply(changes.KeyChanged(key_id))  # the NOTIFY arrives while the read is in flight
    store.gate.set()
    assert await reading is not None
    assert cache.peek(secret) is MISS


async def test_a_lost_listener_stales_everything_cached_before(cache: KeyCache, store: MemoryStore,
                                                               clock: Clock) -> None:
    _, secret = await add_key(store)
    await cache.credential(secret)
    clock.now += 1
    cache.desynchronize()
    assert cache.peek(secret) is MISS and not cache.synchronized
    await cache.credential(secret)
    assert cache.peek(secret) is not MISS  # read since: fresh for its ttl


async def test_nothing_answers_from_memory_past_the_listeners_deadline(cache: KeyCache, store: MemoryStore,
                                                                      clock: Clock) -> None:
    _, secret = await add_key(store)
    cache.synchronize(clock.now + 1)
    await cache.credential(secret)
    clock.now += 1
    assert cache.peek(secret) is MISS
    cache.trust(clock.now + 1, cache.mark(), 0)
    assert cache.peek(secret) is not MISS
    cache.trust(math.inf, cache.mark(), 0)


async def test_an_unreadable_change_clears_the_cache(cache: KeyCache, store: MemoryStore) -> None:
    _, secret = await add_key(store)
    await cache.credential(secret)
    cache.apply_payload("{not json")
    assert cache.peek(secret) is MISS and cache.sizes()["keys"] == 0


async def test_a_notified_change_is_applied_and_its_lag_observed(cache: KeyCache, store: MemoryStore) -> None:
    key_id, secret = await add_key(store)
    await cache.credential(secret)
    cache.apply_payload(changes.encode(changes.KeyChanged(key_id), 0.0))
    assert cache.peek(secret) is MISS


async def test_cached_keys_stay_within_max_keys(cache: KeyCache, store: MemoryStore) -> None:
    for _ in range(10):
        _, secret = await add_key(store)
        await cache.credential(secret)
    assert cache.sizes()["keys"] == cache.settings.max_keys
    assert cache.evictions()["keys"] == 10 - cache.settings.max_keys
