"""Bindings through the KeyCache: invalidation by resource, BatchCheck's one round trip, deletion."""

from __future__ import annotations

import uuid

import pytest

from keygate.cache.keys import MISS, KeyCache
from keygate.domain.errors import Unavailable

from .conftest import TTL, Clock, add_key
from .fakes import MemoryStore


async def bind(store: MemoryStore, resource: str, key_id: uuid.UUID) -> None:
    async with store.transaction() as tx:
        await tx.upsert_binding("w", resource, key_id, ("chatflows:view",), None)


async def test_a_change_to_a_resources_bindings_drops_that_resource_only(cache: KeyCache, store: MemoryStore) -> None:
    key_id, _ = await add_key(store)
    assert await cache.bindings("w", "chatflows/a") == ()
    assert await cache.bindings("w", "chatflows/b") == ()
    await bind(store, "chatflows/a", key_id)
    assert cache.peek_bindings("w", "chatflows/a") is MISS
    assert cache.peek_bindings("w", "chatflows/b") == ()
    (bound,) = await cache.bindings("w", "chatflows/a")
    assert bound.key_id == key_id


async def test_a_batch_reads_every_missing_slot_in_one_round_trip(cache: KeyCache, store: MemoryStore) -> None:
    key_id, _ = await add_key(store)
    await bind(store, "chatflows/a", key_id)
    await cache.bindings("w", "chatflows/c")
    store.binding_reads.clear()
    slots = [("w", "chatflows/a"), ("w", "chatflows/b"), ("w", "chatflows/c"), ("w", "chatflows/a")]
    found = await cache.bindings_many(slots)
    assert store.binding_reads == [2]  # a and b, once; c was cached
    assert [b.key_id for b in found[("w", "chatflows/a")]] == [key_id] and found[("w", "chatflows/b")] == ()
    assert cache.peek_bindings("w", "chatflows/b") == ()


async def test_deleting_a_key_drops_every_cached_binding(cache: KeyCache, store: MemoryStore) -> None:
    key_id, _ = await add_key(store)
    await bind(store, "chatflows/a", key_id)
    await cache.bindings("w", "chatflows/a")
    async with store.transaction() as tx:
        await tx.delete_key(key_id)
    assert cache.peek_bindings("w", "chatflows/a") is MISS
    assert await cache.bindings("w", "chatflows/a") == ()


async def test_stale_bindings_answer_within_the_grace_and_uncached_ones_fail_closed(
        cache: KeyCache, store: MemoryStore, clock: Clock) -> None:
    await cache.bindings("w", "chatflows/a")
    store.reachable = False
    clock.now += TTL + 1
    assert await cache.bindings("w", "chatflows/a") == ()
    with pytest.raises(Unavailable):
        await cache.bindings_many([("w", "chatflows/a"), ("w", "chatflows/b")])
