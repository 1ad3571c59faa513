"""The audit trail: one row per mutation (who, what, which key, which fields, when, which request),
none for reads or failed requests, filters and paging in ListAuditEvents, and never key material."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from keygate.v1 import keys_pb2

from .support import Client, auth, field_violations, in_, rpc_error, ts

Metadata = tuple[tuple[str, str], ...]
REQUEST_ID = "x-request-id"


def md(api_key: str, request_id: str | None = None) -> Metadata:
    """Bearer metadata, with an x-request-id when given."""
    return auth(api_key) + (((REQUEST_ID, request_id),) if request_id is not None else ())


async def events(client: Client, api_key: str | None = None, page_size: int = 1000,
                 **query: Any) -> list[keys_pb2.AuditEvent]:
    """Every matching audit event, newest first, following page tokens (as root unless `api_key`)."""
    out: list[keys_pb2.AuditEvent] = []
    token = ""
    while True:
        page = await client.keys.ListAuditEvents(
            keys_pb2.ListAuditEventsRequest(page_size=page_size, page_token=token, **query),
            metadata=auth(api_key or client.root))
        out.extend(page.events)
        token = page.next_page_token
        if not token:
            return out


def edit(key_id: str, paths: list[str], **values: Any) -> keys_pb2.UpdateKeyRequest:
    return keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(id=key_id, **values),
                                     update_mask=field_mask_pb2.FieldMask(paths=paths))


def bind(resource: str, key_id: str) -> keys_pb2.BindResourceRequest:
    return keys_pb2.BindResourceRequest(resource=resource, key_id=key_id)


def unbind(resource: str, key_id: str) -> keys_pb2.UnbindResourceRequest:
    return keys_pb2.UnbindResourceRequest(resource=resource, key_id=key_id)


def when(event: keys_pb2.AuditEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


async def rows(db: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every keygate table, for "nothing was written" checks behind the API."""
    tables = ("api_keys", "key_secrets", "resource_bindings", "audit_events")
    return {t: sorted((tuple(r) for r in await db.fetch(f"SELECT * FROM {t}")), key=repr) for t in tables}


# --- one row per mutation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    call: Callable[[Client, Metadata, str], Awaitable[Any]]  # (client, metadata, target key id)
    changed_fields: tuple[str, ...]
    resource: str = ""


MUTATIONS = {
    "CreateKey": Mutation(
        lambda c, m, target: c.keys.CreateKey(keys_pb2.CreateKeyRequest(
            name="made", description="by an admin", permissions=["chatflows:view"], resources=["chatflows/a"],
            metadata={"team": "search"}), metadata=m),
        ("name", "description", "permissions", "resources", "metadata")),
    # description is in the mask but unchanged: only what changed is listed.
    "UpdateKey": Mutation(
        lambda c, m, target: c.keys.UpdateKey(
            edit(target, ["name", "description", "disabled"], name="renamed", description="", disabled=True),
            metadata=m),
        ("name", "disabled")),
    "DeleteKey": Mutation(lambda c, m, target: c.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=target), metadata=m), ()),
    "RotateKey": Mutation(
        lambda c, m, target: c.keys.RotateKey(keys_pb2.RotateKeyRequest(id=target), metadata=m), ("secret",)),
    "BindResource": Mutation(
        lambda c, m, target: c.keys.BindResource(bind("chatflows/x", target), metadata=m), ("bindings",),
        "chatflows/x"),
    "UnbindResource": Mutation(
        lambda c, m, target: c.keys.UnbindResource(unbind("chatflows/y", target), metadata=m), ("bindings",),
        "chatflows/y"),
}


async def admin_and_target(client: Client) -> tuple[keys_pb2.CreateKeyResponse, keys_pb2.CreateKeyResponse]:
    """A ws1 admin and a plain ws1 key bound to chatflows/y, both made by root."""
    admin = await client.create(permissions=["apikeys:*", "chatflows:*", "logs:view"])
    target = await client.create()
    await client.keys.BindResource(bind("chatflows/y", target.key.id), metadata=auth(client.root))
    return admin, target


@pytest.mark.parametrize("name", list(MUTATIONS))
async def test_each_mutation_writes_exactly_one_audit_row(client: Client, name: str) -> None:
    mutation = MUTATIONS[name]
    admin, target = await admin_and_target(client)
    seen = {e.id for e in await events(client)}
    started = datetime.now(UTC) - timedelta(seconds=1)

    response = await mutation.call(client, md(admin.api_key, f"req-{name}"), target.key.id)

    new = [e for e in await events(client) if e.id not in seen]
    assert [(e.action, e.outcome) for e in new] == [(name, "OK")]
    (event,) = new
    target_id = response.key.id if name == "CreateKey" else target.key.id
    assert (event.actor_key_id, event.target_key_id, event.workspace_id, event.resource) == (
        admin.key.id, target_id, "ws1", mutation.resource)
    assert (list(event.changed_fields), event.request_id, event.reason) == (
        list(mutation.changed_fields), f"req-{name}", "")
    assert started <= when(event) <= datetime.now(UTC) + timedelta(seconds=1)


async def test_reads_and_no_op_updates_write_no_row(client: Client, db: asyncpg.Connection) -> None:
    admin, target = await admin_and_target(client)
    m = md(admin.api_key)
    before = await rows(db)

    await client.keys.GetKey(keys_pb2.GetKeyRequest(id=target.key.id), metadata=m)
    await client.keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=m)
    await client.keys.ListBindings(keys_pb2.ListBindingsRequest(key_id=target.key.id), metadata=m)
    await client.keys.ListBindings(keys_pb2.ListBindingsRequest(resource="chatflows/y"), metadata=m)
    await client.keys.ListAuditEvents(keys_pb2.ListAuditEventsRequest(), metadata=m)
    unchanged = await client.keys.UpdateKey(edit(target.key.id, ["name"], name=target.key.name), metadata=m)

    assert await rows(db) == before
    assert unchanged.etag == target.key.etag


@pytest.mark.parametrize(("sent", "kept"), [("req-2024.01:abc_9", True), (None, False), ("has spaces", False),
                                            ("x" * 65, False)])
async def test_the_request_id_recorded_is_the_one_the_caller_sees(client: Client, sent: str | None,
                                                                  kept: bool) -> None:
    call = client.keys.CreateKey(keys_pb2.CreateKeyRequest(name="rid", permissions=["chatflows:view"],
                                                           workspace_id="ws1"), metadata=md(client.root, sent))
    created = await call
    (echoed,) = [value for key, value in await call.trailing_metadata() if key == REQUEST_ID]

    (event,) = await events(client, key_id=created.key.id)
    assert event.request_id == echoed
    if kept:
        assert echoed == sent
    else:  # absent or unusable: the server makes one up
        assert len(echoed) >= 16 and set(echoed) <= set("0123456789abcdef")


# --- ListAuditEvents: filters, time, paging, workspaces ---------------------------------------------


@dataclass
class History:
    """A short history of ws1 and ws2, with the label of every key id."""

    admin: keys_pb2.CreateKeyResponse
    a: str
    b: str
    root: str

    def label(self, key_id: str) -> str:
        names = {self.admin.key.id: "admin", self.a: "a", self.b: "b", self.root: "root", "": "-"}
        return names[key_id]

    def describe(self, found: list[keys_pb2.AuditEvent]) -> list[tuple[str, str, str]]:
        return [(e.action, self.label(e.target_key_id), self.label(e.actor_key_id)) for e in found]


async def history(client: Client) -> History:
    """root makes admin; admin makes a and renames it; root describes a; admin rotates a;
    root makes b in ws2 and deletes it."""
    root_md = auth(client.root)
    admin = await client.create(permissions=["apikeys:*", "logs:view", "chatflows:view"])
    a = await client.create(admin.api_key, name="a")
    await client.keys.UpdateKey(edit(a.key.id, ["name"], name="a2"), metadata=auth(admin.api_key))
    await client.keys.UpdateKey(edit(a.key.id, ["description"], description="by root"), metadata=root_md)
    await client.keys.RotateKey(keys_pb2.RotateKeyRequest(id=a.key.id), metadata=auth(admin.api_key))
    b = await client.create(workspace_id="ws2", name="b")
    await client.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=b.key.id), metadata=root_md)
    (root,) = [e.target_key_id for e in await events(client, action="Bootstrap")]
    return History(admin, a.key.id, b.key.id, root)


async def test_filters_by_key_actor_and_action(client: Client) -> None:
    h = await history(client)
    queries = {
        "key a": {"key_id": h.a},
        "actor admin": {"actor_key_id": h.admin.key.id},
        "updates": {"action": "UpdateKey"},
        "key a by root": {"key_id": h.a, "actor_key_id": h.root},
        "creates by root": {"action": "CreateKey", "actor_key_id": h.root},
        "deletes of a": {"action": "DeleteKey", "key_id": h.a},
    }

    found = {name: h.describe(await events(client, **query)) for name, query in queries.items()}

    assert found == {
        "key a": [("RotateKey", "a", "admin"), ("UpdateKey", "a", "root"), ("UpdateKey", "a", "admin"),
                  ("CreateKey", "a", "admin")],
        "actor admin": [("RotateKey", "a", "admin"), ("UpdateKey", "a", "admin"), ("CreateKey", "a", "admin")],
        "updates": [("UpdateKey", "a", "root"), ("UpdateKey", "a", "admin")],
        "key a by root": [("UpdateKey", "a", "root")],
        "creates by root": [("CreateKey", "b", "root"), ("CreateKey", "admin", "root")],
        "deletes of a": [],
    }


async def test_time_window_is_start_inclusive_end_exclusive(client: Client) -> None:
    await history(client)
    every = await events(client)
    pivot, newer = every[3], every[2]

    since = await events(client, start_time=pivot.event_time)
    until = await events(client, end_time=pivot.event_time)
    just = await events(client, start_time=pivot.event_time, end_time=newer.event_time)
    future = await events(client, start_time=in_(timedelta(minutes=1)))

    assert [e.id for e in since] == [e.id for e in every[:4]]
    assert [e.id for e in until] == [e.id for e in every[4:]]
    assert [e.id for e in just] == [pivot.id]
    assert future == []


async def test_pages_are_newest_first_and_add_up_to_the_whole(client: Client) -> None:
    h = await history(client)
    every = await events(client)
    pages: list[keys_pb2.ListAuditEventsResponse] = []
    token = ""
    while not pages or token:
        pages.append(await client.keys.ListAuditEvents(
            keys_pb2.ListAuditEventsRequest(page_size=3, page_token=token), metadata=auth(client.root)))
        token = pages[-1].next_page_token

    assert [len(p.events) for p in pages[:-1]] == [3] * (len(pages) - 1) and 1 <= len(pages[-1].events) <= 3
    assert [e.id for p in pages for e in p.events] == [e.id for e in every]
    assert [e.id for e in every] == sorted((e.id for e in every), reverse=True)
    assert [when(e) for e in every] == sorted((when(e) for e in every), reverse=True)
    assert h.describe(await events(client, page_size=1, actor_key_id=h.admin.key.id)) == h.describe(
        await events(client, actor_key_id=h.admin.key.id))
    other_query = keys_pb2.ListAuditEventsRequest(page_size=3, page_token=pages[0].next_page_token, action="CreateKey")
    refused = await rpc_error(client.keys.ListAuditEvents(other_query, metadata=auth(client.root)))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in field_violations(refused)


async def test_a_workspace_key_sees_only_its_workspace(client: Client) -> None:
    h = await history(client)
    auditor = (await client.create(permissions=["logs:view"])).api_key

    mine = await events(client, auditor)
    ws1 = await events(client, workspace_id="ws1")
    about_b = await events(client, auditor, key_id=h.b)
    refused = await rpc_error(client.keys.ListAuditEvents(keys_pb2.ListAuditEventsRequest(workspace_id="ws2"),
                                                          metadata=auth(auditor)))

    assert [e.id for e in mine] == [e.id for e in ws1] and mine
    assert {e.workspace_id for e in mine} == {"ws1"}
    assert h.b not in {e.target_key_id for e in mine} and "Bootstrap" not in {e.action for e in mine}
    assert about_b == [] and await events(client, key_id=h.b)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


# --- failed mutations leave nothing behind -----------------------------------------------------------

Failing = Callable[[Client, Metadata, str, str], Awaitable[Any]]  # (client, metadata, target id, its etag)


def updating(paths: list[str], **values: Any) -> Failing:
    return lambda c, m, target, etag: c.keys.UpdateKey(edit(target, paths, **values), metadata=m)


FAILURES: dict[str, tuple[Failing, grpc.StatusCode, str]] = {
    "UpdateKey: empty name beside a valid description": (
        updating(["description", "name"], description="new", name=""), grpc.StatusCode.INVALID_ARGUMENT, "name"),
    "UpdateKey: unknown permission": (
        updating(["permissions"], permissions=["chatflows:fly"]), grpc.StatusCode.INVALID_ARGUMENT, "permissions[0]"),
    "UpdateKey: bad scope pattern": (
        updating(["resources"], resources=["chat flows"]), grpc.StatusCode.INVALID_ARGUMENT, "resources[0]"),
    "UpdateKey: expiry in the past": (
        updating(["expire_time"], expire_time=ts(datetime.now(UTC) - timedelta(hours=1))),
        grpc.StatusCode.INVALID_ARGUMENT, "expire_time"),
    "UpdateKey: a field that cannot be updated": (
        updating(["name", "workspace_id"], name="moved"), grpc.StatusCode.INVALID_ARGUMENT, "update_mask.paths[1]"),
    "UpdateKey: stale etag": (
        lambda c, m, target, etag: c.keys.UpdateKey(
            edit(target, ["name"], name="late", etag=etag.replace("1", "0")), metadata=m),
        grpc.StatusCode.ABORTED, ""),
    "CreateKey: empty name": (
        lambda c, m, target, etag: c.keys.CreateKey(keys_pb2.CreateKeyRequest(name=" ", permissions=["chatflows:view"]),
                                                    metadata=m),
        grpc.StatusCode.INVALID_ARGUMENT, "name"),
    "DeleteKey: unknown id": (
        lambda c, m, target, etag: c.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=str(uuid.uuid4())), metadata=m),
        grpc.StatusCode.NOT_FOUND, ""),
    "RotateKey: grace over 30 days": (
        lambda c, m, target, etag: c.keys.RotateKey(keys_pb2.RotateKeyRequest(
            id=target, grace_period=duration_pb2.Duration(seconds=31 * 86400)), metadata=m),
        grpc.StatusCode.INVALID_ARGUMENT, "grace_period"),
    "BindResource: bad resource": (
        lambda c, m, target, etag: c.keys.BindResource(bind("chatflows/", target), metadata=m),
        grpc.StatusCode.INVALID_ARGUMENT, "resource"),
    "UnbindResource: not bound": (
        lambda c, m, target, etag: c.keys.UnbindResource(unbind("chatflows/z", target), metadata=m),
        grpc.StatusCode.NOT_FOUND, ""),
}


async def test_a_failed_mutation_changes_nothing_and_writes_no_row(client: Client, db: asyncpg.Connection) -> None:
    admin, target = await admin_and_target(client)
    key_request = keys_pb2.GetKeyRequest(id=target.key.id)
    key_before = await client.keys.GetKey(key_request, metadata=auth(client.root))
    trail_before = await events(client)
    before = await rows(db)

    answers = {}
    for name, (call, _, _) in FAILURES.items():
        error = await rpc_error(call(client, md(admin.api_key), target.key.id, key_before.etag))
        violations = field_violations(error)
        answers[name] = (error.code(), next(iter(violations), ""), await rows(db) == before)

    assert answers == {name: (code, violated, True) for name, (_, code, violated) in FAILURES.items()}
    assert await client.keys.GetKey(key_request, metadata=auth(client.root)) == key_before
    assert await events(client) == trail_before


# --- no key material --------------------------------------------------------------------------------


def traces(api_key: str) -> list[str]:
    """Forms in which a key could leak: itself, its secret part, any 12 characters of it, its digests."""
    secret = api_key.partition("_")[2] or api_key
    sha = hashlib.sha256(api_key.encode()).digest()
    windows = [secret[i:i + 12] for i in range(len(secret) - 11)]
    return [api_key, secret, *windows, sha.hex(), base64.b64encode(sha).decode()]


async def test_audit_rows_never_contain_key_material(client: Client, db: asyncpg.Connection) -> None:
    admin = await client.create(permissions=["apikeys:*", "chatflows:*", "logs:view"], description="admin")
    weak = await client.create(permissions=["apikeys:update"])
    made = await client.create(admin.api_key, permissions=["chatflows:update"], metadata={"owner": "search"})
    rotated = await client.keys.RotateKey(keys_pb2.RotateKeyRequest(
        id=made.key.id, grace_period=duration_pb2.Duration(seconds=60)), metadata=auth(admin.api_key))
    await client.keys.BindResource(bind("chatflows/x", made.key.id), metadata=auth(rotated.api_key))
    await client.keys.UpdateKey(edit(made.key.id, ["name", "metadata"], name="renamed", metadata={"k": "v"}),
                                metadata=auth(admin.api_key))
    denied = await rpc_error(client.keys.RotateKey(keys_pb2.RotateKeyRequest(id=admin.key.id),
                                                   metadata=md(weak.api_key, "denied-rotate")))
    plaintexts = [client.root, admin.api_key, weak.api_key, made.api_key, rotated.api_key]

    trail = await events(client) + await events(client, admin.api_key)
    text = "\n".join(str(e) for e in trail) + "\n".join(
        repr(tuple(r)) for r in await db.fetch("SELECT * FROM audit_events"))

    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert {e.action for e in trail} >= {"CreateKey", "RotateKey", "BindResource", "UpdateKey"}
    assert {e.outcome for e in trail} == {"OK", "DENIED"}
    leaks = [trace for key in plaintexts for trace in traces(key) if trace in text]
    assert leaks == []
