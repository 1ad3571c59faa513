"""AuthzService.Check and BatchCheck through the real channel: every decision code and what it carries.

A denial is an answer (allowed=false, a code, an http_status of 401 or 403), never an RPC
error; RPC errors are kept for malformed requests (INVALID_ARGUMENT naming the field).
The key_id/key_name/workspace_id fields are set once the key is identified, and no
response ever echoes the presented key.

Each test starts its own server and database, which costs far more than a Check, so
related cases share one test and are compared as a whole table ({case: outcome}), which
also makes a failure show every case that went wrong at once.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Mapping
from datetime import timedelta

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from keygate.domain.keys import KeyFormat
from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth, field_violations, in_, rpc_error

Code = authz_pb2.DecisionCode
OK = authz_pb2.OK
# The seeds' mapping, written out here rather than read from the service.
HTTP_STATUS = {
    OK: 200,
    authz_pb2.KEY_MISSING: 401,
    authz_pb2.KEY_MALFORMED: 401,
    authz_pb2.KEY_NOT_FOUND: 401,
    authz_pb2.KEY_EXPIRED: 401,
    authz_pb2.KEY_DISABLED: 401,
    authz_pb2.RESOURCE_BOUND_TO_OTHER_KEY: 401,
    authz_pb2.PERMISSION_DENIED: 403,
    authz_pb2.RESOURCE_OUT_OF_SCOPE: 403,
    authz_pb2.WORKSPACE_MISMATCH: 403,
}
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
POLL_INTERVAL = 0.05
Key = keys_pb2.CreateKeyResponse
Item = tuple[str, str, str]  # (resource, action, workspace_id)


# --- helpers ---------------------------------------------------------------------------


def with_checksum(body: str) -> str:
    """`body` plus the documented checksum: CRC32 of the body as 6 base62 characters."""
    value, digits = zlib.crc32(body.encode()), []
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits.append(BASE62[digit])
    return body + "".join(reversed(digits))


def other_char(c: str) -> str:
    return "A" if c != "A" else "B"


def outcome(response: authz_pb2.CheckResponse) -> tuple[object, ...]:
    return (Code.Name(response.code), response.http_status, response.allowed,
            response.key_id, response.key_name, response.workspace_id)


def want(code: int, key: Key | None = None) -> tuple[object, ...]:
    """The outcome a decision must have: its status, and the key's identity exactly when it was identified."""
    identity = (key.key.id, key.key.name, key.key.workspace_id) if key else ("", "", "")
    return (Code.Name(code), HTTP_STATUS[code], code == OK, *identity)


def assert_not_echoed(response: authz_pb2.CheckResponse, presented: str) -> None:
    """Neither the key nor any 8-character piece of it appears anywhere in the response."""
    text = str(response)
    width = min(8, len(presented))
    pieces = {presented[i:i + width] for i in range(len(presented) - width + 1)}
    assert not [p for p in pieces if p in text], (presented, response)


def expect(response: authz_pb2.CheckResponse, code: int, key: Key | None = None, *, presented: str = "") -> None:
    assert outcome(response) == want(code, key), response
    assert response.reason
    if presented:
        assert_not_echoed(response, presented)


async def update(client: Client, key_id: str, **fields: object) -> keys_pb2.ApiKey:
    return await client.keys.UpdateKey(
        keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(id=key_id, **fields),
                                  update_mask=field_mask_pb2.FieldMask(paths=list(fields))),
        metadata=auth(client.root))


async def bind(client: Client, resource: str, key: Key, *actions: str) -> None:
    await client.keys.BindResource(
        keys_pb2.BindResourceRequest(resource=resource, key_id=key.key.id, actions=list(actions)),
        metadata=auth(client.root))


async def unbind(client: Client, resource: str, key: Key) -> None:
    await client.keys.UnbindResource(keys_pb2.UnbindResourceRequest(resource=resource, key_id=key.key.id),
                                     metadata=auth(client.root))


async def delete(client: Client, key: Key) -> None:
    await client.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=key.key.id), metadata=auth(client.root))


async def rotate(client: Client, key: Key, grace_seconds: int) -> str:
    response = await client.keys.RotateKey(
        keys_pb2.RotateKeyRequest(id=key.key.id, grace_period=duration_pb2.Duration(seconds=grace_seconds)),
        metadata=auth(client.root))
    return response.api_key


async def check_until_denied(client: Client, api_key: str, timeout: float = 5.0) -> authz_pb2.CheckResponse:
    """Poll Check (chatflows:view, no resource) until it stops answering OK."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.check(api_key)
        if response.code != OK or time.monotonic() > deadline:
            return response
        await asyncio.sleep(POLL_INTERVAL)


async def batch(client: Client, api_key: str, *items: Item) -> list[authz_pb2.CheckResponse]:
    response = await client.authz.BatchCheck(authz_pb2.BatchCheckRequest(
        api_key=api_key,
        items=[authz_pb2.BatchCheckItem(resource=r, action=a, workspace_id=w) for r, a, w in items]))
    return list(response.results)


async def invalid_field(call: object) -> list[str]:
    """The fields named by a call that must fail with INVALID_ARGUMENT."""
    error = await rpc_error(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    return list(field_violations(error))


# --- identification: missing, malformed, unknown -------------------------------------------


async def test_empty_key_is_key_missing(client: Client) -> None:
    expect(await client.check("", "chatflows/a"), authz_pb2.KEY_MISSING)


MALFORMED: Mapping[str, Callable[[str], str]] = {
    "bad checksum": lambda k: k[:-6] + ("000000" if k[-6:] != "000000" else "111111"),
    "one char of the secret changed": lambda k: k[:10] + other_char(k[10]) + k[11:],
    "one char of the checksum changed": lambda k: k[:-1] + other_char(k[-1]),
    "one char short": lambda k: k[:-1],
    "one char long": lambda k: k + "A",
    "valid checksum, secret one char short": lambda k: with_checksum(k[:-7]),
    "valid checksum, secret one char long": lambda k: with_checksum(k[:-6] + "A"),
    "valid checksum, non-base62 secret": lambda k: with_checksum("fl_" + "-" * 43),
    "prefix only": lambda k: "fl_",
    "short junk": lambda k: "abc",
    "15 chars without our prefix": lambda k: "abcdefghijklmno",
    "contains a space": lambda k: k[:10] + " " + k[11:],
    "non-ascii": lambda k: k[:10] + "é" + k[11:],
    "longer than 256 chars": lambda k: "x" * 257,
}


async def test_malformed_keys_are_key_malformed_and_never_echoed(client: Client) -> None:
    created = await client.create()
    expect(await client.check(created.api_key), OK, created)
    presented = {case: mutate(created.api_key) for case, mutate in MALFORMED.items()}
    assert created.api_key not in presented.values()

    responses = {case: await client.check(key, "chatflows/a") for case, key in presented.items()}

    assert {c: outcome(r) for c, r in responses.items()} == {c: want(authz_pb2.KEY_MALFORMED) for c in MALFORMED}
    for case, response in responses.items():
        assert_not_echoed(response, presented[case])


NOT_FOUND: Mapping[str, Callable[[], str]] = {
    "well-formed, generated": lambda: KeyFormat().generate(),
    "well-formed, documented checksum": lambda: with_checksum("fl_" + "Q7" * 21 + "z"),
    "foreign (Flowise-style) key": lambda: "dGhpcyBpcyBhIGZsb3dpc2Uga2V5IGZyb20gMjAyNA",
    "foreign key with another prefix": lambda: "sk-" + "a1B2" * 10,
    "our prefix in upper case is foreign": lambda: "FL_" + KeyFormat().generate()[3:],
    "exactly 16 chars without our prefix": lambda: "abcdefghijklmnop",
    "exactly 256 chars without our prefix": lambda: "k" * 256,
}


async def test_unknown_keys_are_key_not_found_and_never_echoed(client: Client) -> None:
    presented = {case: make() for case, make in NOT_FOUND.items()}

    responses = {case: await client.check(key, "chatflows/x") for case, key in presented.items()}

    assert {c: outcome(r) for c, r in responses.items()} == {c: want(authz_pb2.KEY_NOT_FOUND) for c in NOT_FOUND}
    for case, response in responses.items():
        assert presented[case] not in response.reason
        assert_not_echoed(response, presented[case])


# --- the key's own state: expired, disabled --------------------------------------------------


async def test_key_past_its_expire_time_is_key_expired(client: Client) -> None:
    created = await client.create(expire_time=in_(timedelta(seconds=1)))
    expect(await client.check(created.api_key), OK, created)

    started = time.monotonic()
    response = await check_until_denied(client, created.api_key)

    expect(response, authz_pb2.KEY_EXPIRED, created, presented=created.api_key)
    assert time.monotonic() - started < 3


async def test_disabled_key_is_key_disabled_until_re_enabled(client: Client) -> None:
    created = await client.create()

    await update(client, created.key.id, disabled=True)
    expect(await client.check(created.api_key), authz_pb2.KEY_DISABLED, created, presented=created.api_key)

    await update(client, created.key.id, disabled=False)
    expect(await client.check(created.api_key), OK, created)


# --- permission, scope, workspace --------------------------------------------------------------


async def test_missing_permission_is_permission_denied(client: Client) -> None:
    created = await client.create(permissions=["chatflows:view"])

    response = await client.check(created.api_key, "chatflows/a", "chatflows:delete")

    expect(response, authz_pb2.PERMISSION_DENIED, created, presented=created.api_key)


SCOPE_CASES: Mapping[tuple[str, ...], Mapping[tuple[str, str], int]] = {
    ("chatflows/a",): {
        ("chatflows/a", "chatflows:view"): OK,
        ("chatflows/a/messages", "chatflows:view"): OK,
        ("chatflows/a", "predictions:create"): OK,
        ("chatflows/b", "chatflows:view"): authz_pb2.RESOURCE_OUT_OF_SCOPE,
        ("chatflows/ab", "chatflows:view"): authz_pb2.RESOURCE_OUT_OF_SCOPE,
        ("", "chatflows:create"): authz_pb2.RESOURCE_OUT_OF_SCOPE,
        ("", "chatflows:view"): authz_pb2.RESOURCE_OUT_OF_SCOPE,
        ("tools/t", "tools:view"): authz_pb2.RESOURCE_OUT_OF_SCOPE,
    },
    ("chatflows/a", "tools/t"): {
        ("tools/t", "tools:view"): OK,
        ("chatflows/a", "chatflows:view"): OK,
        ("tools/u", "tools:view"): authz_pb2.RESOURCE_OUT_OF_SCOPE,
    },
    ("chatflows/*",): {
        ("chatflows/b", "chatflows:delete"): OK,
        ("", "chatflows:create"): OK,
        ("tools/t", "tools:view"): authz_pb2.RESOURCE_OUT_OF_SCOPE,
        ("", "tools:view"): authz_pb2.RESOURCE_OUT_OF_SCOPE,
    },
    (): {
        ("tools/t", "tools:view"): OK,
        ("", "chatflows:create"): OK,
    },
}


async def test_key_scope_limits_resources(client: Client) -> None:
    got, expected = {}, {}
    for scope, cases in SCOPE_CASES.items():
        created = await client.create(permissions=["chatflows:*", "tools:view", "predictions:create"],
                                      resources=list(scope))
        for (resource, action), code in cases.items():
            got[scope, resource, action] = outcome(await client.check(created.api_key, resource, action))
            expected[scope, resource, action] = want(code, created)

    assert got == expected


async def test_other_workspace_is_workspace_mismatch(client: Client) -> None:
    created = await client.create(workspace_id="ws1")

    expect(await client.check(created.api_key, "chatflows/a", workspace_id="ws2"),
           authz_pb2.WORKSPACE_MISMATCH, created, presented=created.api_key)
    expect(await client.check(created.api_key, "chatflows/a", workspace_id="ws1"), OK, created)


async def test_root_key_passes_any_workspace(client: Client) -> None:
    workspaces = ("", "ws1", "ws2", "another-tenant")

    responses = {w: await client.check(client.root, "chatflows/a", "chatflows:delete", w) for w in workspaces}

    assert {w: outcome(r)[:3] for w, r in responses.items()} == {w: ("OK", 200, True) for w in workspaces}
    assert {(r.key_name, r.workspace_id) for r in responses.values()} == {("root", "")}
    assert len({r.key_id for r in responses.values()}) == 1 and responses[""].key_id


async def test_first_failing_rule_decides(client: Client) -> None:
    """Order: expired, disabled, workspace, scope, permission, binding; the first failing rule answers."""
    spec = {"permissions": ["chatflows:view", "predictions:create"], "resources": ["chatflows/a"]}
    live, disabled = await client.create(**spec), await client.create(**spec)
    await update(client, disabled.key.id, disabled=True)
    await bind(client, "chatflows/a", await client.create(permissions=["chatflows:*"]), "chatflows:delete")
    cases: Mapping[str, tuple[Key, Item, int]] = {
        "disabled before workspace": (disabled, ("chatflows/b", "chatflows:delete", "ws2"), authz_pb2.KEY_DISABLED),
        "workspace before scope": (live, ("chatflows/b", "chatflows:delete", "ws2"), authz_pb2.WORKSPACE_MISMATCH),
        "scope before permission": (live, ("chatflows/b", "chatflows:delete", ""), authz_pb2.RESOURCE_OUT_OF_SCOPE),
        # a key that could not use the resource anyway learns nothing about its binding
        "permission before binding": (live, ("chatflows/a", "chatflows:delete", ""), authz_pb2.PERMISSION_DENIED),
    }

    got = {case: outcome(await client.check(key.api_key, *item)) for case, (key, item, _) in cases.items()}

    assert got == {case: want(code, key) for case, (key, _, code) in cases.items()}


# --- resource bindings -------------------------------------------------------------------------


async def test_binding_reserves_use_for_the_bound_key(client: Client) -> None:
    permissions = ["chatflows:view", "predictions:create"]
    bound, other = await client.create(permissions=permissions), await client.create(permissions=permissions)
    other_ws = await client.create(permissions=permissions, workspace_id="ws2")
    await bind(client, "chatflows/x", bound)

    for workspace_id in ("", "ws1"):
        expect(await client.check(other.api_key, "chatflows/x", "predictions:create", workspace_id),
               authz_pb2.RESOURCE_BOUND_TO_OTHER_KEY, other, presented=other.api_key)
        expect(await client.check(bound.api_key, "chatflows/x", "predictions:create", workspace_id), OK, bound)
    # bindings govern use, not management, and only the bound resource of the bound workspace
    expect(await client.check(other.api_key, "chatflows/x", "chatflows:view"), OK, other)
    expect(await client.check(other.api_key, "chatflows/y", "predictions:create"), OK, other)
    expect(await client.check(other_ws.api_key, "chatflows/x", "predictions:create"), OK, other_ws)

    await unbind(client, "chatflows/x", bound)
    expect(await client.check(other.api_key, "chatflows/x", "predictions:create"), OK, other)


async def test_binding_with_explicit_actions_governs_only_those(client: Client) -> None:
    permissions = ["chatflows:export", "predictions:create"]
    bound, other = await client.create(permissions=permissions), await client.create(permissions=permissions)
    await bind(client, "chatflows/x", bound, "chatflows:export")

    expect(await client.check(other.api_key, "chatflows/x", "chatflows:export"),
           authz_pb2.RESOURCE_BOUND_TO_OTHER_KEY, other)
    expect(await client.check(bound.api_key, "chatflows/x", "chatflows:export"), OK, bound)
    expect(await client.check(other.api_key, "chatflows/x", "predictions:create"), OK, other)


async def test_every_bound_key_passes(client: Client) -> None:
    first, second, third = [await client.create(permissions=["predictions:create"]) for _ in range(3)]
    await bind(client, "chatflows/x", first)
    await bind(client, "chatflows/x", second)
    expected = {first.key.id: OK, second.key.id: OK, third.key.id: authz_pb2.RESOURCE_BOUND_TO_OTHER_KEY}

    got = {k.key.id: outcome(await client.check(k.api_key, "chatflows/x", "predictions:create"))
           for k in (first, second, third)}

    assert got == {k.key.id: want(expected[k.key.id], k) for k in (first, second, third)}


async def test_bound_key_without_the_permission_is_permission_denied(client: Client) -> None:
    bound = await client.create(permissions=["chatflows:view"])
    await bind(client, "chatflows/x", bound)

    response = await client.check(bound.api_key, "chatflows/x", "predictions:create")

    expect(response, authz_pb2.PERMISSION_DENIED, bound)


async def test_deleting_the_bound_key_releases_the_resource(client: Client) -> None:
    bound, other = [await client.create(permissions=["predictions:create"]) for _ in range(2)]
    await bind(client, "chatflows/x", bound)
    expect(await client.check(other.api_key, "chatflows/x", "predictions:create"),
           authz_pb2.RESOURCE_BOUND_TO_OTHER_KEY, other)

    await delete(client, bound)

    expect(await client.check(other.api_key, "chatflows/x", "predictions:create"), OK, other)


# --- implication -------------------------------------------------------------------------------


IMPLICATION: Mapping[tuple[str, str], bool] = {
    ("chatflows:update", "chatflows:view"): True,
    ("chatflows:update", "chatflows:delete"): False,
    ("chatflows:update", "agentflows:view"): False,
    ("tools:export", "tools:view"): True,
    ("predictions:create", "chatflows:view"): False,
    ("chatflows:*", "chatflows:delete"): True,
    ("chatflows:*", "chatflows:domains"): True,
    ("chatflows:*", "agentflows:view"): False,
}


async def test_permission_implication(client: Client) -> None:
    keys = {p: await client.create(permissions=[p]) for p in {p for p, _ in IMPLICATION}}

    got = {(p, a): outcome(await client.check(keys[p].api_key, f"{a.partition(':')[0]}/r1", a))
           for p, a in IMPLICATION}

    assert got == {(p, a): want(OK if allowed else authz_pb2.PERMISSION_DENIED, keys[p])
                   for (p, a), allowed in IMPLICATION.items()}


async def test_root_key_grants_everything(client: Client) -> None:
    actions = ("chatflows:delete", "apikeys:delete", "predictions:create", "documentStores:add-loader",
               "templates:custom-share", "logs:view", "users:manage", "credentials:share")
    acts_on = {"predictions": "chatflows"}  # predictions act on chatflows (and agentflows)
    cases = [(resource, a) for a in actions
             for resource in ("", f"{acts_on.get(a.partition(':')[0], a.partition(':')[0])}/r1")]

    got = {case: outcome(await client.check(client.root, *case, "ws1"))[:3] for case in cases}

    assert got == {case: ("OK", 200, True) for case in cases}


# --- rotation and deletion ---------------------------------------------------------------------


async def test_rotation_keeps_the_old_key_until_the_grace_period_ends(client: Client) -> None:
    created = await client.create()
    started = time.monotonic()
    new_key = await rotate(client, created, grace_seconds=1)

    expect(await client.check(created.api_key), OK, created)
    expect(await client.check(new_key), OK, created)

    old = await check_until_denied(client, created.api_key)

    assert time.monotonic() - started >= 0.95
    expect(old, authz_pb2.KEY_EXPIRED, created, presented=created.api_key)
    expect(await client.check(new_key), OK, created)


async def test_rotation_without_grace_refuses_the_old_key_at_once(client: Client) -> None:
    created = await client.create()

    new_key = await rotate(client, created, grace_seconds=0)

    expect(await client.check(created.api_key), authz_pb2.KEY_EXPIRED, created)
    expect(await client.check(new_key), OK, created)


async def test_delete_revokes_at_once(client: Client) -> None:
    created = await client.create()
    expect(await client.check(created.api_key), OK, created)

    await delete(client, created)

    expect(await client.check(created.api_key), authz_pb2.KEY_NOT_FOUND, presented=created.api_key)


# --- malformed requests --------------------------------------------------------------------------


MALFORMED_ITEMS: Mapping[str, tuple[Item, str]] = {
    "unknown verb": (("chatflows/x", "chatflows:fly", ""), "action"),
    "unknown category": (("chatflows/x", "nosuch:view", ""), "action"),
    "category wildcard": (("chatflows/x", "chatflows:*", ""), "action"),
    "root wildcard": (("chatflows/x", "*", ""), "action"),
    "empty action": (("chatflows/x", "", ""), "action"),
    "no verb": (("chatflows/x", "chatflows", ""), "action"),
    "wildcard resource": (("chatflows/*", "chatflows:view", ""), "resource"),
    "dot-dot segment": (("chatflows/../x", "chatflows:view", ""), "resource"),
    "leading slash": (("/chatflows/x", "chatflows:view", ""), "resource"),
    "empty segment": (("chatflows//x", "chatflows:view", ""), "resource"),
    "space in resource": (("chatflows/x y", "chatflows:view", ""), "resource"),
    "resource over 256 chars": (("chatflows/" + "a" * 300, "chatflows:view", ""), "resource"),
    "bad workspace id": (("chatflows/x", "chatflows:view", "ws 1"), "workspace_id"),
}


async def test_malformed_check_is_invalid_argument_naming_the_field(client: Client) -> None:
    got = {case: await invalid_field(client.check(client.root, *item)) for case, (item, _) in MALFORMED_ITEMS.items()}

    assert got == {case: [field] for case, (_, field) in MALFORMED_ITEMS.items()}


async def test_malformed_check_is_refused_whatever_the_key(client: Client) -> None:
    for api_key in ("", "junk", KeyFormat().generate()):
        assert await invalid_field(client.check(api_key, "chatflows/x", "chatflows:fly")) == ["action"]


async def test_malformed_batch_item_is_invalid_argument_naming_it(client: Client) -> None:
    good = ("chatflows/x", "chatflows:view", "")

    got = {case: await invalid_field(batch(client, client.root, good, good, item, good))
           for case, (item, _) in MALFORMED_ITEMS.items()}

    assert got == {case: [f"items[2].{field}"] for case, (_, field) in MALFORMED_ITEMS.items()}


async def test_batch_check_takes_at_most_100_items(client: Client) -> None:
    items = [(f"chatflows/c{i}", "chatflows:view", "") for i in range(101)]

    results = await batch(client, client.root, *items[:100])

    assert [r.code for r in results] == [OK] * 100
    assert await invalid_field(batch(client, client.root, *items)) == ["items"]


# --- BatchCheck ----------------------------------------------------------------------------------


async def test_batch_check_answers_each_item_in_order_like_check(client: Client) -> None:
    created = await client.create(permissions=["chatflows:update", "predictions:create"])
    await bind(client, "chatflows/bound", await client.create(permissions=["predictions:create"]))
    items: list[tuple[Item, int]] = [
        (("chatflows/a", "chatflows:view", ""), OK),
        (("chatflows/a", "chatflows:delete", ""), authz_pb2.PERMISSION_DENIED),
        (("chatflows/a", "chatflows:view", "ws2"), authz_pb2.WORKSPACE_MISMATCH),
        (("chatflows/bound", "predictions:create", ""), authz_pb2.RESOURCE_BOUND_TO_OTHER_KEY),
        (("", "chatflows:update", ""), OK),
        (("chatflows/b", "predictions:create", "ws1"), OK),
        (("tools/t", "tools:view", ""), authz_pb2.PERMISSION_DENIED),
    ]

    results = await batch(client, created.api_key, *(item for item, _ in items))

    assert [outcome(r) for r in results] == [want(code, created) for _, code in items]
    assert results == [await client.check(created.api_key, *item) for item, _ in items]
    for result in results:
        assert_not_echoed(result, created.api_key)


async def test_batch_check_with_a_bad_key_denies_every_item(client: Client) -> None:
    disabled = await client.create(permissions=["chatflows:*", "tools:view"])
    await update(client, disabled.key.id, disabled=True)
    cases: Mapping[str, tuple[str, int, Key | None]] = {
        "missing": ("", authz_pb2.KEY_MISSING, None),
        "malformed": ("fl_short", authz_pb2.KEY_MALFORMED, None),
        "unknown": (KeyFormat().generate(), authz_pb2.KEY_NOT_FOUND, None),
        "disabled": (disabled.api_key, authz_pb2.KEY_DISABLED, disabled),
    }
    items = [("chatflows/a", "chatflows:view", ""), ("", "chatflows:create", ""), ("tools/t", "tools:view", "ws2")]

    got = {case: [outcome(r) for r in await batch(client, key, *items)] for case, (key, _, _) in cases.items()}

    assert got == {case: [want(code, key)] * len(items) for case, (_, code, key) in cases.items()}


async def test_batch_check_with_no_items_answers_nothing(client: Client) -> None:
    assert await batch(client, client.root) == []
