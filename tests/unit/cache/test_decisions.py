"""Remembered decisions answer only while nothing they rest on has changed, aged or expired."""

from __future__ import annotations

from datetime import timedelta

from keygate.cache.keys import KeyCache
from keygate.domain import changes
from keygate.domain.decision import Decision
from keygate.domain.evaluators.base import CheckItem, Question
from keygate.domain.evaluators.pipeline import Pipeline
from keygate.domain.permissions import Catalog
from keygate.domain.resources import target

from .conftest import NOW, TTL, Clock, add_key
from .fakes import MemoryStore


async def decided(cache: KeyCache, catalog: Catalog, secret: bytes, resource: str = "chatflows/a") -> Decision:
    credential = await cache.credential(secret)
    assert credential is not None
    item = CheckItem(resource, "chatflows:view", "w")
    return Pipeline().decide(credential, Question(item, target(catalog, resource, "chatflows:view"), "w", NOW))


async def test_a_decision_is_recalled_until_an_entry_changes(cache: KeyCache, store: MemoryStore,
                                                             catalog: Catalog) -> None:
    key_id, secret = await add_key(store)
    decision = await decided(cache, catalog, secret)
    question = (secret, "chatflows/a", "chatflows:view", "")
    cache.remember(question, decision, secret, None)
    assert cache.recall(question, NOW.timestamp()) is decision and cache.hits["decisions"] == 1
    cache.apply(changes.KeyChanged(key_id))
    assert cache.recall(question, NOW.timestamp()) is None


async def test_a_decision_is_not_recalled_past_its_entries_ttl(cache: KeyCache, store: MemoryStore,
                                                               catalog: Catalog, clock: Clock) -> None:
    _, secret = await add_key(store)
    await cache.bindings("w", "chatflows/a")
    clock.now += TTL / 2  # the bindings are older than the credential read below: they go stale first
    decision = await decided(cache, catalog, secret)
    question = (secret, "chatflows/a", "chatflows:view", "w")
    cache.remember(question, decision, secret, ("w", "chatflows/a"))
    clock.now += TTL / 2 - 0.1
    assert cache.recall(question, NOW.timestamp()) is decision
    clock.now += 0.1
    assert cache.recall(question, NOW.timestamp()) is None


async def test_a_decision_is_not_recalled_once_the_key_expires(cache: KeyCache, store: MemoryStore,
                                                               catalog: Catalog) -> None:
    _, secret = await add_key(store, expire_time=NOW + timedelta(seconds=1))
    decision = await decided(cache, catalog, secret)
    question = (secret, "chatflows/a", "chatflows:view", "")
    cache.remember(question, decision, secret, None)
    assert cache.recall(question, NOW.timestamp()) is decision
    assert cache.recall(question, (NOW + timedelta(seconds=1)).timestamp()) is None


async def test_a_decision_is_not_recalled_past_the_listeners_deadline(cache: KeyCache, store: MemoryStore,
                                                                      catalog: Catalog, clock: Clock) -> None:
    _, secret = await add_key(store)
    cache.synchronize(clock.now + 1)
    decision = await decided(cache, catalog, secret)
    question = (secret, "chatflows/a", "chatflows:view", "")
    cache.remember(question, decision, secret, None)
    clock.now += 1
    assert cache.recall(question, NOW.timestamp()) is None


async def test_remembered_decisions_are_bounded(cache: KeyCache, store: MemoryStore, catalog: Catalog) -> None:
    _, secret = await add_key(store)
    for i in range(10):
        resource = f"chatflows/{i}"
        cache.remember((secret, resource), await decided(cache, catalog, secret, resource), secret, None)
    assert cache.sizes()["decisions"] == cache.settings.max_decisions
    assert cache.evictions()["decisions"] == 10 - cache.settings.max_decisions
