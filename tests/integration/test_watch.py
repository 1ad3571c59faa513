"""WatchChanges against a real keygate and PostgreSQL: each kind of event, who may subscribe and what each
subscriber sees, a slow subscriber ended, and no key material in any event."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from uuid import uuid4

import asyncpg
import grpc
import pytest

from keygate.domain import changes
from keygate.domain.keys import fingerprint
from keygate.server import App
from keygate.store.postgres import PING
from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth

# The listener's connection: the only one of this database whose last statement is its LISTEN or its ping ($1: PING).
LISTENERS = """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid() AND (query LIKE 'LISTEN%' OR query = $1)"""
EVENT_SECONDS = 5.0  # far above the milliseconds an event takes: reaching it means it never came


class Stream:
    """One WatchChanges call and what it has delivered so far."""

    def __init__(self, client: Client, key: str) -> None:
        self.call = client.authz.WatchChanges(authz_pb2.WatchChangesRequest(), metadata=auth(key))

    async def next(self) -> authz_pb2.ChangeEvent:
        event = await asyncio.wait_for(self.call.read(), EVENT_SECONDS)
        assert event is not grpc.aio.EOF, "the stream ended"
        return event

    async def until(self, kind: int, **fields: object) -> list[authz_pb2.ChangeEvent]:
        """Events up to and including the first of `kind` with `fields`."""
        seen = []
        while True:
            event = await self.next()
            seen.append(event)
            if event.kind == kind and all(getattr(event, k) == v for k, v in fields.items()):
                return seen


@pytest.fixture
async def listening(app: App) -> App:
    await asyncio.wait_for(app.listener.connected.wait(), EVENT_SECONDS)
    return app


@pytest.fixture
async def root_stream(listening: App, client: Client) -> AsyncIterator[Stream]:
    stream = Stream(client, client.root)
    first = await stream.next()
    assert (first.kind, first.listening, first.workspace_id) == (authz_pb2.RESYNC, True, "")
    yield stream
    stream.call.cancel()


async def test_the_stream_delivers_key_binding_and_delete_events(root_stream: Stream, client: Client) -> None:
    created = await client.create(name="svc", permissions=["chatflows:update", "predictions:create"],
                                  workspace_id="ws1")
    await root_stream.until(authz_pb2.KEY_CHANGED, key_id=created.key.id, workspace_id="ws1")
    await client.keys.BindResource(keys_pb2.BindResourceRequest(resource="Chatflows/F1", key_id=created.key.id),
                                   metadata=auth(client.root))
    bound = (await root_stream.until(authz_pb2.BINDING_CHANGED))[-1]
    assert (bound.workspace_id, bound.resource, bound.key_id) == ("ws1", "chatflows/F1", "")
    await client.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=created.key.id), metadata=auth(client.root))
    await root_stream.until(authz_pb2.KEY_CHANGED, key_id=created.key.id, workspace_id="ws1")


async def test_subscribing_needs_a_live_key_with_apikeys_view_over_a_whole_workspace(
        listening: App, client: Client) -> None:
    viewer = await client.create(permissions=["apikeys:view"])
    plain = await client.create(permissions=["chatflows:view"])
    scoped = await client.create(permissions=["apikeys:view", "chatflows:view"], resources=["chatflows/a"])
    for key, code in (("", grpc.StatusCode.UNAUTHENTICATED), ("kg_" + "x" * 49, grpc.StatusCode.UNAUTHENTICATED),
                      (plain.api_key, grpc.StatusCode.PERMISSION_DENIED),
                      (scoped.api_key, grpc.StatusCode.PERMISSION_DENIED)):
        call = client.authz.WatchChanges(authz_pb2.WatchChangesRequest(), metadata=auth(key))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(call.read(), EVENT_SECONDS)
        assert refused.value.code() is code, key
        assert not key or key not in (refused.value.details() or "")
    stream = Stream(client, viewer.api_key)
    first = await stream.next()
    assert (first.kind, first.workspace_id) == (authz_pb2.RESYNC, "ws1")
    stream.call.cancel()


async def test_a_workspace_watcher_sees_its_workspace_only(root_stream: Stream, client: Client) -> None:
    viewer = await client.create(permissions=["apikeys:view"], workspace_id="ws1")
    stream = Stream(client, viewer.api_key)
    await stream.next()  # RESYNC
    other = await client.create(workspace_id="ws2")
    await client.keys.BindResource(keys_pb2.BindResourceRequest(resource="chatflows/x", key_id=other.key.id,
                                                                actions=["chatflows:view"]),
                                   metadata=auth(client.root))
    own = await client.create(workspace_id="ws1")
    seen = await stream.until(authz_pb2.KEY_CHANGED, key_id=own.key.id)
    assert all(e.workspace_id == "ws1" for e in seen) and other.key.id not in str(seen)
    everything = await root_stream.until(authz_pb2.KEY_CHANGED, key_id=own.key.id)
    assert {e.workspace_id for e in everything} >= {"ws1", "ws2"}
    stream.call.cancel()


async def test_a_watcher_whose_key_is_revoked_gets_no_further_event(root_stream: Stream, client: Client) -> None:
    viewer = await client.create(permissions=["apikeys:view"], workspace_id="ws1")
    stream = Stream(client, viewer.api_key)
    await stream.next()  # RESYNC
    await client.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=viewer.key.id), metadata=auth(client.root))
    await client.create(workspace_id="ws1")  # an event the revoked watcher must not see
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        while True:
            event = await stream.next()
            assert event.kind != authz_pb2.KEY_CHANGED or event.key_id == viewer.key.id, event
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_lost_listener_is_a_resync_not_listening_then_listening(
        root_stream: Stream, db: asyncpg.Connection) -> None:
    assert await db.fetch(LISTENERS, PING)
    lost = await root_stream.next()
    assert (lost.kind, lost.listening) == (authz_pb2.RESYNC, False)
    back = await root_stream.until(authz_pb2.RESYNC, listening=True)
    assert back


async def test_a_subscriber_that_falls_behind_is_ended_with_resource_exhausted(
        root_stream: Stream, listening: App) -> None:
    feed = listening.cache.feed
    for _ in range(5000):  # a burst, all queued before the stream can send one: more than a queue holds
        feed.publish(changes.KeyChanged(uuid4(), workspace_id="ws1"))
    assert len(feed) == 0
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while True:
            await root_stream.next()
    assert ended.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "resubscribe" in (ended.value.details() or "")


async def test_shutdown_ends_every_stream_with_unavailable(root_stream: Stream, listening: App) -> None:
    listening.cache.feed.close()
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await root_stream.next()
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_no_event_carries_key_material(root_stream: Stream, client: Client) -> None:
    """Every mutation that notifies, each of whose keys, digests and fingerprints is looked for in the bytes
    of every event the stream delivered."""
    created = await client.create(name="k", permissions=["chatflows:update", "predictions:create"])
    key_id = created.key.id
    rotated = await client.keys.RotateKey(keys_pb2.RotateKeyRequest(id=key_id), metadata=auth(client.root))
    await client.keys.UpdateKey(keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(id=key_id, disabled=True),
                                                          update_mask={"paths": ["disabled"]}),
                                metadata=auth(client.root))
    await client.keys.BindResource(keys_pb2.BindResourceRequest(resource="chatflows/f", key_id=key_id),
                                   metadata=auth(client.root))
    await client.keys.UnbindResource(keys_pb2.UnbindResourceRequest(resource="chatflows/f", key_id=key_id),
                                     metadata=auth(client.root))
    await client.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=key_id), metadata=auth(client.root))
    seen = []
    while len([e for e in seen if e.kind == authz_pb2.KEY_CHANGED]) < 4:
        seen.append(await root_stream.next())
    wire = b"".join(e.SerializeToString() for e in seen)
    for key in (created.api_key, rotated.api_key, client.root):
        digest = hashlib.sha256(key.encode()).digest()
        for material in (key.encode(), digest, digest.hex().encode(), fingerprint(digest),
                         fingerprint(digest).hex().encode()):
            assert material not in wire
    assert {e.kind for e in seen} == {authz_pb2.KEY_CHANGED, authz_pb2.BINDING_CHANGED}
