"""A secret replaced by a rotation (a retired secret) cannot seize its key; overlapping rotations fail.

The trial's attack: root rotates an admin key (`apikeys:*`) with a grace period; the holder of the
leaked old secret then mints a key that never expires, or rotates the key itself with grace 0, which
cuts off the owner's new secret. A retired secret's end counts wherever the key's expiry counts, and
it cannot rotate, re-enable, change or delete the key that retired it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from keygate.v1 import keys_pb2

from .support import Client, auth, in_, rpc_error

GRACE = 120


async def rotated_admin(client: Client) -> tuple[keys_pb2.CreateKeyResponse, str, str]:
    """An admin key rotated with a grace period: (the key, its retired secret, its current secret)."""
    admin = await client.create(name="admin", permissions=["apikeys:*", "chatflows:*"])
    rotated = await client.keys.RotateKey(keys_pb2.RotateKeyRequest(
        id=admin.key.id, grace_period=duration_pb2.Duration(seconds=GRACE)), metadata=auth(client.root))
    return admin, admin.api_key, rotated.api_key


async def code_of(call: object) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code().name
    return "OK"


def update(key_id: str, **fields: object) -> keys_pb2.UpdateKeyRequest:
    return keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(id=key_id, **fields),
                                     update_mask=field_mask_pb2.FieldMask(paths=list(fields)))


async def test_a_retired_secret_cannot_outlive_or_replace_the_secret_that_retired_it(client: Client) -> None:
    admin, old, new = await rotated_admin(client)
    victim = await client.create(name="other", permissions=["chatflows:view"], expire_time=in_(timedelta(hours=1)))
    disabled = await client.create(name="disabled", permissions=["chatflows:view"])
    await client.keys.UpdateKey(update(disabled.key.id, disabled=True), metadata=auth(client.root))
    rotate_self = keys_pb2.RotateKeyRequest(id=admin.key.id)

    got = {
        "create, never expires": await code_of(client.create(old, name="x", permissions=["chatflows:view"])),
        "create, outlives the grace": await code_of(client.create(
            old, name="x", permissions=["chatflows:view"], expire_time=in_(timedelta(seconds=GRACE + 60)))),
        "rotate its own key": await code_of(client.keys.RotateKey(rotate_self, metadata=auth(old))),
        "rotate another key": await code_of(client.keys.RotateKey(
            keys_pb2.RotateKeyRequest(id=victim.key.id), metadata=auth(old))),
        "re-enable a key": await code_of(client.keys.UpdateKey(update(disabled.key.id, disabled=False),
                                                               metadata=auth(old))),
        "extend another key": await code_of(client.keys.UpdateKey(
            update(victim.key.id, expire_time=in_(timedelta(days=1))), metadata=auth(old))),
        "change its own key": await code_of(client.keys.UpdateKey(update(admin.key.id, name="mine"),
                                                                  metadata=auth(old))),
        "delete its own key": await code_of(client.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=admin.key.id),
                                                                  metadata=auth(old))),
        # What it keeps during its grace: reads, and keys that end no later than it does.
        "read": await code_of(client.keys.GetKey(keys_pb2.GetKeyRequest(id=victim.key.id), metadata=auth(old))),
        "create, within the grace": await code_of(client.create(
            old, name="x", permissions=["chatflows:view"], expire_time=in_(timedelta(seconds=GRACE - 30)))),
    }

    denied = "PERMISSION_DENIED"
    assert got == {
        "create, never expires": denied, "create, outlives the grace": denied, "rotate its own key": denied,
        "rotate another key": denied, "re-enable a key": denied, "extend another key": denied,
        "change its own key": denied, "delete its own key": denied, "read": "OK", "create, within the grace": "OK",
    }
    # The owner's current secret still works and can do all of it.
    assert (await client.check(new, "chatflows/x", "chatflows:view")).allowed
    assert await code_of(client.keys.RotateKey(rotate_self, metadata=auth(new))) == "OK"


async def test_the_refusals_are_audited(client: Client) -> None:
    admin, old, _ = await rotated_admin(client)
    await code_of(client.keys.RotateKey(keys_pb2.RotateKeyRequest(id=admin.key.id), metadata=auth(old)))
    events = await client.keys.ListAuditEvents(keys_pb2.ListAuditEventsRequest(action="RotateKey"),
                                               metadata=auth(client.root))
    denied = [e for e in events.events if e.outcome == "DENIED"]
    assert len(denied) == 1 and denied[0].actor_key_id == admin.key.id
    assert "current secret" in denied[0].reason


async def test_of_two_rotations_with_one_etag_exactly_one_wins(client: Client) -> None:
    key = await client.create(permissions=["chatflows:view"])
    for _ in range(10):
        etag = (await client.keys.GetKey(keys_pb2.GetKeyRequest(id=key.key.id), metadata=auth(client.root))).etag
        request = keys_pb2.RotateKeyRequest(id=key.key.id, etag=etag)
        results = await asyncio.gather(*[code_of(client.keys.RotateKey(request, metadata=auth(client.root)))
                                         for _ in range(2)])
        assert sorted(results) == ["ABORTED", "OK"]


async def test_a_rotation_that_waited_for_another_change_fails(client: Client, db: asyncpg.Connection) -> None:
    """Without an etag: the rotation read the key, then had to wait for its lock while another change
    committed. Answering OK would silently retire the secret that change may have handed out."""
    key = await client.create(permissions=["chatflows:view"])
    async with db.transaction():
        await db.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", key.key.id)
        rotation = asyncio.ensure_future(client.keys.RotateKey(keys_pb2.RotateKeyRequest(id=key.key.id),
                                                               metadata=auth(client.root)))
        await asyncio.sleep(0.3)  # the rotation is now waiting for the row lock
        await db.execute("UPDATE api_keys SET version = version + 1 WHERE id = $1", key.key.id)
    err = await rpc_error(rotation)
    assert err.code() == grpc.StatusCode.ABORTED
    assert (await client.check(key.api_key, "chatflows/x", "chatflows:view")).allowed  # nothing was retired
