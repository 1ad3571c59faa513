"""The change listener through the ChangeFeed interface: changes from other replicas reach the cache,
and a lost subscription desynchronizes it, asks the store to check itself, and reconnects."""

from __future__ import annotations

import asyncio
import time

from keygate.cache.keys import MISS, KeyCache
from keygate.cache.listener import ChangeListener
from keygate.domain import changes

from .conftest import Clock, add_key
from .fakes import MemoryStore


async def test_changes_arrive_and_a_lost_subscription_is_replaced(cache: KeyCache, store: MemoryStore,
                                                                  clock: Clock) -> None:
    key_id, secret = await add_key(store)
    listener = ChangeListener(store, cache, interval=0.01, clock=clock)
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        assert cache.synchronized and cache.sizes()["known"] == 1
        await cache.credential(secret)
        (listening,) = store.listeners
        listening.on_change(changes.encode(changes.KeyChanged(key_id), time.time()))  # another replica's change
        assert cache.peek(secret) is MISS

        await cache.credential(secret)
        clock.now += 0.001
        listening.on_lost()
        while store.suspected == 0:
            await asyncio.sleep(0.01)
        assert cache.peek(secret) is MISS  # nothing cached before the loss is fresh
        await asyncio.wait_for(listener.connected.wait(), 5)
        assert len(store.listeners) == 1 and store.listeners[0] is not listening
    finally:
        await listener.stop()


async def test_a_ping_handled_late_lapses_the_trust_but_keeps_the_connection(
        cache: KeyCache, store: MemoryStore, clock: Clock) -> None:
    """The process did not run for seconds (a saturated loop, a paused VM): cached entries stop answering
    at the deadline, and the next answered ping restores the trust on the same connection, filter and all."""
    _, secret = await add_key(store)
    listener = ChangeListener(store, cache, interval=0.01, clock=clock)
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        (listening,) = store.listeners
        await cache.credential(secret)
        clock.now += 5  # every deadline passed while nothing ran
        assert cache.peek(secret) is MISS
        await cache.credential(secret)
        deadline = time.monotonic() + 5
        while cache.peek(secret) is MISS:  # trusted again once a ping sent after the pause is answered
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert store.listeners == [listening] and store.suspected == 0 and cache.synchronized
    finally:
        await listener.stop()


async def test_a_ping_left_unanswered_for_the_bound_ends_the_connection(cache: KeyCache, store: MemoryStore) -> None:
    listener = ChangeListener(store, cache, bound=0.1, interval=0.01)
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        (listening,) = store.listeners
        store.silent = True
        started = time.monotonic()
        while store.suspected == 0:
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 1
        assert not cache.synchronized  # the filter of known keys went with the connection
        store.silent = False
        await asyncio.wait_for(listener.connected.wait(), 5)
        assert store.listeners != [listening]
    finally:
        await listener.stop()
