"""Bad input: each refusal is INVALID_ARGUMENT or NOT_FOUND naming the field, and writes nothing.

Every case runs through the real gRPC channel as the root key (so no refusal is a permission
matter), counts the rows of every table before and after, and reads the google.rpc.BadRequest
details the caller gets. A validation error must never become INTERNAL or UNKNOWN, and must
never leave a row behind: not a key, not a secret, not a binding, not even an audit row.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from keygate.config import Settings
from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth, field_violations, in_, rpc_error, running

if TYPE_CHECKING:
    from ..conftest import Postgres

TABLES = ("api_keys", "key_secrets", "resource_bindings", "audit_events")
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


@dataclass(frozen=True)
class Target:
    """An existing key in ws1, bound to chatflows/bound, that cases may aim at."""

    id: str
    api_key: str


@dataclass(frozen=True)
class Case:
    """One bad request: the RPC, how to build it for the target, and what the caller must see."""

    method: str  # a KeyService method, or "Check" for AuthzService
    build: Callable[[Target], Message]
    code: grpc.StatusCode
    field: str | None  # the one BadRequest field violation; None: no BadRequest at all
    mentions: tuple[str, ...] = field(default=())  # text the error message must contain


async def row_counts(db: asyncpg.Connection) -> dict[str, int]:
    return {table: await db.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}


def call(client: Client, case: Case, target: Target) -> object:
    request = case.build(target)
    if case.method == "Check":
        return client.authz.Check(request)
    return getattr(client.keys, case.method)(request, metadata=auth(client.root))


async def refused(client: Client, db: asyncpg.Connection, case: Case, target: Target) -> grpc.aio.AioRpcError:
    """Make the call, assert the code, the field and the message, and that no table changed."""
    before = await row_counts(db)
    err = await rpc_error(call(client, case, target))
    assert err.code() == case.code, err.details()
    violations = field_violations(err)
    if case.field is None:
        assert violations == {}
    else:
        assert list(violations) == [case.field], violations
    for text in case.mentions:
        assert text in err.details()
        if case.field is not None:
            assert text in violations[case.field]
    assert await row_counts(db) == before
    return err


async def make_target(client: Client) -> Target:
    created = await client.create(name="target", permissions=["chatflows:update", "predictions:create"])
    await client.keys.BindResource(keys_pb2.BindResourceRequest(resource="chatflows/bound", key_id=created.key.id),
                                   metadata=auth(client.root))
    return Target(created.key.id, created.api_key)


@pytest.fixture
async def target(client: Client) -> Target:
    return await make_target(client)


@dataclass(frozen=True)
class Shared:
    client: Client
    db: asyncpg.Connection
    target: Target


@pytest.fixture
async def shared(postgres: Postgres) -> AsyncIterator[Shared]:
    """A server and database per case, on the test's own event loop: a grpc.aio server kept on a
    module-scoped loop while other tests ran their own loops hung its teardown now and then."""
    url = await postgres.fresh_database()
    db = await asyncpg.connect(url)
    try:
        async with running(Settings(listen="127.0.0.1:0"), url) as (_, client):
            yield Shared(client, db, await make_target(client))
    finally:
        await db.close()


def create(**fields: object) -> Callable[[Target], Message]:
    """A CreateKeyRequest that would succeed but for `fields`."""
    base: dict[str, object] = {"name": "ok name", "permissions": ["chatflows:view"], "workspace_id": "ws1"}
    return lambda _: keys_pb2.CreateKeyRequest(**(base | fields))


def on_target(request: type[Message], id_field: str = "id", **fields: object) -> Callable[[Target], Message]:
    return lambda t: request(**{id_field: t.id}, **fields)


def with_id(request: type[Message], value: str, id_field: str = "id", **fields: object) -> Callable[[Target], Message]:
    return lambda _: request(**{id_field: value}, **fields)


def grace(seconds: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def stamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def unsigned(cursor: list[object], query: tuple[object, ...]) -> str:
    """A page token as they were before they were signed: base64 JSON with a fingerprint anyone can compute."""
    fingerprint = hashlib.sha256(repr(list(query)).encode()).hexdigest()[:16]
    return b64(json.dumps({"c": cursor, "q": fingerprint}).encode())


def check(**fields: str) -> Callable[[Target], Message]:
    base = {"resource": "chatflows/a", "action": "chatflows:view"}
    return lambda t: authz_pb2.CheckRequest(api_key=t.api_key, **(base | fields))


def update(paths: list[str], **key_fields: object) -> Callable[[Target], Message]:
    return lambda t: keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(id=t.id, **key_fields),
                                               update_mask=field_mask_pb2.FieldMask(paths=paths))


def bind(resource: str, actions: tuple[str, ...] = ()) -> Callable[[Target], Message]:
    return lambda t: keys_pb2.BindResourceRequest(resource=resource, key_id=t.id, actions=list(actions))


BAD_INPUT = {
    # --- CreateKey: name, description
    "name empty": Case("CreateKey", create(name=""), INVALID, "name"),
    "name whitespace": Case("CreateKey", create(name=" \t  "), INVALID, "name"),
    "name 101 chars": Case("CreateKey", create(name="x" * 101), INVALID, "name", ("100",)),
    "name NUL": Case("CreateKey", create(name="a\x00b"), INVALID, "name"),
    "name ESC": Case("CreateKey", create(name="red\x1b[31m"), INVALID, "name"),
    "name BEL": Case("CreateKey", create(name="ding\x07"), INVALID, "name"),
    "name DEL": Case("CreateKey", create(name="a\x7fb"), INVALID, "name"),
    "name C1 CSI": Case("CreateKey", create(name="a\x9b31mb"), INVALID, "name"),
    "description 1001 chars": Case("CreateKey", create(description="d" * 1001), INVALID, "description", ("1000",)),
    "description control char": Case("CreateKey", create(description="a\x08b"), INVALID, "description"),
    # --- CreateKey: permissions
    "permissions empty": Case("CreateKey", create(permissions=[]), INVALID, "permissions"),
    "permission unknown verb": Case("CreateKey", create(permissions=["chatflows:view", "chatflows:fly"]),
                                    INVALID, "permissions[1]", ("chatflows:fly",)),
    "permission unknown category": Case("CreateKey", create(permissions=["nope:view"]),
                                        INVALID, "permissions[0]", ("nope:view",)),
    "permission without verb": Case("CreateKey", create(permissions=["chatflows"]),
                                    INVALID, "permissions[0]", ("chatflows",)),
    "permission root star": Case("CreateKey", create(permissions=["tools:view", "*"]), INVALID, "permissions[1]"),
    "permission wildcard of unknown category": Case("CreateKey", create(permissions=["nope:*"]),
                                                    INVALID, "permissions[0]", ("nope:*",)),
    # --- CreateKey: resources (scope patterns)
    "resource star in the middle": Case("CreateKey", create(resources=["chatflows/a", "chatflows/*/x"]),
                                        INVALID, "resources[1]", ("chatflows/*/x",)),
    "resource trailing newline": Case("CreateKey", create(resources=["chatflows/a\n"]), INVALID, "resources[0]"),
    "resource bare star": Case("CreateKey", create(resources=["*"]), INVALID, "resources[0]"),
    "resource with space": Case("CreateKey", create(resources=["a b"]), INVALID, "resources[0]", ("a b",)),
    "resource leading slash": Case("CreateKey", create(resources=["/x"]), INVALID, "resources[0]", ("/x",)),
    "resource trailing slash": Case("CreateKey", create(resources=["chatflows/"]), INVALID, "resources[0]"),
    "resource too long": Case("CreateKey", create(resources=["chatflows/" + "x" * 300]), INVALID, "resources[0]"),
    "resources too many": Case("CreateKey", create(resources=[f"chatflows/{i}" for i in range(101)]),
                               INVALID, "resources"),
    # --- CreateKey: workspace, expiry, metadata
    "workspace missing for root": Case("CreateKey", create(workspace_id=""), INVALID, "workspace_id"),
    "workspace with space": Case("CreateKey", create(workspace_id="ws 1"), INVALID, "workspace_id"),
    "workspace leading dash": Case("CreateKey", create(workspace_id="-ws"), INVALID, "workspace_id"),
    "workspace trailing newline": Case("CreateKey", create(workspace_id="ws1\n"), INVALID, "workspace_id"),
    "workspace 129 chars": Case("CreateKey", create(workspace_id="w" * 129), INVALID, "workspace_id"),
    "expire_time in the past": Case("CreateKey", create(expire_time=in_(-timedelta(minutes=1))),
                                    INVALID, "expire_time"),
    "metadata 33 entries": Case("CreateKey", create(metadata={f"k{i}": "v" for i in range(33)}),
                                INVALID, "metadata", ("32",)),
    "metadata bad key": Case("CreateKey", create(metadata={"ok": "v", "bad key": "v"}),
                             INVALID, "metadata['bad key']"),
    "metadata key trailing newline": Case("CreateKey", create(metadata={"team\n": "v"}), INVALID,
                                          "metadata['team\\n']"),
    "metadata value control char": Case("CreateKey", create(metadata={"team": "a\x1bb"}), INVALID,
                                        "metadata['team']"),
    "metadata empty key": Case("CreateKey", create(metadata={"": "v"}), INVALID, "metadata['']"),
    "metadata value too long": Case("CreateKey", create(metadata={"team": "v" * 513}), INVALID, "metadata['team']"),
    # --- ids
    "GetKey malformed id": Case("GetKey", with_id(keys_pb2.GetKeyRequest, "abc"), INVALID, "id"),
    "GetKey empty id": Case("GetKey", with_id(keys_pb2.GetKeyRequest, ""), INVALID, "id"),
    "DeleteKey malformed id": Case("DeleteKey", with_id(keys_pb2.DeleteKeyRequest, "abc"), INVALID, "id"),
    "RotateKey malformed id": Case("RotateKey", with_id(keys_pb2.RotateKeyRequest, "abc"), INVALID, "id"),
    "UpdateKey malformed id": Case("UpdateKey", lambda _: keys_pb2.UpdateKeyRequest(
        key=keys_pb2.ApiKey(id="abc", name="n"), update_mask=field_mask_pb2.FieldMask(paths=["name"])),
        INVALID, "key.id"),
    "BindResource malformed key_id": Case("BindResource", with_id(keys_pb2.BindResourceRequest, "abc", "key_id",
                                                                  resource="chatflows/a"), INVALID, "key_id"),
    "ListAuditEvents malformed key_id": Case("ListAuditEvents", with_id(keys_pb2.ListAuditEventsRequest, "abc",
                                                                        "key_id"), INVALID, "key_id"),
    "GetKey unknown id": Case("GetKey", with_id(keys_pb2.GetKeyRequest, UNKNOWN_ID), NOT_FOUND, None, (UNKNOWN_ID,)),
    "DeleteKey unknown id": Case("DeleteKey", with_id(keys_pb2.DeleteKeyRequest, UNKNOWN_ID), NOT_FOUND, None,
                                 (UNKNOWN_ID,)),
    "RotateKey unknown id": Case("RotateKey", with_id(keys_pb2.RotateKeyRequest, UNKNOWN_ID), NOT_FOUND, None),
    "UpdateKey unknown id": Case("UpdateKey", lambda _: keys_pb2.UpdateKeyRequest(
        key=keys_pb2.ApiKey(id=UNKNOWN_ID, name="n"), update_mask=field_mask_pb2.FieldMask(paths=["name"])),
        NOT_FOUND, None),
    "BindResource unknown key": Case("BindResource", with_id(keys_pb2.BindResourceRequest, UNKNOWN_ID, "key_id",
                                                             resource="chatflows/a"), NOT_FOUND, None),
    "ListBindings unknown key": Case("ListBindings", with_id(keys_pb2.ListBindingsRequest, UNKNOWN_ID, "key_id"),
                                     NOT_FOUND, None),
    "UnbindResource binding that does not exist": Case("UnbindResource", on_target(
        keys_pb2.UnbindResourceRequest, "key_id", resource="chatflows/never-bound"), NOT_FOUND, None),
    # --- UpdateKey: mask and fields
    "UpdateKey empty mask": Case("UpdateKey", update([], name="n"), INVALID, "update_mask"),
    "UpdateKey unknown path": Case("UpdateKey", update(["name", "workspace_id"], name="n"),
                                   INVALID, "update_mask.paths[1]", ("workspace_id",)),
    "UpdateKey empty name": Case("UpdateKey", update(["name"], name="  "), INVALID, "name"),
    "UpdateKey unknown permission": Case("UpdateKey", update(["permissions"], permissions=["chatflows:fly"]),
                                         INVALID, "permissions[0]", ("chatflows:fly",)),
    "UpdateKey past expiry": Case("UpdateKey", update(["expire_time"], expire_time=in_(-timedelta(hours=1))),
                                  INVALID, "expire_time"),
    # --- paging
    "ListKeys page_size -1": Case("ListKeys", lambda _: keys_pb2.ListKeysRequest(page_size=-1), INVALID,
                                  "page_size", ("1000",)),
    "ListKeys page_size 1001": Case("ListKeys", lambda _: keys_pb2.ListKeysRequest(page_size=1001), INVALID,
                                    "page_size", ("1000",)),
    "ListKeys random text token": Case("ListKeys", lambda _: keys_pb2.ListKeysRequest(page_token="not a token!"),
                                       INVALID, "page_token"),
    "ListKeys base64 of junk": Case("ListKeys", lambda _: keys_pb2.ListKeysRequest(page_token=b64(b"\x00junk\xff")),
                                    INVALID, "page_token"),
    "ListKeys base64 of other JSON": Case("ListKeys", lambda _: keys_pb2.ListKeysRequest(
        page_token=b64(json.dumps({"c": ["yesterday", "x"], "q": "0" * 16}).encode())), INVALID, "page_token"),
    "ListKeys oversized token": Case("ListKeys", lambda _: keys_pb2.ListKeysRequest(page_token="A" * 100_000),
                                     INVALID, "page_token"),
    "ListKeys deeply nested token": Case("ListKeys", lambda _: keys_pb2.ListKeysRequest(
        page_token=b64(b"[" * 380)), INVALID, "page_token"),
    "ListAuditEvents page_size -1": Case("ListAuditEvents", lambda _: keys_pb2.ListAuditEventsRequest(page_size=-1),
                                         INVALID, "page_size"),
    "ListAuditEvents random text token": Case("ListAuditEvents", lambda _: keys_pb2.ListAuditEventsRequest(
        page_token="%%%junk%%%"), INVALID, "page_token"),
    "ListAuditEvents base64 of junk": Case("ListAuditEvents", lambda _: keys_pb2.ListAuditEventsRequest(
        page_token=b64(b'{"c": ["not-an-id"], "q": "x"}')), INVALID, "page_token"),
    # --- RotateKey grace period
    "RotateKey negative grace": Case("RotateKey", on_target(keys_pb2.RotateKeyRequest, grace_period=grace(-1)),
                                     INVALID, "grace_period", ("30 days",)),
    "RotateKey grace over 30 days": Case("RotateKey", on_target(
        keys_pb2.RotateKeyRequest, grace_period=grace(30 * 86400 + 1)), INVALID, "grace_period", ("30 days",)),
    # --- bindings
    "BindResource wildcard resource": Case("BindResource", bind("chatflows/*"), INVALID, "resource"),
    "BindResource resource with space": Case("BindResource", bind("chatflows/a b"), INVALID, "resource"),
    "BindResource leading slash": Case("BindResource", bind("/chatflows/a"), INVALID, "resource"),
    "BindResource empty resource": Case("BindResource", bind(""), INVALID, "resource"),
    "BindResource collection only": Case("BindResource", bind("chatflows"), INVALID, "resource"),
    "BindResource collection without update": Case("BindResource", bind("logs/x"), INVALID, "resource",
                                                   ("logs:update",)),
    "BindResource unknown collection": Case("BindResource", bind("nope/x"), INVALID, "resource"),
    "BindResource unknown action": Case("BindResource", bind("chatflows/a", ("predictions:create", "chatflows:fly")),
                                        INVALID, "actions[1]", ("chatflows:fly",)),
    "BindResource wildcard action": Case("BindResource", bind("chatflows/a", ("chatflows:*",)),
                                         INVALID, "actions[0]"),
    "UnbindResource collection only": Case("UnbindResource", on_target(keys_pb2.UnbindResourceRequest, "key_id",
                                                                       resource="chatflows"), INVALID, "resource"),
    "ListBindings no target": Case("ListBindings", lambda _: keys_pb2.ListBindingsRequest(workspace_id="ws1"),
                                   INVALID, "target"),
    "ListBindings bad resource": Case("ListBindings", lambda _: keys_pb2.ListBindingsRequest(
        resource="chatflows/*", workspace_id="ws1"), INVALID, "resource"),
    # --- values the wire can carry but the types forbid: converted to INVALID_ARGUMENT, never INTERNAL
    "expire_time after year 9999": Case("CreateKey", create(expire_time=stamp(2**62)), INVALID, "expire_time"),
    "expire_time negative nanos": Case("CreateKey", create(expire_time=stamp(2**31, -1)), INVALID, "expire_time"),
    "UpdateKey expire_time before year 1": Case("UpdateKey", update(["expire_time"], expire_time=stamp(-(2**62))),
                                                INVALID, "expire_time"),
    "ListAuditEvents start_time out of range": Case("ListAuditEvents", lambda _: keys_pb2.ListAuditEventsRequest(
        start_time=stamp(-(2**62))), INVALID, "start_time"),
    "ListAuditEvents end_time nanos of a second": Case("ListAuditEvents", lambda _: keys_pb2.ListAuditEventsRequest(
        end_time=stamp(0, 10**9)), INVALID, "end_time"),
    "RotateKey grace 2**62 seconds": Case("RotateKey", on_target(keys_pb2.RotateKeyRequest, grace_period=grace(2**62)),
                                          INVALID, "grace_period"),
    "RotateKey grace nanos against the seconds' sign": Case("RotateKey", on_target(
        keys_pb2.RotateKeyRequest, grace_period=duration_pb2.Duration(seconds=60, nanos=-1)), INVALID, "grace_period"),
    # --- string filters reach SQL only once validated
    "ListKeys workspace NUL": Case("ListKeys", lambda _: keys_pb2.ListKeysRequest(workspace_id="ws1\x00"),
                                   INVALID, "workspace_id"),
    "ListBindings workspace NUL": Case("ListBindings", lambda _: keys_pb2.ListBindingsRequest(
        resource="chatflows/bound", workspace_id="w\x00"), INVALID, "workspace_id"),
    "ListAuditEvents workspace NUL": Case("ListAuditEvents", lambda _: keys_pb2.ListAuditEventsRequest(
        workspace_id="w\x00"), INVALID, "workspace_id"),
    "ListAuditEvents action NUL": Case("ListAuditEvents", lambda _: keys_pb2.ListAuditEventsRequest(
        action="CreateKey\x00"), INVALID, "action"),
    "ListAuditEvents action with a space": Case("ListAuditEvents", lambda _: keys_pb2.ListAuditEventsRequest(
        action="Create Key"), INVALID, "action"),
    "Check workspace NUL": Case("Check", check(workspace_id="ws1\x00"), INVALID, "workspace_id"),
    # --- page tokens are signed: what a caller can compute is refused before its cursor is read
    "ListKeys forged token": Case("ListKeys", lambda _: keys_pb2.ListKeysRequest(
        page_token=unsigned(["2025-01-01T00:00:00+00:00", UNKNOWN_ID], ("keys", None))), INVALID, "page_token"),
    "ListAuditEvents forged cursor 10**30": Case("ListAuditEvents", lambda _: keys_pb2.ListAuditEventsRequest(
        page_token=unsigned([10**30], ("audit", None, "None", "None", "", "None", "None"))), INVALID, "page_token"),
    # --- Check: a malformed request is an RPC error, not a denial
    "Check unknown action": Case("Check", check(action="chatflows:fly"), INVALID, "action", ("chatflows:fly",)),
    "Check wildcard action": Case("Check", check(action="chatflows:*"), INVALID, "action"),
    "Check empty action": Case("Check", check(action=""), INVALID, "action"),
    "Check resource trailing newline": Case("Check", check(resource="chatflows/a\n"), INVALID, "resource"),
    "Check bad resource": Case("Check", check(resource="chatflows/a b"), INVALID, "resource"),
    "Check bad workspace": Case("Check", check(workspace_id="ws 1"), INVALID, "workspace_id"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT.values()), ids=list(BAD_INPUT))
async def test_bad_input_is_refused_naming_the_field_and_writes_nothing(shared: Shared, case: Case) -> None:
    await refused(shared.client, shared.db, case, shared.target)


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "n" * 100},
        {"name": "  padded  "},
        {"description": "d" * 1000},
        {"metadata": {f"k{i}": "v" * 512 for i in range(32)}},
        {"resources": ["chatflows/*", "documentStores/x/loaders/y"]},
        {"workspace_id": "w" * 128},
    ],
    ids=["name 100", "name padded", "description 1000", "metadata 32 full", "resources", "workspace 128"],
)
async def test_limits_themselves_are_accepted(client: Client, fields: dict[str, object]) -> None:
    created = await client.create(**fields)
    assert created.key.id and created.api_key
    if "name" in fields:
        assert created.key.name == str(fields["name"]).strip()


async def test_grace_period_of_exactly_30_days_is_accepted(client: Client, target: Target) -> None:
    rotated = await client.keys.RotateKey(
        keys_pb2.RotateKeyRequest(id=target.id, grace_period=grace(30 * 86400)), metadata=auth(client.root))
    assert rotated.key.id == target.id and rotated.api_key != target.api_key


async def test_page_size_1000_is_accepted(client: Client) -> None:
    listed = await client.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=1000), metadata=auth(client.root))
    assert len(listed.keys) >= 1 and listed.next_page_token == ""


async def _first_page_token(client: Client, method: str, request: Message) -> str:
    page = await getattr(client.keys, method)(request, metadata=auth(client.root))
    assert page.next_page_token, "setup: expected a second page"
    return page.next_page_token


FOREIGN_TOKENS = {
    # (where the token was issued, where it is replayed)
    "ListKeys ws1 token on ws2": (("ListKeys", keys_pb2.ListKeysRequest(workspace_id="ws1", page_size=1)),
                                  ("ListKeys", keys_pb2.ListKeysRequest(workspace_id="ws2", page_size=1))),
    "ListKeys ws1 token on all": (("ListKeys", keys_pb2.ListKeysRequest(workspace_id="ws1", page_size=1)),
                                  ("ListKeys", keys_pb2.ListKeysRequest(page_size=1))),
    "ListKeys token on ListAuditEvents": (("ListKeys", keys_pb2.ListKeysRequest(page_size=1)),
                                          ("ListAuditEvents", keys_pb2.ListAuditEventsRequest(page_size=1))),
    "audit token on ListKeys": (("ListAuditEvents", keys_pb2.ListAuditEventsRequest(page_size=1)),
                                ("ListKeys", keys_pb2.ListKeysRequest(page_size=1))),
    "audit token with another action filter": (
        ("ListAuditEvents", keys_pb2.ListAuditEventsRequest(page_size=1)),
        ("ListAuditEvents", keys_pb2.ListAuditEventsRequest(page_size=1, action="CreateKey"))),
}


@pytest.mark.parametrize(("issued", "replayed"), list(FOREIGN_TOKENS.values()), ids=list(FOREIGN_TOKENS))
async def test_token_from_another_query_is_refused(
    client: Client, db: asyncpg.Connection, target: Target,
    issued: tuple[str, Message], replayed: tuple[str, Message],
) -> None:
    await client.create(name="second ws1 key")
    await client.create(name="a ws2 key", workspace_id="ws2")
    await client.create(name="another ws2 key", workspace_id="ws2")
    token = await _first_page_token(client, *issued)
    method, template = replayed
    request = type(template)()
    request.CopyFrom(template)  # the table's message stays untouched for the other cases
    request.page_token = token
    await refused(client, db, Case(method, lambda _: request, INVALID, "page_token"), target)


async def test_token_still_works_on_its_own_query(client: Client, target: Target) -> None:
    """The refusals above are about the query, not about tokens in general."""
    await client.create(name="second ws1 key")
    first = await client.keys.ListKeys(keys_pb2.ListKeysRequest(workspace_id="ws1", page_size=1),
                                       metadata=auth(client.root))
    second = await client.keys.ListKeys(
        keys_pb2.ListKeysRequest(workspace_id="ws1", page_size=1, page_token=first.next_page_token),
        metadata=auth(client.root))
    assert [k.id for k in first.keys] != [k.id for k in second.keys] and len(second.keys) == 1


async def test_unknown_uuid_is_not_found_even_for_a_workspace_key(client: Client, db: asyncpg.Connection) -> None:
    """A workspace admin gets the same NOT_FOUND for a missing id, with no audit row (nothing was refused)."""
    admin = await client.create(permissions=["apikeys:*"])
    before = await row_counts(db)
    err = await rpc_error(client.keys.GetKey(keys_pb2.GetKeyRequest(id=str(uuid.uuid4())),
                                             metadata=auth(admin.api_key)))
    assert err.code() == NOT_FOUND
    assert await row_counts(db) == before


async def test_a_refusal_for_permission_is_audited_but_a_validation_error_is_not(
    client: Client, db: asyncpg.Connection
) -> None:
    """The row counts above can see a write: the same caller's PERMISSION_DENIED adds one DENIED audit row."""
    viewer = await client.create(permissions=["apikeys:view"])
    before = await row_counts(db)

    denied = await rpc_error(client.create(viewer.api_key, name="ok", permissions=["chatflows:view"]))
    after_denied = await row_counts(db)
    invalid = await rpc_error(client.create(viewer.api_key, name="", permissions=["chatflows:view"]))

    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert after_denied == before | {"audit_events": before["audit_events"] + 1}
    assert await db.fetchval("SELECT outcome FROM audit_events ORDER BY id DESC LIMIT 1") == "DENIED"
    assert invalid.code() == INVALID and list(field_violations(invalid)) == ["name"]
    assert await row_counts(db) == after_denied
