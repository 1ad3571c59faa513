"""FlowiseApiKeyService through a real gRPC channel: KeyService's rules behind Flowise's shapes.

The same caller authentication, no-escalation rule, validation, audit rows and errors as KeyService
(it delegates to the same KeyAdmin); Flowise's field names in answers and in the field an error names.
What Envoy's transcoder makes of it over HTTP is tests/e2e/test_flowise_door.py.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from keygate.v1 import authz_pb2, flowise_pb2, flowise_pb2_grpc, keys_pb2

from .support import Client, auth, field_violations, in_, rpc_error

ADMIN = ["apikeys:*", "chatflows:view", "chatflows:update"]


def door(client: Client) -> flowise_pb2_grpc.FlowiseApiKeyServiceStub:
    return flowise_pb2_grpc.FlowiseApiKeyServiceStub(client.channel)


async def admin(client: Client, **fields: Any) -> str:
    """A ws1 key that may manage keys (made through KeyService by root)."""
    fields.setdefault("permissions", ADMIN)
    return (await client.create(name="door admin", **fields)).api_key


async def create(client: Client, caller: str, **fields: Any) -> flowise_pb2.FlowiseApiKey:
    return await door(client).CreateApiKey(flowise_pb2.CreateApiKeyRequest(**fields), metadata=auth(caller))


async def listed(client: Client, caller: str, **query: int) -> Any:
    body = await door(client).ListApiKeys(flowise_pb2.ListApiKeysRequest(**query), metadata=auth(caller))
    assert body.content_type == "application/json"
    return json.loads(body.data)


async def audit(client: Client, key_id: str) -> list[tuple[str, str]]:
    page = await client.keys.ListAuditEvents(keys_pb2.ListAuditEventsRequest(key_id=key_id),
                                             metadata=auth(client.root))
    return sorted((e.action, e.outcome) for e in page.events)


# --- create -------------------------------------------------------------------------------------


async def test_create_shows_the_key_once_and_it_works(client: Client) -> None:
    caller = await admin(client)
    made = await create(client, caller, key_name="Production Backend", permissions=["chatflows:view"])

    assert (made.key_name, list(made.permissions), made.workspace_id) == ("Production Backend",
                                                                          ["chatflows:view"], "ws1")
    assert made.created_at.ToDatetime(tzinfo=UTC) > datetime.now(UTC) - timedelta(minutes=1)
    decision = await client.check(made.api_key, "chatflows/a", "chatflows:view", "ws1")
    assert (decision.allowed, decision.key_id) == (True, made.id)
    (shown,) = [k for k in await listed(client, caller) if k["id"] == made.id]
    assert shown["apiKey"] != made.api_key and shown["apiKey"].startswith(made.api_key[:7])
    assert made.api_key not in json.dumps(await listed(client, caller))
    assert await audit(client, made.id) == [("CreateKey", "OK")]


async def test_create_without_permissions_copies_the_callers_rights(client: Client) -> None:
    """Flowise's `{keyName}`: the caller's rights (wildcards kept), scope and expiry, never more."""
    expiry = in_(timedelta(days=3))
    caller = await admin(client, permissions=["apikeys:create", "chatflows:*", "tools:view"],
                         resources=["apikeys/*", "chatflows/f1", "tools/*"], expire_time=expiry)

    made = await create(client, caller, key_name="copy")

    got = await client.keys.GetKey(keys_pb2.GetKeyRequest(id=made.id), metadata=auth(client.root))
    assert sorted(got.permissions) == ["apikeys:create", "apikeys:view", "chatflows:*", "tools:view"]
    assert sorted(got.resources) == ["apikeys/*", "chatflows/f1", "tools/*"]
    assert got.expire_time == expiry
    assert (await client.check(made.api_key, "chatflows/f1", "chatflows:update", "ws1")).allowed
    assert not (await client.check(made.api_key, "chatflows/f2", "chatflows:view", "ws1")).allowed


async def test_root_names_the_workspace(client: Client) -> None:
    err = await rpc_error(create(client, client.root, key_name="r", permissions=["chatflows:view"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(err) == {"workspaceId": "root callers must name the workspace of the new key"}
    made = await create(client, client.root, key_name="r", permissions=["chatflows:view"], workspace_id="ws7")
    assert made.workspace_id == "ws7"


@pytest.mark.parametrize(("fields", "field"), [
    ({"key_name": ""}, "keyName"),
    ({"key_name": "x" * 101}, "keyName"),
    ({"key_name": "k", "permissions": ["chatflows:fly"]}, "permissions[0]"),
    ({"key_name": "k", "permissions": ["*"]}, "permissions[0]"),
    ({"key_name": "k", "permissions": ["chatflows:view"], "workspace_id": "bad space"}, "workspaceId"),
])
async def test_bad_bodies_name_the_flowise_field(client: Client, fields: dict[str, Any], field: str) -> None:
    err = await rpc_error(create(client, await admin(client), **fields))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(err)) == [field] and err.details().startswith(f"{field}: ")


async def test_no_key_and_a_bad_key_are_unauthenticated(client: Client) -> None:
    request = flowise_pb2.CreateApiKeyRequest(key_name="k", permissions=["chatflows:view"])
    for metadata in ((), auth("fl_" + "A" * 49)):
        err = await rpc_error(door(client).CreateApiKey(request, metadata=metadata))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_key_without_the_verb_is_refused_and_audited(client: Client) -> None:
    reader = await client.create(name="reader", permissions=["chatflows:view", "apikeys:view"])
    err = await rpc_error(create(client, reader.api_key, key_name="k", permissions=["chatflows:view"]))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ("CreateKey", "DENIED") in await audit_by_actor(client, reader.key.id)


async def test_escalation_is_refused(client: Client) -> None:
    caller = await admin(client)
    err = await rpc_error(create(client, caller, key_name="k", permissions=["tools:view"]))
    assert (err.code(), err.details()) == (grpc.StatusCode.PERMISSION_DENIED,
                                           "cannot grant 'tools:view': the calling key does not hold it")
    other = await rpc_error(create(client, caller, key_name="k", permissions=["chatflows:view"],
                                   workspace_id="ws2"))
    assert other.code() == grpc.StatusCode.PERMISSION_DENIED


async def audit_by_actor(client: Client, actor: str) -> list[tuple[str, str]]:
    page = await client.keys.ListAuditEvents(keys_pb2.ListAuditEventsRequest(actor_key_id=actor),
                                             metadata=auth(client.root))
    return [(e.action, e.outcome) for e in page.events]


# --- list ---------------------------------------------------------------------------------------


async def test_list_is_an_array_or_a_page_as_flowise_answers(client: Client) -> None:
    caller = await admin(client, workspace_id="ws-list")
    made = [await create(client, caller, key_name=f"k{i}", permissions=["chatflows:view"]) for i in range(3)]

    everything = await listed(client, caller)
    assert isinstance(everything, list) and len(everything) == 4  # the caller too
    assert [k["keyName"] for k in everything][:3] == ["k2", "k1", "k0"]  # latest change first
    assert set(everything[0]) == {"id", "keyName", "apiKey", "permissions", "workspaceId", "createdAt",
                                  "updatedDate", "chatFlows"}
    assert not [k for k in made if k.api_key in json.dumps(everything)]

    page = await listed(client, caller, page=2, limit=2)
    assert (page["total"], [k["keyName"] for k in page["data"]]) == (4, ["k0", "door admin"])
    assert await listed(client, caller, page=1) == everything  # Flowise: both or no paging
    err = await rpc_error(listed(client, caller, limit=-1))
    assert list(field_violations(err)) == ["limit"]


async def test_list_shows_bound_chatflows(client: Client) -> None:
    caller = await admin(client, workspace_id="ws-bind")
    made = await create(client, caller, key_name="bound", permissions=["chatflows:view"])
    await client.keys.BindResource(keys_pb2.BindResourceRequest(resource="chatflows/flow-9", key_id=made.id),
                                   metadata=auth(caller))
    (shown,) = [k for k in await listed(client, caller) if k["id"] == made.id]
    assert [(f["id"], f["flowName"]) for f in shown["chatFlows"]] == [("flow-9", "flow-9")]


async def test_list_needs_apikeys_view(client: Client) -> None:
    plain = await client.create(name="plain")
    err = await rpc_error(listed(client, plain.api_key))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


# --- update and delete ----------------------------------------------------------------------------


async def test_update_renames_and_replaces_permissions(client: Client) -> None:
    caller = await admin(client)
    made = await create(client, caller, key_name="before", permissions=["chatflows:view"])
    request = flowise_pb2.UpdateApiKeyRequest(id=made.id, key_name="after", permissions=["chatflows:update"])

    updated = await door(client).UpdateApiKey(request, metadata=auth(caller))

    assert (updated.key_name, list(updated.permissions), updated.api_key) == (
        "after", ["chatflows:update"], f"{made.api_key[:7]}...{made.api_key[-4:]}")
    assert (await client.check(made.api_key, "chatflows/x", "chatflows:update", "ws1")).allowed
    assert await audit(client, made.id) == [("CreateKey", "OK"), ("UpdateKey", "OK")]


@pytest.mark.parametrize(("fields", "field"), [
    ({"key_name": "", "permissions": ["chatflows:view"]}, "keyName"),
    ({"key_name": "n"}, "permissions"),
    ({"id": "not-a-uuid", "key_name": "n", "permissions": ["chatflows:view"]}, "id"),
])
async def test_update_needs_both_fields_and_an_id(client: Client, fields: dict[str, Any], field: str) -> None:
    caller = await admin(client)
    made = await create(client, caller, key_name="k", permissions=["chatflows:view"])
    fields.setdefault("id", made.id)
    err = await rpc_error(door(client).UpdateApiKey(flowise_pb2.UpdateApiKeyRequest(**fields),
                                                    metadata=auth(caller)))
    assert list(field_violations(err)) == [field]


async def test_update_cannot_widen_beyond_the_caller(client: Client) -> None:
    caller = await admin(client)
    made = await create(client, caller, key_name="k", permissions=["chatflows:view"])
    request = flowise_pb2.UpdateApiKeyRequest(id=made.id, key_name="k", permissions=["tools:*"])
    err = await rpc_error(door(client).UpdateApiKey(request, metadata=auth(caller)))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ("UpdateKey", "DENIED") in await audit(client, made.id)


async def test_delete_revokes_and_an_unknown_id_is_not_found(client: Client) -> None:
    caller = await admin(client)
    made = await create(client, caller, key_name="k", permissions=["chatflows:view"])

    answer = await door(client).DeleteApiKey(flowise_pb2.DeleteApiKeyRequest(id=made.id), metadata=auth(caller))

    assert answer.affected == 1
    decision = await client.check(made.api_key, "chatflows/a", "chatflows:view", "ws1")
    assert decision.code == authz_pb2.KEY_NOT_FOUND
    assert ("DeleteKey", "OK") in await audit(client, made.id)
    for key_id in (made.id, str(uuid.uuid4())):
        err = await rpc_error(door(client).DeleteApiKey(flowise_pb2.DeleteApiKeyRequest(id=key_id),
                                                        metadata=auth(caller)))
        assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_another_workspaces_key_is_not_found(client: Client) -> None:
    elsewhere = await client.create(name="ws2 key", workspace_id="ws2")
    err = await rpc_error(door(client).DeleteApiKey(flowise_pb2.DeleteApiKeyRequest(id=elsewhere.key.id),
                                                    metadata=auth(await admin(client))))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_a_limited_caller_makes_keys_with_its_own_limits(client: Client) -> None:
    """Flowise cannot send limits: a key made through the door by a limited caller carries the caller's
    rate limits and credits (never none: that would escape them)."""
    per_minute = keys_pb2.RateLimit(name="m", limit=10)
    per_minute.window.FromTimedelta(timedelta(minutes=1))
    caller = await admin(client, rate_limits=[per_minute], credits=keys_pb2.Credits(remaining=50))
    made = await create(client, caller, key_name="limited", permissions=["chatflows:view"])
    got = await client.keys.GetKey(keys_pb2.GetKeyRequest(id=made.id), metadata=auth(client.root))
    assert [(r.name, r.limit, r.window.seconds) for r in got.rate_limits] == [("m", 10, 60)]
    assert got.credits.remaining <= 50
