"""The plaintext key never rests anywhere: not in any table, not in the audit trail, not in an error."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from keygate.domain.keys import KeyFormat
from keygate.server import App
from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth, rpc_error

SLICE = 20  # no run of this many characters of a secret may appear anywhere


def sha256(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


def material(api_key: str) -> set[str]:
    """Every form of a key that must never be found: the key, its hex bytes, and each 20-character slice
    of its secret part."""
    secret = api_key.partition("_")[2]
    return {api_key, api_key.encode().hex()} | {secret[i:i + SLICE] for i in range(len(secret) - SLICE + 1)}


def found(keys: list[str], text: str) -> list[str]:
    """The keys some material of which occurs in `text` (shown as their first characters only)."""
    return [k[:7] for k in keys if any(m in text for m in material(k))]


@dataclass
class World:
    """Every key issued during a scenario, by liveness, with the ids they belong to."""

    live: dict[str, str] = field(default_factory=dict)  # plaintext -> key id
    dead: list[str] = field(default_factory=list)

    @property
    def issued(self) -> list[str]:
        return [*self.live, *self.dead]


async def rotate(client: Client, key_id: str, grace_seconds: int) -> str:
    response = await client.keys.RotateKey(
        keys_pb2.RotateKeyRequest(id=key_id, grace_period=duration_pb2.Duration(seconds=grace_seconds)),
        metadata=auth(client.root))
    return response.api_key


async def exercise(client: Client, app: App) -> World:
    """Create, rotate (with and without grace), bind, update, delete, refuse, and Check, then flush usage."""
    world = World()
    root = await client.check(client.root)
    world.live[client.root] = root.key_id
    admin = await client.create(name="admin", permissions=["apikeys:*", "chatflows:*", "predictions:create"])
    world.live[admin.api_key] = admin.key.id
    bot = await client.create(admin.api_key, name="bot", permissions=["predictions:create"],
                              metadata={"owner": "team-a"})
    other = await client.create(name="other", workspace_id="ws2", permissions=["tools:view"])
    doomed = await client.create(name="doomed")

    world.live[await rotate(client, bot.key.id, 3600)] = bot.key.id
    world.live[bot.api_key] = bot.key.id  # still inside its grace period
    world.live[await rotate(client, other.key.id, 0)] = other.key.id
    world.dead += [other.api_key, doomed.api_key]

    await client.keys.BindResource(keys_pb2.BindResourceRequest(resource="chatflows/flow1", key_id=bot.key.id),
                                   metadata=auth(admin.api_key))
    await client.keys.UpdateKey(keys_pb2.UpdateKeyRequest(
        key=keys_pb2.ApiKey(id=other.key.id, name="other, renamed", metadata={"x": "y"}),
        update_mask=field_mask_pb2.FieldMask(paths=["name", "metadata"])), metadata=auth(client.root))
    await client.keys.DeleteKey(keys_pb2.DeleteKeyRequest(id=doomed.key.id), metadata=auth(client.root))
    escalation = client.create(admin.api_key, name="wider", permissions=["logs:view"])
    await rpc_error(escalation)  # refused, and the refusal audited

    for key in world.issued:
        await client.check(key, "chatflows/flow1", "predictions:create", "ws1")
    await client.check(admin.api_key, "chatflows/flow1", "predictions:create", "ws1")  # bound to another key
    await client.check(KeyFormat().generate(), "chatflows/flow1", "predictions:create")
    await app.usage.flush()
    return world


async def dump(db: asyncpg.Connection) -> dict[str, list[str]]:
    """Every row of every table in the public schema, each cast to text."""
    tables = await db.fetch("""SELECT table_name FROM information_schema.tables
                               WHERE table_schema = 'public' AND table_type = 'BASE TABLE'""")
    return {t["table_name"]: [r[0] for r in await db.fetch(f'SELECT t::text FROM public."{t["table_name"]}" t')]
            for t in tables}


async def test_no_table_holds_any_plaintext_key(client: Client, app: App, db: asyncpg.Connection) -> None:
    world = await exercise(client, app)

    tables = await dump(db)
    text = "\n".join(row for rows in tables.values() for row in rows)

    assert {"api_keys", "key_secrets", "resource_bindings", "audit_events"} <= set(tables)
    assert all(tables[t] for t in ("api_keys", "key_secrets", "resource_bindings", "audit_events"))
    # the dump does see what was written, bytea columns included
    assert "other, renamed" in text and "team-a" in text and sha256(client.root).hex() in text
    assert found(world.issued, text) == []


async def test_key_secrets_hold_exactly_the_digests_of_live_secrets(
        client: Client, app: App, db: asyncpg.Connection) -> None:
    world = await exercise(client, app)

    rows = await db.fetch("SELECT digest, key_id::text AS key_id, expire_time IS NULL OR expire_time > now() AS live"
                          " FROM key_secrets")

    live = {bytes(r["digest"]): r["key_id"] for r in rows if r["live"]}
    assert live == {sha256(k): key_id for k, key_id in world.live.items()}
    everything = {sha256(k) for k in world.issued}
    assert {bytes(r["digest"]) for r in rows} <= everything  # a retired secret may linger, marked expired


async def test_audit_rows_carry_no_key_material(client: Client, app: App, db: asyncpg.Connection) -> None:
    world = await exercise(client, app)

    rows = [r[0] for r in await db.fetch("SELECT a::text FROM audit_events a ORDER BY id")]
    actions = await db.fetch("SELECT action, outcome FROM audit_events")

    assert {(a["action"], a["outcome"]) for a in actions} >= {
        ("CreateKey", "OK"), ("RotateKey", "OK"), ("BindResource", "OK"), ("UpdateKey", "OK"),
        ("DeleteKey", "OK"), ("CreateKey", "DENIED")}
    text = "\n".join(rows)
    assert found(world.issued, text) == []
    digests = [form for k in world.issued for form in (sha256(k).hex(), sha256(k).hex().upper())]
    assert [d[:8] for d in digests if d in text] == []


async def test_no_digest_outside_key_secrets(client: Client, app: App, db: asyncpg.Connection) -> None:
    world = await exercise(client, app)

    tables = await dump(db)

    for key in world.issued:
        hex_digest = sha256(key).hex()
        assert [t for t, rows in tables.items() if t != "key_secrets" and any(hex_digest in r for r in rows)] == []


# --- errors never echo the presented key ----------------------------------------------


def unknown_key() -> str:
    return KeyFormat().generate()


def mistyped(api_key: str) -> str:
    """One character of the secret changed: the checksum no longer matches."""
    i = 10
    return api_key[:i] + ("A" if api_key[i] != "A" else "B") + api_key[i + 1:]


PRESENTED = {
    "unknown": lambda real: unknown_key(),
    "mistyped": mistyped,
    "foreign": lambda real: "sk-" + real[3:],
    "too long": lambda real: real * 6,
    "with a space": lambda real: real[:20] + " " + real[20:],
}


def error_text(error: grpc.aio.AioRpcError) -> str:
    """Everything an error carries back: code, message, debug string and every trailing metadata value."""
    trailers = [v.decode("latin-1") if isinstance(v, bytes) else v for _, v in error.trailing_metadata() or ()]
    return "\n".join([str(error.code()), error.details() or "", error.debug_error_string() or "", *trailers])


@pytest.mark.parametrize("kind", list(PRESENTED))
async def test_refused_admin_calls_do_not_echo_the_key(client: Client, kind: str) -> None:
    real = (await client.create()).api_key
    presented = PRESENTED[kind](real)

    error = await rpc_error(client.keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=auth(presented)))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert found([presented, real], error_text(error)) == []


@pytest.mark.parametrize("kind", list(PRESENTED))
async def test_denied_checks_do_not_echo_the_key(client: Client, kind: str) -> None:
    real = (await client.create()).api_key
    presented = PRESENTED[kind](real)

    response = await client.check(presented, "chatflows/abc", "chatflows:view")

    assert not response.allowed and response.http_status == 401
    assert found([presented, real], str(response)) == []


async def test_a_known_key_is_not_echoed_by_denials_or_bad_requests(client: Client) -> None:
    created = await client.create(permissions=["chatflows:view"], resources=["chatflows/abc"])
    key = created.api_key
    await client.keys.UpdateKey(keys_pb2.UpdateKeyRequest(
        key=keys_pb2.ApiKey(id=created.key.id, description="admin is watching"),
        update_mask=field_mask_pb2.FieldMask(paths=["description"])), metadata=auth(client.root))

    denials = [await client.check(key, resource, action, workspace)
               for resource, action, workspace in [("chatflows/abc", "chatflows:delete", ""),
                                                   ("chatflows/zzz", "chatflows:view", ""),
                                                   ("chatflows/abc", "chatflows:view", "ws2")]]
    bad = await rpc_error(client.check(key, "chatflows/abc", "chatflows:fly"))
    denied_admin = await rpc_error(client.keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=auth(key)))

    assert [d.code for d in denials] == [authz_pb2.PERMISSION_DENIED, authz_pb2.RESOURCE_OUT_OF_SCOPE,
                                         authz_pb2.WORKSPACE_MISMATCH]
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert denied_admin.code() == grpc.StatusCode.PERMISSION_DENIED
    texts = [*(str(d) for d in denials), error_text(bad), error_text(denied_admin)]
    assert found([key], "\n".join(texts)) == []
