"""KeyService as an admin sees it: create, get, list, update, delete, rotate, usage."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth, field_violations, in_, rpc_error

KEY_RE = re.compile(r"^fl_[0-9A-Za-z]{49}$")
DEAD_SECRET = (authz_pb2.KEY_EXPIRED, authz_pb2.KEY_NOT_FOUND)
ADMIN_PERMISSIONS = ["apikeys:*", "chatflows:*", "tools:*", "predictions:create"]


# --- helpers -------------------------------------------------------------------------


def masked(api_key: str) -> str:
    """The display form the spec promises: prefix, four leading and four trailing characters."""
    return f"fl_{api_key[3:7]}...{api_key[-4:]}"


def leaks(api_key: str, message: Any) -> bool:
    """Does a protobuf message carry the key, its secret part, or its digest in any form?"""
    wire = message.SerializeToString()
    secret = api_key[3:]
    material = (api_key.encode(), secret[:20].encode(), secret[-20:].encode(),
                hashlib.sha256(api_key.encode()).digest(), hashlib.sha256(api_key.encode()).hexdigest().encode())
    return any(m in wire for m in material)


def fields(key: keys_pb2.ApiKey) -> dict[str, object]:
    """The updatable fields of a key, as plain values."""
    return {
        "name": key.name,
        "description": key.description,
        "permissions": list(key.permissions),
        "resources": list(key.resources),
        "expire_time": key.expire_time.ToDatetime(tzinfo=UTC) if key.HasField("expire_time") else None,
        "disabled": key.disabled,
        "metadata": dict(key.metadata),
    }


async def root_id(client: Client) -> str:
    return (await client.check(client.root)).key_id


async def get(client: Client, key_id: str, caller: str | None = None) -> keys_pb2.ApiKey:
    return await client.keys.GetKey(keys_pb2.GetKeyRequest(id=key_id), metadata=auth(caller or client.root))


async def update(client: Client, key: keys_pb2.ApiKey, paths: list[str],
                 caller: str | None = None) -> keys_pb2.ApiKey:
    request = keys_pb2.UpdateKeyRequest(key=key, update_mask=field_mask_pb2.FieldMask(paths=paths))
    return await client.keys.UpdateKey(request, metadata=auth(caller or client.root))


async def list_all(client: Client, caller: str | None = None, page_size: int = 0,
                   workspace_id: str = "") -> tuple[list[keys_pb2.ApiKey], int]:
    """Every key ListKeys returns, following next_page_token; also the number of pages."""
    keys: list[keys_pb2.ApiKey] = []
    token, pages = "", 0
    while True:
        page = await client.keys.ListKeys(
            keys_pb2.ListKeysRequest(workspace_id=workspace_id, page_size=page_size, page_token=token),
            metadata=auth(caller or client.root))
        pages += 1
        assert page_size == 0 or len(page.keys) <= page_size
        keys.extend(page.keys)
        token = page.next_page_token
        if not token:
            return keys, pages
        assert pages < 100, "ListKeys never ends"


async def rotate(client: Client, key_id: str, grace: duration_pb2.Duration | None) -> keys_pb2.CreateKeyResponse:
    request = keys_pb2.RotateKeyRequest(id=key_id)
    if grace is not None:
        request.grace_period.CopyFrom(grace)
    return await client.keys.RotateKey(request, metadata=auth(client.root))


async def poll(probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout: float) -> Any:
    """Call `probe` until `done(result)` or `timeout` seconds pass; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if done(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.05)


async def admin_key(client: Client, workspace_id: str = "ws1") -> keys_pb2.CreateKeyResponse:
    return await client.create(name=f"admin of {workspace_id}", workspace_id=workspace_id,
                               permissions=ADMIN_PERMISSIONS)


# --- create, get, list ----------------------------------------------------------------


async def test_create_returns_plaintext_once_with_a_masked_display(client: Client) -> None:
    first = await client.create()
    second = await client.create()

    assert KEY_RE.match(first.api_key) and KEY_RE.match(second.api_key)
    assert first.api_key != second.api_key
    assert first.key.display == masked(first.api_key) and first.key.display != first.api_key
    assert not leaks(first.api_key, first.key)
    assert uuid.UUID(first.key.id) and first.key.id != second.key.id
    checked = await client.check(first.api_key, "chatflows/abc", "chatflows:view")
    assert (checked.allowed, checked.key_id) == (True, first.key.id)


async def test_get_and_list_show_only_the_display(client: Client) -> None:
    created = [await client.create(name=f"k{i}") for i in range(3)]
    listed, _ = await list_all(client)
    by_id = {k.id: k for k in listed}

    for c in created:
        fetched = await get(client, c.key.id)
        assert fetched.display == by_id[c.key.id].display == masked(c.api_key)
        for shown in (fetched, by_id[c.key.id]):
            assert not leaks(c.api_key, shown)


@pytest.mark.parametrize("caller_kind", ["root", "workspace admin"])
async def test_every_field_round_trips(client: Client, caller_kind: str) -> None:
    if caller_kind == "root":
        caller, caller_id = client.root, await root_id(client)
    else:
        admin = await admin_key(client)
        caller, caller_id = admin.api_key, admin.key.id
    expire = in_(timedelta(days=3))
    before = datetime.now(UTC)
    created = await client.create(
        caller, name="billing bot", description="posts invoices\nnightly", workspace_id="ws1",
        permissions=["chatflows:update", "predictions:create"], resources=["chatflows/abc", "tools/*"],
        metadata={"team": "billing", "ticket": "OPS-12"}, expire_time=expire)
    after = datetime.now(UTC)
    key = created.key

    assert fields(key) == {
        "name": "billing bot", "description": "posts invoices\nnightly",
        "permissions": ["chatflows:update", "predictions:create"], "resources": ["chatflows/abc", "tools/*"],
        "expire_time": expire.ToDatetime(tzinfo=UTC), "disabled": False,
        "metadata": {"team": "billing", "ticket": "OPS-12"},
    }
    assert (key.workspace_id, key.created_by, key.root) == ("ws1", caller_id, False)
    slack = timedelta(seconds=1)
    assert before - slack <= key.create_time.ToDatetime(tzinfo=UTC) <= after + slack
    assert key.update_time == key.create_time
    assert key.etag and key.usage_count == 0 and not key.HasField("last_used_time")

    listed, _ = await list_all(client, workspace_id="ws1")
    assert await get(client, key.id) == key
    assert [k for k in listed if k.id == key.id] == [key]


@pytest.mark.parametrize("page_size", [1, 3, 7, 50])
async def test_list_pages_walk_every_key_exactly_once(client: Client, page_size: int) -> None:
    ids = [(await client.create(name=f"key {i}")).key.id for i in range(7)]
    await client.create(workspace_id="ws2")

    listed, pages = await list_all(client, page_size=page_size, workspace_id="ws1")

    assert [k.id for k in listed] == ids  # oldest first, no repeats, none missing
    assert pages == max(1, -(-len(ids) // page_size))


async def test_list_is_limited_to_a_workspace(client: Client) -> None:
    admin = await admin_key(client, "ws1")
    ws1 = {admin.key.id} | {(await client.create(workspace_id="ws1")).key.id for _ in range(2)}
    ws2 = {(await client.create(workspace_id="ws2")).key.id for _ in range(2)}
    root = await root_id(client)

    async def ids(caller: str | None = None, workspace_id: str = "") -> set[str]:
        return {k.id for k in (await list_all(client, caller, page_size=2, workspace_id=workspace_id))[0]}

    assert await ids() == ws1 | ws2 | {root}
    assert await ids(workspace_id="ws2") == ws2
    assert await ids(workspace_id="ws1") == ws1
    assert await ids(admin.api_key) == ws1
    assert await ids(admin.api_key, "ws1") == ws1


async def test_a_workspace_key_cannot_list_another_workspace(client: Client) -> None:
    admin = await admin_key(client, "ws1")
    await client.create(workspace_id="ws2")

    refused = await rpc_error(client.keys.ListKeys(keys_pb2.ListKeysRequest(workspace_id="ws2"),
                                                   metadata=auth(admin.api_key)))

    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


# --- update ---------------------------------------------------------------------------

ORIGINAL: dict[str, Any] = {
    "name": "original", "description": "old words", "permissions": ["chatflows:view"],
    "resources": ["chatflows/*"], "metadata": {"team": "red", "env": "prod"},
}


def replacement(key_id: str) -> keys_pb2.ApiKey:
    """A request carrying a new value for every updatable field."""
    return keys_pb2.ApiKey(
        id=key_id, name="renamed", description="new words", permissions=["chatflows:update", "tools:view"],
        resources=["chatflows/abc", "tools/*"], expire_time=in_(timedelta(hours=5)), disabled=True,
        metadata={"team": "blue"})


async def original_key(client: Client) -> keys_pb2.ApiKey:
    return (await client.create(**ORIGINAL, expire_time=in_(timedelta(hours=1)))).key


@pytest.mark.parametrize("path", ["name", "description", "permissions", "resources", "expire_time",
                                  "disabled", "metadata", "*"])
async def test_update_changes_exactly_the_masked_fields(client: Client, path: str) -> None:
    old = await original_key(client)
    request = replacement(old.id)

    updated = await update(client, request, [path])

    wanted = fields(request) if path == "*" else fields(old) | {path: fields(request)[path]}
    assert fields(updated) == wanted
    assert await get(client, old.id) == updated
    assert updated.etag != old.etag
    assert updated.update_time.ToDatetime() > old.update_time.ToDatetime()
    assert (updated.create_time, updated.display, updated.workspace_id) == (old.create_time, old.display, "ws1")


async def test_update_with_the_current_etag_works_and_a_stale_one_is_aborted(client: Client) -> None:
    old = await original_key(client)

    first = await update(client, keys_pb2.ApiKey(id=old.id, name="first", etag=old.etag), ["name"])
    stale = await rpc_error(update(client, keys_pb2.ApiKey(id=old.id, name="second", etag=old.etag), ["name"]))
    unconditional = await update(client, keys_pb2.ApiKey(id=old.id, description="no etag"), ["description"])

    assert first.name == "first" and first.etag != old.etag
    assert stale.code() == grpc.StatusCode.ABORTED
    assert (unconditional.name, unconditional.description) == ("first", "no etag")
    assert unconditional.etag not in (old.etag, first.etag)


@pytest.mark.parametrize("paths, bad", [
    (["workspace_id"], 0),
    (["name", "id"], 1),
    (["name", "description", "display"], 2),
    (["usage_count"], 0),
    (["etag"], 0),
    (["Name"], 0),
])
async def test_update_refuses_a_path_it_cannot_update(client: Client, paths: list[str], bad: int) -> None:
    old = await original_key(client)
    request = replacement(old.id)
    request.workspace_id = "ws2"

    error = await rpc_error(update(client, request, paths))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error)
    assert list(violations) == [f"update_mask.paths[{bad}]"]
    assert repr(paths[bad]) in violations[f"update_mask.paths[{bad}]"]
    assert await get(client, old.id) == old


async def test_update_refuses_an_empty_mask(client: Client) -> None:
    old = await original_key(client)

    error = await rpc_error(update(client, replacement(old.id), []))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "update_mask" in field_violations(error)
    assert await get(client, old.id) == old


async def test_disable_then_enable(client: Client) -> None:
    created = await client.create()

    async def state() -> tuple[bool, int]:
        checked = await client.check(created.api_key, "chatflows/abc")
        return checked.allowed, checked.code

    assert await state() == (True, authz_pb2.OK)
    disabled = await update(client, keys_pb2.ApiKey(id=created.key.id, disabled=True), ["disabled"])
    assert disabled.disabled and (await get(client, created.key.id)).disabled
    assert await state() == (False, authz_pb2.KEY_DISABLED)
    enabled = await update(client, keys_pb2.ApiKey(id=created.key.id, disabled=False), ["disabled"])
    assert not enabled.disabled
    assert await state() == (True, authz_pb2.OK)


# --- delete ---------------------------------------------------------------------------


async def test_delete_then_get_and_delete_again_are_not_found(client: Client) -> None:
    doomed = await client.create()
    survivor = await client.create()
    request = keys_pb2.DeleteKeyRequest(id=doomed.key.id)

    await client.keys.DeleteKey(request, metadata=auth(client.root))

    assert (await rpc_error(get(client, doomed.key.id))).code() == grpc.StatusCode.NOT_FOUND
    again = await rpc_error(client.keys.DeleteKey(request, metadata=auth(client.root)))
    assert again.code() == grpc.StatusCode.NOT_FOUND
    assert (await client.check(doomed.api_key)).code == authz_pb2.KEY_NOT_FOUND
    assert (await client.check(survivor.api_key)).allowed
    assert doomed.key.id not in {k.id for k in (await list_all(client))[0]}


async def test_delete_of_an_unknown_id_is_not_found(client: Client) -> None:
    error = await rpc_error(client.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=str(uuid.uuid4())),
                                                  metadata=auth(client.root)))
    assert error.code() == grpc.StatusCode.NOT_FOUND


# --- rotate ---------------------------------------------------------------------------


async def test_rotate_issues_a_new_secret_for_the_same_key(client: Client) -> None:
    old = await client.create(name="rotating", metadata={"a": "b"})

    new = await rotate(client, old.key.id, duration_pb2.Duration(seconds=60))

    assert KEY_RE.match(new.api_key) and new.api_key != old.api_key
    assert new.key.id == old.key.id
    assert new.key.display == masked(new.api_key) != old.key.display
    assert not leaks(new.api_key, new.key) and not leaks(old.api_key, new.key)
    assert fields(new.key) == fields(old.key) and new.key.etag != old.key.etag
    assert await get(client, old.key.id) == new.key
    checked = await client.check(new.api_key)
    assert (checked.allowed, checked.key_id) == (True, old.key.id)


async def test_rotated_secret_works_until_the_grace_period_ends(client: Client) -> None:
    grace = 1.5
    old = await client.create()
    started = time.monotonic()
    new = await rotate(client, old.key.id, duration_pb2.Duration(seconds=1, nanos=500_000_000))

    during = await client.check(old.api_key)
    assert time.monotonic() - started < grace, "too slow to observe the grace period"
    assert during.allowed and during.key_id == old.key.id

    after = await poll(lambda: client.check(old.api_key), lambda r: not r.allowed, timeout=grace + 3)
    ended = time.monotonic()
    assert after.code in DEAD_SECRET and after.http_status == 401
    assert ended - started >= grace - 0.05, "the old secret stopped before its grace period ended"
    assert (await client.check(new.api_key)).allowed


@pytest.mark.parametrize("grace", [None, duration_pb2.Duration(seconds=0)], ids=["unset", "zero"])
async def test_rotation_without_grace_stops_the_old_secret_at_once(
        client: Client, grace: duration_pb2.Duration | None) -> None:
    old = await client.create()

    new = await rotate(client, old.key.id, grace)

    assert (await client.check(old.api_key)).code in DEAD_SECRET
    assert (await client.check(new.api_key)).allowed


# --- usage ----------------------------------------------------------------------------


async def test_usage_appears_after_allowed_checks(client: Client) -> None:
    created = await client.create(permissions=["chatflows:view"])
    unused = await client.create()
    before = datetime.now(UTC)
    for _ in range(3):
        assert (await client.check(created.api_key, "chatflows/abc", "chatflows:view")).allowed
    denied = await client.check(created.api_key, "chatflows/abc", "chatflows:delete")
    after = datetime.now(UTC)
    assert denied.code == authz_pb2.PERMISSION_DENIED

    seen = await poll(lambda: get(client, created.key.id), lambda k: k.usage_count >= 3, timeout=3)

    assert seen.usage_count == 3  # allowed checks only
    assert seen.HasField("last_used_time")
    slack = timedelta(seconds=1)
    assert before - slack <= seen.last_used_time.ToDatetime(tzinfo=UTC) <= after + slack
    idle = await get(client, unused.key.id)
    assert idle.usage_count == 0 and not idle.HasField("last_used_time")
