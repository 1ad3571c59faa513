"""keygate.client's local decision cache against a real keygate: repeated checks answered in-process, a
revocation reaching the cache within a second, a broken stream clearing it, its ttl and size bounds, and
what it never keeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import asyncpg
import pytest
from google.protobuf import duration_pb2

from keygate.client import Authorizer, ClientSettings, Decision, DecisionCode, LocalCache, SyncAuthorizer
from keygate.client.cache import SETTLE, DecisionCache, question
from keygate.server import App
from keygate.store.postgres import PING
from keygate.v1 import keys_pb2

from .support import Client, auth, in_
from .test_watch import EVENT_SECONDS, LISTENERS

REVOKED_WITHIN = 1.0  # seconds: the README's promise


def settings_of(app: App) -> ClientSettings:
    return ClientSettings(server=f"127.0.0.1:{app.port}", timeout=2.0)


async def until(condition: Callable[[], bool], within: float = EVENT_SECONDS) -> float:
    """Seconds until `condition` held; fails past `within`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, "condition never held"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def settled(made: keys_pb2.CreateKeyResponse) -> keys_pb2.CreateKeyResponse:
    """A key whose creation event is old enough for decisions about it to be kept (see SETTLE)."""
    await asyncio.sleep(SETTLE + 0.05)
    return made


async def keeping(decisions: DecisionCache) -> None:
    """Until the cache keeps decisions: its stream live, and the first resync settled."""
    await until(lambda: decisions.live)
    await asyncio.sleep(SETTLE + 0.05)


@pytest.fixture
async def watcher(app: App, client: Client) -> str:
    await asyncio.wait_for(app.listener.connected.wait(), EVENT_SECONDS)
    return (await client.create(name="watcher", permissions=["apikeys:view"], workspace_id="ws1")).api_key


@pytest.fixture
async def cached(app: App, watcher: str) -> AsyncIterator[Authorizer]:
    async with Authorizer(settings_of(app), cache=LocalCache(watch_key=watcher, max_entries=3, ttl=30)) as authz:
        await authz.check("", "chatflows/a", "chatflows:view")  # opens the channel and the stream
        assert authz.decisions is not None
        await keeping(authz.decisions)
        yield authz


def decisions_of(authz: Authorizer | SyncAuthorizer) -> DecisionCache:
    assert authz.decisions is not None
    return authz.decisions


async def test_a_repeated_check_is_answered_in_process_until_the_key_is_revoked(
        cached: Authorizer, client: Client) -> None:
    made = await settled(await client.create(permissions=["chatflows:view"]))
    first = await cached.check(made.api_key, "chatflows/a", "chatflows:view")
    again = await cached.check(made.api_key, "chatflows/a", "chatflows:view")
    assert first.allowed and again is first  # the very object: no round trip
    await client.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=made.key.id), metadata=auth(client.root))
    asked = question(made.api_key, "chatflows/a", "chatflows:view", "", "")
    took = await until(lambda: decisions_of(cached).get(asked) is None)
    assert took < REVOKED_WITHIN
    refused = await cached.check(made.api_key, "chatflows/a", "chatflows:view")
    assert (refused.allowed, refused.code) == (False, DecisionCode.KEY_NOT_FOUND)


async def test_a_binding_change_drops_the_decisions_about_that_resource_in_any_spelling(
        cached: Authorizer, client: Client) -> None:
    other = await client.create(permissions=["chatflows:update", "predictions:create"])
    made = await settled(await client.create(permissions=["chatflows:update", "predictions:create"]))
    resource = "Chatflows/9B2C0E5C6D1F4A7B8C9D0E1F2A3B4C5D"
    assert (await cached.check(made.api_key, resource, "predictions:create")).allowed
    assert len(decisions_of(cached)) == 1
    await client.keys.BindResource(keys_pb2.BindResourceRequest(resource=resource.lower(), key_id=other.key.id),
                                   metadata=auth(client.root))
    await until(lambda: len(decisions_of(cached)) == 0)
    refused = await cached.check(made.api_key, resource, "predictions:create")
    assert refused.code is DecisionCode.RESOURCE_BOUND_TO_OTHER_KEY


async def test_a_lost_server_feed_or_a_broken_stream_clears_the_cache(
        app: App, cached: Authorizer, client: Client, db: asyncpg.Connection) -> None:
    made = await settled(await client.create(permissions=["chatflows:view"]))
    decisions = decisions_of(cached)
    await cached.check(made.api_key, "chatflows/a", "chatflows:view")
    assert len(decisions) == 1
    assert await db.fetch(LISTENERS, PING)  # keygate's own feed lost: its RESYNC clears the client's cache
    await until(lambda: len(decisions) == 0 and not decisions.live)
    await keeping(decisions)  # the server listens again, and says so
    await cached.check(made.api_key, "chatflows/a", "chatflows:view")
    assert len(decisions) == 1
    app.cache.feed.close()  # as at shutdown: the stream ends
    await until(lambda: len(decisions) == 0 and not decisions.live)
    assert (await cached.check(made.api_key, "chatflows/a", "chatflows:view")).allowed  # asked remotely
    assert len(decisions) == 0


async def test_the_cache_holds_at_most_max_entries_and_each_for_at_most_its_ttl(
        app: App, watcher: str, client: Client) -> None:
    made = await client.create(permissions=["chatflows:view"])
    async with Authorizer(settings_of(app), cache=LocalCache(watch_key=watcher, max_entries=3, ttl=2.0)) as authz:
        await authz.check(made.api_key, "chatflows/a", "chatflows:view")
        decisions = decisions_of(authz)
        await keeping(decisions)
        for n in range(5):
            await authz.check(made.api_key, f"chatflows/{n}", "chatflows:view")
        assert (len(decisions), decisions.evictions) == (3, 2)
        asked = question(made.api_key, "chatflows/4", "chatflows:view", "", "")
        assert decisions.get(asked) is not None
        await asyncio.sleep(2.05)
        assert decisions.get(asked) is None


async def test_never_kept_unknown_keys_limited_keys_other_workspaces(
        cached: Authorizer, client: Client) -> None:
    limited = await client.create(rate_limits=[keys_pb2.RateLimit(name="s", limit=100,
                                                                  window=duration_pb2.Duration(seconds=60))])
    elsewhere = await settled(await client.create(workspace_id="ws2"))
    for key in ("fl_" + "x" * 49, limited.api_key, elsewhere.api_key):
        await cached.check(key, "chatflows/a", "chatflows:view")
    assert len(decisions_of(cached)) == 0


async def test_a_cached_decision_ends_with_the_key(cached: Authorizer, client: Client) -> None:
    made = await settled(await client.create(expire_time=in_(timedelta(seconds=2.5))))
    decision = await cached.check(made.api_key, "chatflows/a", "chatflows:view")
    assert decision.allowed and decision.key_expire_time is not None
    asked = question(made.api_key, "chatflows/a", "chatflows:view", "", "")
    assert decisions_of(cached).get(asked) is decision
    await asyncio.sleep(max(0.0, decision.key_expire_time.timestamp() - time.time()) + 0.05)
    assert decisions_of(cached).get(asked) is None
    assert (await cached.check(made.api_key, "chatflows/a", "chatflows:view")).code is DecisionCode.KEY_EXPIRED


async def test_the_sync_authorizer_caches_and_hears_revocations_on_its_thread(
        app: App, watcher: str, client: Client) -> None:
    made = await settled(await client.create(permissions=["chatflows:view"]))
    authz = SyncAuthorizer(settings_of(app), cache=LocalCache(watch_key=watcher))
    decisions = decisions_of(authz)
    try:
        await keeping(decisions)

        def twice() -> tuple[Decision, Decision]:
            return (authz.check(made.api_key, "chatflows/a", "chatflows:view"),
                    authz.check(made.api_key, "chatflows/a", "chatflows:view"))

        first, again = await asyncio.to_thread(twice)  # keygate runs on this loop: it must stay free
        assert first.allowed and again is first
        await client.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=made.key.id), metadata=auth(client.root))
        assert await until(lambda: len(decisions) == 0) < REVOKED_WITHIN
    finally:
        await asyncio.to_thread(authz.close)
    assert not decisions.live
