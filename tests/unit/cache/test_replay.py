"""The replay floor (replay.py) through the KeyCache: which replica answers stand."""

from __future__ import annotations

import os
import uuid

from keygate.cache.keys import KeyCache
from keygate.domain import changes

from .conftest import Clock, add_key
from .fakes import MemoryStore


def settle(cache: KeyCache, position: int) -> None:
    cache.trust(float("inf"), cache.mark(), position)


def test_no_replica_answer_stands_before_a_first_ping(cache: KeyCache) -> None:
    assert cache.replay.floor() is None
    settle(cache, 7)
    assert cache.replay.floor() == 7


def test_a_change_unsettles_the_floor_until_a_ping_sent_after_it(cache: KeyCache) -> None:
    settle(cache, 7)
    mark = cache.mark()  # a ping sent now ...
    cache.apply(changes.KeyChanged(uuid.uuid4()))  # ... races a change: it cannot vouch for it
    cache.trust(float("inf"), mark, 9)
    assert cache.replay.floor() is None
    settle(cache, 10)
    assert cache.replay.floor() == 10


def test_positions_only_move_forward_while_listening(cache: KeyCache) -> None:
    settle(cache, 10)
    late = cache.mark()
    settle(cache, 12)
    cache.trust(float("inf"), late, 11)  # an older ping's answer, processed late
    assert cache.replay.floor() == 12


def test_a_lost_listener_unsettles_and_forgets_the_old_primarys_position(cache: KeyCache) -> None:
    settle(cache, 100)
    stale = cache.mark()
    cache.desynchronize()
    cache.trust(float("inf"), stale, 100)  # the old connection's ping cannot settle the new one
    assert cache.replay.floor() is None
    settle(cache, 40)  # a promoted replica may be behind the old primary's position
    assert cache.replay.floor() == 40


async def test_an_unreadable_change_and_a_new_filter_unsettle(cache: KeyCache) -> None:
    settle(cache, 1)
    cache.apply_payload("not json")
    assert cache.replay.floor() is None
    settle(cache, 2)
    await cache.rebuild_filter()
    assert cache.replay.floor() is None


async def test_only_the_complete_filter_vouches_for_a_missing_key(cache: KeyCache, store: MemoryStore) -> None:
    _, secret = await add_key(store)
    assert not cache.replay.vouches(secret)  # no filter: the key may be newer than the floor
    await cache.rebuild_filter()
    assert cache.replay.vouches(secret)  # the filter holds it: a replica at the floor has it (or it is gone)
    assert not cache.replay.vouches(os.urandom(32))  # unknown: maybe created a moment ago, ask the primary


def test_a_silent_listener_past_its_deadline_settles_nothing(cache: KeyCache, clock: Clock) -> None:
    cache.synchronize(clock.now + 1)
    cache.trust(clock.now + 1, cache.mark(), 5)
    assert cache.replay.floor() == 5
    clock.now += 1  # no ping answered since: changes may be going unheard
    assert cache.replay.floor() is None
