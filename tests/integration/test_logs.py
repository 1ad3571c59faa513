"""Logs: one JSON line per RPC with method, code, latency and request id; never key material.

The server's structlog output is captured in a BytesIO for the test (and restored after).
Each RPC is sent with its own `x-request-id`, so its line can be found and counted.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keygate import logs
from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth

KEYS = "/keygate.v1.KeyService/"
AUTHZ = "/keygate.v1.AuthzService/"
UNKNOWN_KEY = "fl_" + "A" * 49  # our prefix, bad checksum: refused before any lookup
FOREIGN_KEY = "sk-live-0123456789abcdefWRONG"  # no prefix: looked up by digest


@pytest.fixture
def captured() -> Iterator[io.BytesIO]:
    stream = io.BytesIO()
    logs.configure(stream=stream)
    yield stream
    logs.configure()


def lines(stream: io.BytesIO) -> list[dict[str, object]]:
    """Every captured line, each of which must be one JSON object."""
    logs.flush()  # the access log is written in batches
    return [json.loads(line) for line in stream.getvalue().decode().splitlines() if line.strip()]


def rpc_lines(stream: io.BytesIO, request_id: str | None = None) -> list[dict[str, object]]:
    return [e for e in lines(stream) if e.get("event") == "rpc" and request_id in (None, e.get("request_id"))]


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    trailing_metadata: dict[str, str]


async def outcome(call: grpc.aio.UnaryUnaryCall) -> Outcome:
    """The status and trailing metadata of a call, whether it succeeded or failed."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return Outcome(err.code(), dict(err.trailing_metadata() or ()))
    return Outcome(await call.code(), dict(await call.trailing_metadata() or ()))


def rid() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def with_rid(request_id: str, key: str | None = None) -> tuple[tuple[str, str], ...]:
    return (("x-request-id", request_id), *(auth(key) if key else ()))


RPC = Callable[[Client, str, str], grpc.aio.UnaryUnaryCall]  # (client, created key, request id) -> call

RPCS: dict[str, tuple[RPC, str, str]] = {
    "Check allowed": (lambda c, k, r: c.authz.Check(authz_pb2.CheckRequest(
        api_key=k, resource="chatflows/a", action="chatflows:view"), metadata=with_rid(r)), "Check", "OK"),
    "Check denied": (lambda c, k, r: c.authz.Check(authz_pb2.CheckRequest(
        api_key=k, resource="chatflows/a", action="chatflows:delete"), metadata=with_rid(r)), "Check", "OK"),
    "Check unknown key": (lambda c, k, r: c.authz.Check(authz_pb2.CheckRequest(
        api_key=FOREIGN_KEY, action="chatflows:view"), metadata=with_rid(r)), "Check", "OK"),
    "Check unknown action": (lambda c, k, r: c.authz.Check(authz_pb2.CheckRequest(
        api_key=k, action="chatflows:fly"), metadata=with_rid(r)), "Check", "INVALID_ARGUMENT"),
    "KeyService with a wrong key": (lambda c, k, r: c.keys.ListKeys(
        keys_pb2.ListKeysRequest(), metadata=with_rid(r, UNKNOWN_KEY)), "ListKeys", "UNAUTHENTICATED"),
    "KeyService with an unknown foreign key": (lambda c, k, r: c.keys.ListKeys(
        keys_pb2.ListKeysRequest(), metadata=with_rid(r, FOREIGN_KEY)), "ListKeys", "UNAUTHENTICATED"),
    "KeyService without permission": (lambda c, k, r: c.keys.ListKeys(
        keys_pb2.ListKeysRequest(), metadata=with_rid(r, k)), "ListKeys", "PERMISSION_DENIED"),
    "KeyService bad input": (lambda c, k, r: c.keys.CreateKey(
        keys_pb2.CreateKeyRequest(name="", permissions=["chatflows:view"], workspace_id="ws1"),
        metadata=with_rid(r, c.root)), "CreateKey", "INVALID_ARGUMENT"),
    "KeyService not found": (lambda c, k, r: c.keys.GetKey(
        keys_pb2.GetKeyRequest(id=str(uuid.uuid4())), metadata=with_rid(r, c.root)), "GetKey", "NOT_FOUND"),
    "KeyService OK": (lambda c, k, r: c.keys.ListKeys(
        keys_pb2.ListKeysRequest(), metadata=with_rid(r, c.root)), "ListKeys", "OK"),
}


async def test_one_json_line_per_rpc_with_method_code_latency_and_request_id(
    client: Client, captured: io.BytesIO
) -> None:
    created = await client.create(permissions=["chatflows:view"])
    sent: dict[str, tuple[str, str]] = {}
    for name, (rpc, method, code) in RPCS.items():
        request_id = rid()
        result = await outcome(rpc(client, created.api_key, request_id))
        assert result.code.name == code, name
        assert result.trailing_metadata.get("x-request-id") == request_id, name
        sent[request_id] = (method, code)

    # Every RPC in the test (the CreateKey above too) has exactly one line, and there are no others.
    logged = rpc_lines(captured)
    assert len(logged) == len(sent) + 1
    for request_id, (method, code) in sent.items():
        (line,) = rpc_lines(captured, request_id)
        method_prefix = AUTHZ if method == "Check" else KEYS
        assert line["method"] == method_prefix + method
        assert line["code"] == code
        assert isinstance(line["latency_ms"], int | float) and not isinstance(line["latency_ms"], bool)
        assert line["latency_ms"] >= 0
        assert line["level"] == "info" and "timestamp" in line


async def test_request_id_is_generated_when_absent_and_echoed(client: Client, captured: io.BytesIO) -> None:
    call = client.authz.Check(authz_pb2.CheckRequest(api_key=client.root, action="chatflows:view"))
    result = await outcome(call)

    generated = result.trailing_metadata.get("x-request-id")
    assert generated
    (line,) = rpc_lines(captured)
    assert line["request_id"] == generated


@pytest.mark.parametrize(
    "presented",
    ["has spaces", "x" * 65, "semi;colon", "key=fl_secret"],
    ids=["spaces", "65 chars", "punctuation", "key-like"],
)
async def test_unacceptable_request_id_is_replaced_not_logged(
    client: Client, captured: io.BytesIO, presented: str
) -> None:
    call = client.authz.Check(authz_pb2.CheckRequest(api_key=client.root, action="chatflows:view"),
                              metadata=(("x-request-id", presented),))
    result = await outcome(call)

    replacement = result.trailing_metadata.get("x-request-id")
    assert replacement and replacement != presented
    (line,) = rpc_lines(captured)
    assert line["request_id"] == replacement
    logs.flush()
    assert presented not in captured.getvalue().decode()


async def test_request_id_reaches_the_audit_trail(client: Client, captured: io.BytesIO) -> None:
    """The id in the log line is the one an operator finds on the audit row of the same request."""
    request_id = rid()
    created = await client.keys.CreateKey(
        keys_pb2.CreateKeyRequest(name="traced", permissions=["chatflows:view"], workspace_id="ws1"),
        metadata=with_rid(request_id, client.root))

    events = await client.keys.ListAuditEvents(keys_pb2.ListAuditEventsRequest(key_id=created.key.id),
                                               metadata=auth(client.root))
    assert [e.request_id for e in events.events if e.action == "CreateKey"] == [request_id]
    assert len(rpc_lines(captured, request_id)) == 1


async def test_no_key_material_in_the_logs(client: Client, captured: io.BytesIO) -> None:
    admin = await client.create(permissions=["apikeys:*", "chatflows:*"])
    created = await client.create(admin.api_key, permissions=["chatflows:view"])
    rotated = await client.keys.RotateKey(keys_pb2.RotateKeyRequest(id=created.key.id), metadata=auth(admin.api_key))
    wrong = [UNKNOWN_KEY, FOREIGN_KEY, created.api_key[:-1] + ("A" if created.api_key[-1] != "A" else "B")]
    for key in (client.root, admin.api_key, created.api_key, rotated.api_key, *wrong):
        await client.check(key, "chatflows/a", "chatflows:view")
        await outcome(client.keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=auth(key)))
    await outcome(client.keys.CreateKey(keys_pb2.CreateKeyRequest(name=client.root, permissions=["nope:x"]),
                                        metadata=auth(admin.api_key)))

    logs.flush()
    text = captured.getvalue().decode()
    assert rpc_lines(captured), "the RPCs above were not logged at all"
    secrets_seen = [k for k in (client.root, admin.api_key, created.api_key, rotated.api_key, *wrong)
                    if k in text or k[3:] in text]
    assert secrets_seen == []


async def test_other_services_are_logged_too(client: Client, captured: io.BytesIO) -> None:
    await health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest())
    (line,) = rpc_lines(captured)
    assert line["method"] == "/grpc.health.v1.Health/Check" and line["code"] == "OK"


async def test_the_access_log_can_be_switched_off(database_url: str) -> None:
    """KEYGATE_ACCESS_LOG=off: no per-RPC lines (with it on, the tests above see one per RPC)."""
    from keygate.config import Settings
    from keygate.server import App

    stream = io.BytesIO()
    logs.configure(stream=stream, access=False)
    try:
        app = await App.start(Settings(listen="127.0.0.1:0", access_log=False), database_url)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        await app.stop(grace=0)
        logs.flush()
        events = [json.loads(line)["event"] for line in stream.getvalue().decode().splitlines()]
        assert "rpc" not in events
    finally:
        logs.configure()
