"""KeyService callers: who is let in (authentication), what each may do (verbs), what each may see
(workspaces), and that no caller can make or widen a key beyond itself (escalation, audited)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from keygate.domain.keys import KeyFormat
from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth, field_violations, in_, rpc_error

Metadata = tuple[tuple[str, str], ...]
ADMIN = ["apikeys:*", "logs:view", "chatflows:*"]


@dataclass(frozen=True)
class Actor:
    """A key made for a test: its plaintext and what the server returned about it."""

    plaintext: str
    key: keys_pb2.ApiKey

    @property
    def md(self) -> Metadata:
        return auth(self.plaintext)

    @property
    def id(self) -> str:
        return self.key.id


def _fields(spec: dict[str, Any]) -> dict[str, Any]:
    """CreateKey fields, with a timedelta `expire_time` turned into a timestamp that far from now."""
    return {k: in_(v) if isinstance(v, timedelta) else v for k, v in spec.items()}


async def make(client: Client, permissions: list[str], **spec: Any) -> Actor:
    """A key created by root (workspace ws1 unless given)."""
    created = await client.create(permissions=permissions, **_fields(spec))
    return Actor(created.api_key, created.key)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def update(client: Client, md: Metadata, key_id: str, paths: tuple[str, ...], **values: Any) -> keys_pb2.ApiKey:
    key = keys_pb2.ApiKey(id=key_id, **_fields(values))
    return await client.keys.UpdateKey(keys_pb2.UpdateKeyRequest(key=key, update_mask=mask(*paths)), metadata=md)


async def all_keys(client: Client) -> list[keys_pb2.ApiKey]:
    """Every key of every workspace as root sees it, minus the usage counters written behind."""
    listed = await client.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=1000), metadata=auth(client.root))
    for key in listed.keys:
        key.ClearField("last_used_time")
        key.ClearField("usage_count")
    return list(listed.keys)


async def audited(client: Client, **query: str) -> list[keys_pb2.AuditEvent]:
    """Audit events as root sees them (one page is plenty for one test)."""
    request = keys_pb2.ListAuditEventsRequest(page_size=1000, **query)
    return list((await client.keys.ListAuditEvents(request, metadata=auth(client.root))).events)


# --- one call per KeyService method, as `md` would make it, about key `target` ---------------------

Call = Callable[[Client, Metadata, str], Awaitable[Any]]
CALLS: dict[str, Call] = {
    "CreateKey": lambda c, md, target: c.keys.CreateKey(
        keys_pb2.CreateKeyRequest(name="new", permissions=["chatflows:view"]), metadata=md),
    "GetKey": lambda c, md, target: c.keys.GetKey(keys_pb2.GetKeyRequest(id=target), metadata=md),
    "ListKeys": lambda c, md, target: c.keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=md),
    "UpdateKey": lambda c, md, target: update(c, md, target, ("name",), name="renamed"),
    "DeleteKey": lambda c, md, target: c.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=target), metadata=md),
    "RotateKey": lambda c, md, target: c.keys.RotateKey(keys_pb2.RotateKeyRequest(id=target), metadata=md),
    "BindResource": lambda c, md, target: c.keys.BindResource(
        keys_pb2.BindResourceRequest(resource="chatflows/x", key_id=target), metadata=md),
    "UnbindResource": lambda c, md, target: c.keys.UnbindResource(
        keys_pb2.UnbindResourceRequest(resource="chatflows/x", key_id=target), metadata=md),
    "ListBindings": lambda c, md, target: c.keys.ListBindings(keys_pb2.ListBindingsRequest(key_id=target), metadata=md),
    "ListAuditEvents": lambda c, md, target: c.keys.ListAuditEvents(keys_pb2.ListAuditEventsRequest(), metadata=md),
}


async def bound_key(client: Client, workspace_id: str = "ws1") -> Actor:
    """A plain key of `workspace_id`, bound to chatflows/x by root (so UnbindResource has work to do)."""
    target = await make(client, ["chatflows:view"], workspace_id=workspace_id)
    await client.keys.BindResource(keys_pb2.BindResourceRequest(resource="chatflows/x", key_id=target.id),
                                   metadata=auth(client.root))
    return target


# --- authentication ---------------------------------------------------------------------------------


async def test_every_method_refuses_a_call_without_authorization(client: Client) -> None:
    target = await bound_key(client)
    before = await all_keys(client)

    codes = {method: (await rpc_error(call(client, (), target.id))).code() for method, call in CALLS.items()}

    assert codes == dict.fromkeys(CALLS, grpc.StatusCode.UNAUTHENTICATED)
    assert await all_keys(client) == before
    assert [e.action for e in await audited(client)] == ["BindResource", "CreateKey", "Bootstrap"]


BAD_CREDENTIALS: dict[str, Callable[[str], Metadata]] = {
    "basic scheme": lambda root: (("authorization", f"Basic {root}"),),
    "no scheme": lambda root: (("authorization", root),),
    "x-api-key header": lambda root: (("x-api-key", root),),
    "malformed": lambda root: auth("fl_not-a-key"),
    "bad checksum": lambda root: auth(root[:-1] + ("A" if root[-1] != "A" else "B")),
    "unknown": lambda root: auth(KeyFormat().generate()),
    "unknown foreign": lambda root: auth("legacy-flowise-key-0123456789"),
}


async def test_bad_credentials_are_unauthenticated_and_never_echoed(client: Client) -> None:
    list_keys = CALLS["ListKeys"]
    errors = {name: await rpc_error(list_keys(client, md(client.root), "")) for name, md in BAD_CREDENTIALS.items()}

    codes = {name: error.code() for name, error in errors.items()}
    assert codes == dict.fromkeys(BAD_CREDENTIALS, grpc.StatusCode.UNAUTHENTICATED)
    for name, error in errors.items():
        presented = BAD_CREDENTIALS[name](client.root)[0][1].split(" ")[-1]
        assert presented not in (error.details() or ""), name


async def _expire(client: Client, actor: Actor) -> None:
    expiry = actor.key.expire_time.ToDatetime(tzinfo=UTC)
    await asyncio.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds()) + 0.05)


async def _disable(client: Client, actor: Actor) -> None:
    await update(client, auth(client.root), actor.id, ("disabled",), disabled=True)


async def _rotate_out(client: Client, actor: Actor) -> None:
    rotated = await client.keys.RotateKey(keys_pb2.RotateKeyRequest(id=actor.id), metadata=auth(client.root))
    # The key record lives on under its new secret: only the old secret is dead.
    await CALLS["ListKeys"](client, auth(rotated.api_key), "")


DEATHS: dict[str, tuple[dict[str, Any], Callable[[Client, Actor], Awaitable[None]]]] = {
    "expired": ({"expire_time": timedelta(seconds=1)}, _expire),
    "disabled": ({}, _disable),
    "rotated out": ({}, _rotate_out),
}


@pytest.mark.parametrize("death", sorted(DEATHS))
async def test_a_key_that_worked_is_unauthenticated_once_dead(client: Client, death: str) -> None:
    spec, kill = DEATHS[death]
    actor = await make(client, ["apikeys:view"], **spec)
    await CALLS["ListKeys"](client, actor.md, "")

    await kill(client, actor)
    error = await rpc_error(CALLS["ListKeys"](client, actor.md, ""))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --- verbs ------------------------------------------------------------------------------------------

NEEDS = {
    "CreateKey": "apikeys:create",
    "GetKey": "apikeys:view",
    "ListKeys": "apikeys:view",
    "UpdateKey": "apikeys:update",
    "RotateKey": "apikeys:update",
    "DeleteKey": "apikeys:delete",
    "ListAuditEvents": "logs:view",
    "BindResource": "chatflows:update",
    "UnbindResource": "chatflows:update",
}
EVERY_VERB = ("apikeys:create", "apikeys:update", "apikeys:delete", "logs:view", "chatflows:update")


def lacking(needed: str) -> list[str]:
    """Every verb a test caller could use except `needed` (and, for a view, its whole category,
    since any verb implies view). chatflows:view stays, so targets and new keys are within the caller."""
    category, _, verb = needed.partition(":")
    kept = [p for p in EVERY_VERB if p != needed and not (verb == "view" and p.startswith(category + ":"))]
    return [*kept, "chatflows:view"]


async def test_each_method_needs_its_verb(client: Client) -> None:
    denied = {}
    for method, needed in NEEDS.items():
        target = await bound_key(client)
        without = await make(client, lacking(needed))
        with_it = await make(client, [*lacking(needed), needed])
        before = await all_keys(client)
        denied[method] = ((await rpc_error(CALLS[method](client, without.md, target.id))).code(),
                          await all_keys(client) == before)
        await CALLS[method](client, with_it.md, target.id)  # the same call passes once the verb is held

    assert denied == dict.fromkeys(NEEDS, (grpc.StatusCode.PERMISSION_DENIED, True))


# --- workspaces -------------------------------------------------------------------------------------

BY_ID = ("GetKey", "UpdateKey", "DeleteKey", "RotateKey", "BindResource", "UnbindResource", "ListBindings")


def _masked(error: grpc.aio.AioRpcError, key_id: str) -> tuple[grpc.StatusCode, str]:
    return error.code(), (error.details() or "").replace(key_id, "<id>")


async def test_another_workspace_key_is_not_found_like_a_random_id(client: Client) -> None:
    admin = await make(client, ADMIN)
    foreign = await bound_key(client, "ws2")
    random_id = str(uuid.uuid4())
    before = await all_keys(client)

    answers = {}
    for method in BY_ID:
        foreign_error = await rpc_error(CALLS[method](client, admin.md, foreign.id))
        random_error = await rpc_error(CALLS[method](client, admin.md, random_id))
        answers[method] = (_masked(foreign_error, foreign.id) == _masked(random_error, random_id),
                           foreign_error.code())

    assert answers == dict.fromkeys(BY_ID, (True, grpc.StatusCode.NOT_FOUND))
    assert await all_keys(client) == before
    still = await client.check(foreign.plaintext, "chatflows/x", "chatflows:view", "ws2")
    assert still.code == authz_pb2.OK


async def test_a_workspace_admin_lists_only_its_workspace(client: Client) -> None:
    admin = await make(client, ADMIN)
    mine = await make(client, ["chatflows:view"])
    await make(client, ["chatflows:view"], workspace_id="ws2")

    listed = await client.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=1000), metadata=admin.md)
    refused = await rpc_error(client.keys.ListKeys(keys_pb2.ListKeysRequest(workspace_id="ws2"), metadata=admin.md))

    assert {k.id for k in listed.keys} == {admin.id, mine.id}
    assert {k.workspace_id for k in listed.keys} == {"ws1"} and not any(k.root for k in listed.keys)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_workspace_admin_cannot_create_in_another_workspace(client: Client) -> None:
    admin = await make(client, ADMIN)
    before = await all_keys(client)

    error = await rpc_error(client.create(admin.plaintext, workspace_id="ws2"))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await all_keys(client) == before


# --- escalation -------------------------------------------------------------------------------------

Attempt = Callable[[Client, Actor, str], Awaitable[Any]]


def creating(**spec: Any) -> Attempt:
    return lambda c, caller, target: c.create(caller.plaintext, name="wider", **_fields(spec))


def updating(*paths: str, **values: Any) -> Attempt:
    return lambda c, caller, target: update(c, caller.md, target, paths, **values)


def rotating() -> Attempt:
    return lambda c, caller, target: c.keys.RotateKey(keys_pb2.RotateKeyRequest(id=target), metadata=caller.md)


CREATOR = {"permissions": ["apikeys:create", "chatflows:view"]}
UPDATER = {"permissions": ["apikeys:update", "chatflows:view"]}
SCOPED = ["chatflows/a", "apikeys/*"]  # a scoped admin needs apikeys in its scope to manage keys at all
STRONGER = {"permissions": ["chatflows:delete"]}
PLAIN = {"permissions": ["chatflows:view"]}


@dataclass(frozen=True)
class Case:
    caller: dict[str, Any]  # CreateKey fields of the calling key (workspace ws1, made by root)
    attempt: Attempt
    action: str  # the audited RPC
    reason: str = ""  # a word the audited reason must contain
    target: dict[str, Any] | None = None  # the key acted on; None: the caller itself
    disabled: bool = False  # root disables the target first


ESCALATIONS = {
    "create with a permission the caller lacks": Case(
        CREATOR, creating(permissions=["chatflows:delete"]), "CreateKey", "chatflows:delete"),
    "create with category:* over some verbs": Case(
        {"permissions": ["apikeys:create", "chatflows:view", "chatflows:update"]},
        creating(permissions=["chatflows:*"]), "CreateKey", "chatflows:*"),
    "create unscoped from a scoped caller": Case(
        {**CREATOR, "resources": SCOPED}, creating(permissions=["chatflows:view"]), "CreateKey", "scope"),
    "create chatflows/* from a chatflows/a caller": Case(
        {**CREATOR, "resources": SCOPED}, creating(permissions=["chatflows:view"], resources=["chatflows/*"]),
        "CreateKey", "scope"),
    "create outliving the caller": Case(
        {**CREATOR, "expire_time": timedelta(hours=1)},
        creating(permissions=["chatflows:view"], expire_time=timedelta(hours=2)), "CreateKey", "expire_time"),
    "create without expiry from an expiring caller": Case(
        {**CREATOR, "expire_time": timedelta(hours=1)}, creating(permissions=["chatflows:view"]),
        "CreateKey", "expire_time"),
    "create in another workspace": Case(
        CREATOR, creating(permissions=["chatflows:view"], workspace_id="ws2"), "CreateKey", "workspace"),
    "self: add a permission": Case(
        UPDATER, updating("permissions", permissions=["apikeys:update", "chatflows:view", "chatflows:delete"]),
        "UpdateKey", "chatflows:delete"),
    "self: drop the scope": Case({**UPDATER, "resources": SCOPED}, updating("resources"), "UpdateKey", "scope"),
    "self: extend the expiry": Case(
        {**UPDATER, "expire_time": timedelta(hours=1)}, updating("expire_time", expire_time=timedelta(hours=2)),
        "UpdateKey", "expire_time"),
    "self: remove the expiry": Case(
        {**UPDATER, "expire_time": timedelta(hours=1)}, updating("expire_time"), "UpdateKey", "expire_time"),
    "re-enable a stronger key": Case(
        UPDATER, updating("disabled", disabled=False), "UpdateKey", "chatflows:delete", STRONGER, disabled=True),
    "rotate a stronger key": Case(UPDATER, rotating(), "RotateKey", "chatflows:delete", STRONGER),
    "add to a stronger key's permissions": Case(
        UPDATER, updating("permissions", permissions=["chatflows:delete", "chatflows:create"]),
        "UpdateKey", "chatflows:create", STRONGER),
    "widen a key's scope beyond the caller's": Case(
        {**UPDATER, "resources": SCOPED}, updating("resources", resources=["chatflows/*"]), "UpdateKey", "scope",
        {"permissions": ["chatflows:view"], "resources": ["chatflows/a"]}),
    # A weaker admin widening a stronger key along one axis must not lend it, on that axis, rights the
    # admin lacks: rights are (permission, scope, time) triples, not three separate lists.
    "widen the scope of a key holding more permissions": Case(
        UPDATER, updating("resources"), "UpdateKey", "scope", {**STRONGER, "resources": ["chatflows/a"]}),
    "extend the expiry of a key holding more permissions": Case(
        UPDATER, updating("expire_time"), "UpdateKey", "expire_time", {**STRONGER, "expire_time": timedelta(hours=1)}),
    "add a permission to a key wider-scoped than the caller": Case(
        {"permissions": ["apikeys:update", "chatflows:delete"], "resources": SCOPED},
        updating("permissions", permissions=["chatflows:view", "chatflows:delete"]), "UpdateKey", "scope",
        {"permissions": ["chatflows:view"]}),
}


async def _escalation_target(client: Client, case: Case, caller: Actor) -> Actor:
    if case.target is None:
        return caller
    target = await make(client, **case.target)
    if case.disabled:
        await _disable(client, target)
    return target


@dataclass(frozen=True)
class Outcome:
    caller: Actor
    target: Actor
    before: list[keys_pb2.ApiKey]  # every key, just before the attempt
    error: grpc.aio.AioRpcError | None  # None: the server let it through


async def attempt_escalation(client: Client, case: Case) -> Outcome:
    caller = await make(client, **case.caller)
    target = await _escalation_target(client, case, caller)
    before = await all_keys(client)
    try:
        await case.attempt(client, caller, target.id)
    except grpc.aio.AioRpcError as error:
        return Outcome(caller, target, before, error)
    return Outcome(caller, target, before, None)


@pytest.mark.parametrize("name", sorted(ESCALATIONS))
async def test_escalation_is_denied_audited_and_changes_nothing(client: Client, name: str) -> None:
    case = ESCALATIONS[name]
    started = datetime.now(UTC) - timedelta(seconds=1)

    outcome = await attempt_escalation(client, case)

    assert outcome.error is not None and outcome.error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await all_keys(client) == outcome.before
    events = await audited(client, actor_key_id=outcome.caller.id)
    assert [(e.action, e.outcome) for e in events] == [(case.action, "DENIED")]
    (event,) = events
    assert event.actor_key_id == outcome.caller.id and case.reason in event.reason
    assert event.target_key_id == ("" if case.action == "CreateKey" else outcome.target.id)
    assert event.event_time.ToDatetime(tzinfo=UTC) >= started


# The controls: the same kinds of request, kept within the caller, pass and are audited OK.
WITHIN = {
    "create a narrower scope": Case(
        {**CREATOR, "resources": SCOPED}, creating(permissions=["chatflows:view"], resources=["chatflows/a/b"]),
        "CreateKey"),
    "create an earlier expiry": Case(
        {**CREATOR, "expire_time": timedelta(hours=1)},
        creating(permissions=["chatflows:view"], expire_time=timedelta(minutes=30)), "CreateKey"),
    "create a permission implied by the caller's": Case(
        {"permissions": ["apikeys:create", "chatflows:update"]}, creating(permissions=["chatflows:view"]), "CreateKey"),
    "create category:* from a category:* holder": Case(
        {"permissions": ["apikeys:create", "chatflows:*"]}, creating(permissions=["chatflows:*"]), "CreateKey"),
    "self: shorten the expiry": Case(
        {**UPDATER, "expire_time": timedelta(hours=1)}, updating("expire_time", expire_time=timedelta(minutes=30)),
        "UpdateKey"),
    "self: drop a permission": Case(
        {"permissions": ["apikeys:update", "chatflows:view", "tools:view"]},
        updating("permissions", permissions=["apikeys:update", "chatflows:view"]), "UpdateKey"),
    "re-enable a key within the caller": Case(
        UPDATER, updating("disabled", disabled=False), "UpdateKey", target=PLAIN,
        disabled=True),
    "rotate a key within the caller": Case(UPDATER, rotating(), "RotateKey", target=PLAIN),
}


@pytest.mark.parametrize("name", sorted(WITHIN))
async def test_the_same_request_within_the_caller_passes(client: Client, name: str) -> None:
    outcome = await attempt_escalation(client, WITHIN[name])

    assert outcome.error is None
    events = await audited(client, actor_key_id=outcome.caller.id)
    assert [(e.action, e.outcome) for e in events] == [(WITHIN[name].action, "OK")]


def plain(value: Any) -> Any:
    return value if isinstance(value, (str, bool)) else list(value)


NARROWINGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "remove permissions": (("permissions",), {"permissions": ["chatflows:view", "chatflows:delete"]}),
    "narrow the scope": (("resources",), {"resources": ["chatflows/a"]}),
    "disable": (("disabled",), {"disabled": True}),
    "rename": (("name",), {"name": "renamed by a weaker admin"}),
}


@pytest.mark.parametrize("name", sorted(NARROWINGS))
async def test_a_weaker_admin_may_narrow_a_stronger_key(client: Client, name: str) -> None:
    paths, values = NARROWINGS[name]
    admin = await make(client, UPDATER["permissions"])
    target = await make(client, ["chatflows:view", "chatflows:delete", "tools:*"])

    returned = await update(client, admin.md, target.id, paths, **values)
    stored = await client.keys.GetKey(keys_pb2.GetKeyRequest(id=target.id), metadata=auth(client.root))

    for path, value in values.items():
        assert plain(getattr(returned, path)) == plain(getattr(stored, path)) == value
    events = await audited(client, actor_key_id=admin.id)
    assert [(e.action, e.outcome, list(e.changed_fields)) for e in events] == [("UpdateKey", "OK", list(paths))]


# --- root -------------------------------------------------------------------------------------------


async def test_root_creates_in_any_named_workspace(client: Client) -> None:
    workspaces = ["ws1", "ws2", "tenant-9"]

    created = [await client.create(workspace_id=w) for w in workspaces]

    (root,) = [k for k in await all_keys(client) if k.root]
    assert [c.key.workspace_id for c in created] == workspaces
    assert {c.key.created_by for c in created} == {root.id}


async def test_root_must_name_the_workspace(client: Client) -> None:
    before = await all_keys(client)

    error = await rpc_error(client.create(workspace_id=""))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {"workspace_id"}
    assert await all_keys(client) == before


@dataclass(frozen=True)
class RootGrant:
    permissions: list[str]
    violation: str
    through_update: bool = False
    caller: list[str] = field(default_factory=list)  # empty: root calls


ROOT_GRANTS = {
    "root creates *": RootGrant(["*"], "permissions[0]"),
    "root creates * among others": RootGrant(["chatflows:view", "*"], "permissions[1]"),
    "an apikeys:* admin creates *": RootGrant(["*"], "permissions[0]", caller=ADMIN),
    "root updates a key to *": RootGrant(["*"], "permissions[0]", through_update=True),
}


@pytest.mark.parametrize("name", sorted(ROOT_GRANTS))
async def test_star_cannot_be_granted(client: Client, name: str) -> None:
    case = ROOT_GRANTS[name]
    md = (await make(client, case.caller)).md if case.caller else auth(client.root)
    target = await make(client, ["chatflows:view"])
    before = await all_keys(client)

    if case.through_update:
        error = await rpc_error(update(client, md, target.id, ("permissions",), permissions=case.permissions))
    else:
        error = await rpc_error(client.keys.CreateKey(
            keys_pb2.CreateKeyRequest(name="star", permissions=case.permissions, workspace_id="ws1"), metadata=md))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(error)) == {case.violation}
    assert await all_keys(client) == before

