"""Logs: JSON lines with method, code, decision, latency and request id; never key material.

The default policy (`denials`) logs every call but the allowed answers of Check, BatchCheck,
ext_authz and health probes; refusals and errors up to a bound per kind, then a count of the
rest. `all` logs every call; `off` none.

The server's structlog output is captured in a BytesIO for the test (and restored after).
Each RPC is sent with its own `x-request-id`, so its line can be found and counted.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keygate import logs
from keygate.config import Settings
from keygate.v1 import authz_pb2, keys_pb2

from .support import Client, auth, capture, lines, running

KEYS = "/keygate.v1.KeyService/"
AUTHZ = "/keygate.v1.AuthzService/"
UNKNOWN_KEY = "fl_" + "A" * 49  # our prefix, bad checksum: refused before any lookup
FOREIGN_KEY = "sk-live-0123456789abcdefWRONG"  # no prefix: looked up by digest


@pytest.fixture
def captured_all() -> Iterator[io.BytesIO]:
    with capture("all") as stream:
        yield stream


def rpc_lines(stream: io.BytesIO, request_id: str | None = None) -> list[dict[str, object]]:
    return [e for e in lines(stream) if e.get("event") == "rpc" and request_id in (None, e.get("request_id"))]


def suppressed(stream: io.BytesIO) -> list[dict[str, object]]:
    return [e for e in lines(stream) if e.get("event") == "rpc_suppressed"]


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
ALLOWED_CHECK = "Check allowed"  # the one call of RPCS the default policy leaves out

RPCS: dict[str, tuple[RPC, str, str]] = {
    ALLOWED_CHECK: (lambda c, k, r: c.authz.Check(authz_pb2.CheckRequest(
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


EXPECTED_DECISIONS = {ALLOWED_CHECK: "OK", "Check denied": "PERMISSION_DENIED", "Check unknown key": "KEY_NOT_FOUND"}


@pytest.mark.parametrize("policy", ["denials", "all"])
async def test_one_json_line_per_rpc_with_method_code_latency_and_request_id(client: Client, policy: str) -> None:
    """Every RPC has exactly one line, but for an allowed Check under the default policy, and there are no others."""
    with capture(policy) as stream:
        await _one_line_per_rpc(client, stream, log_allowed=policy == "all")


async def _one_line_per_rpc(client: Client, captured: io.BytesIO, *, log_allowed: bool) -> None:
    created = await client.create(permissions=["chatflows:view"])
    sent: dict[str, tuple[str, str, str]] = {}
    for name, (rpc, method, code) in RPCS.items():
        request_id = rid()
        result = await outcome(rpc(client, created.api_key, request_id))
        assert result.code.name == code, name
        logged = log_allowed or name != ALLOWED_CHECK
        # A request id identifies a logged call: an allowed Check that is not logged has none.
        assert result.trailing_metadata.get("x-request-id") == (request_id if logged else None), name
        if logged:
            sent[request_id] = (method, code, EXPECTED_DECISIONS.get(name, ""))

    # The CreateKey above has its line too: an admin call.
    logged = rpc_lines(captured)
    assert len(logged) == len(sent) + 1
    for request_id, (method, code, decided) in sent.items():
        (line,) = rpc_lines(captured, request_id)
        assert line.get("decision", "") == decided
        method_prefix = AUTHZ if method == "Check" else KEYS
        assert line["method"] == method_prefix + method
        assert line["code"] == code
        assert isinstance(line["latency_ms"], int | float) and not isinstance(line["latency_ms"], bool)
        assert line["latency_ms"] >= 0
        assert line["level"] == "info" and "timestamp" in line


async def test_request_id_is_generated_when_absent_and_echoed(client: Client, captured: io.BytesIO) -> None:
    call = client.authz.Check(authz_pb2.CheckRequest(api_key=FOREIGN_KEY, action="chatflows:view"))
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
    client: Client, captured_all: io.BytesIO, presented: str
) -> None:
    captured = captured_all
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


def envoy_request(path: str, key: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "POST", path
    http.headers["authorization"] = f"Bearer {key}"
    return request


async def _allowed_answers_of_every_quiet_method(client: Client) -> list[str]:
    """An allowed Check, BatchCheck and ext_authz, and a health probe answered SERVING; their request ids."""
    created = await client.create(permissions=["predictions:create", "chatflows:view"])
    sent = [rid() for _ in range(4)]
    check = await client.authz.Check(authz_pb2.CheckRequest(api_key=created.api_key, action="chatflows:view"),
                                     metadata=with_rid(sent[0]))
    batch = await client.authz.BatchCheck(authz_pb2.BatchCheckRequest(
        api_key=created.api_key, items=[authz_pb2.BatchCheckItem(action="chatflows:view")]), metadata=with_rid(sent[1]))
    envoy = await external_auth_pb2_grpc.AuthorizationStub(client.channel).Check(
        envoy_request("/api/v1/prediction/flow-1", created.api_key), metadata=with_rid(sent[2]))
    health = await health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(),
                                                                     metadata=with_rid(sent[3]))
    assert check.allowed and batch.results[0].allowed and envoy.status.code == 0
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    return sent


async def test_allowed_answers_are_not_logged_by_default(client: Client, captured: io.BytesIO) -> None:
    """Metrics count them; the log keeps what an operator reads. (The CreateKey making the key is logged.)"""
    await _allowed_answers_of_every_quiet_method(client)
    assert [line["method"] for line in rpc_lines(captured)] == [KEYS + "CreateKey"]


async def test_access_log_all_logs_every_call(client: Client, captured_all: io.BytesIO) -> None:
    sent = await _allowed_answers_of_every_quiet_method(client)
    for request_id, method in zip(sent, [AUTHZ + "Check", AUTHZ + "BatchCheck",
                                         "/envoy.service.auth.v3.Authorization/Check",
                                         "/grpc.health.v1.Health/Check"], strict=True):
        (line,) = rpc_lines(captured_all, request_id)
        assert line["method"] == method and line["code"] == "OK"
        assert line.get("decision", "") == ("" if "Health" in method else "OK")


async def test_an_envoy_denial_is_logged_with_its_decision(client: Client, captured: io.BytesIO) -> None:
    request_id = rid()
    answer = await external_auth_pb2_grpc.AuthorizationStub(client.channel).Check(
        envoy_request("/api/v1/prediction/flow-1", FOREIGN_KEY), metadata=with_rid(request_id))
    assert answer.denied_response.status.code == 401
    (line,) = rpc_lines(captured, request_id)
    assert (line["code"], line["decision"]) == ("OK", "KEY_NOT_FOUND")


async def test_a_flood_of_bad_keys_is_logged_within_the_bound_and_counted(
    client: Client, captured: io.BytesIO
) -> None:
    """Each denial up to the bound (per method, status and decision, per second) has its line; the rest
    are counted in `rpc_suppressed` lines once their second is over; none is lost without a trace."""
    flood = 3 * logs.REFUSAL_LINES_PER_SECOND
    sent = [rid() for _ in range(flood)]
    started = time.monotonic()
    answers = await asyncio.gather(*(client.authz.Check(
        authz_pb2.CheckRequest(api_key=FOREIGN_KEY, action="chatflows:view"), metadata=with_rid(r)) for r in sent))
    seconds = time.monotonic() - started
    assert {a.code for a in answers} == {authz_pb2.KEY_NOT_FOUND}
    await asyncio.sleep(1.1)  # the last second of the flood is over: its count is due

    logged = [line for line in rpc_lines(captured) if line["request_id"] in sent]
    counts = suppressed(captured)
    assert {(c["method"], c["code"], c["decision"]) for c in counts} == {(AUTHZ + "Check", "OK", "KEY_NOT_FOUND")}
    assert len(logged) + sum(c["suppressed"] for c in counts) == flood
    assert logs.REFUSAL_LINES_PER_SECOND <= len(logged) <= logs.REFUSAL_LINES_PER_SECOND * (int(seconds) + 1)


async def test_every_denial_up_to_the_bound_is_logged(client: Client, captured: io.BytesIO) -> None:
    sent = [rid() for _ in range(logs.REFUSAL_LINES_PER_SECOND)]
    await asyncio.gather(*(client.authz.Check(authz_pb2.CheckRequest(api_key=FOREIGN_KEY, action="chatflows:view"),
                                              metadata=with_rid(r)) for r in sent))
    assert {line["request_id"] for line in rpc_lines(captured) if line.get("decision") == "KEY_NOT_FOUND"} == set(sent)
    assert suppressed(captured) == []


async def test_every_admin_call_is_logged(client: Client, captured: io.BytesIO) -> None:
    """More successful admin calls than the refusal bound, in a burst: every one has its line."""
    created = await client.create()
    sent = [rid() for _ in range(2 * logs.REFUSAL_LINES_PER_SECOND)]
    await asyncio.gather(*(client.keys.GetKey(keys_pb2.GetKeyRequest(id=created.key.id),
                                              metadata=with_rid(r, client.root)) for r in sent))
    assert {line["request_id"] for line in rpc_lines(captured) if line["method"] == KEYS + "GetKey"} == set(sent)
    assert suppressed(captured) == []


async def test_suppressed_lines_are_counted_at_shutdown(database_url: str) -> None:
    """A flood cut short by a stop still has its count: App.stop reports what it left out."""
    with capture("denials") as stream:
        async with running(Settings(listen="127.0.0.1:0"), database_url) as (_, client):
            flood = 2 * logs.REFUSAL_LINES_PER_SECOND
            await asyncio.gather(*(client.check(FOREIGN_KEY) for _ in range(flood)))
        logged = [line for line in rpc_lines(stream) if line.get("decision") == "KEY_NOT_FOUND"]
        assert len(logged) + sum(c["suppressed"] for c in suppressed(stream)) == flood


async def test_the_access_log_can_be_switched_off(database_url: str) -> None:
    """KEYGATE_ACCESS_LOG=off: no per-RPC lines, admin calls and denials included."""
    with capture("off") as stream:
        async with running(Settings(listen="127.0.0.1:0"), database_url) as (_, client):
            await client.create()
            await client.check(FOREIGN_KEY)
        events = [e["event"] for e in lines(stream)]
        assert "rpc" not in events and "rpc_suppressed" not in events


@pytest.mark.parametrize("policy", ["denials", "all"])
async def test_an_ext_authz_decision_id_names_the_logged_line_and_only_a_logged_one(client: Client,
                                                                                   policy: str) -> None:
    """The decision id in Envoy's dynamic metadata joins Envoy's access log to keygate's: a refusal has one
    (and its line), an allowed answer only when keygate logs it (`all`); otherwise neither pays for one."""
    created = await client.create(permissions=["predictions:create"])
    stub = external_auth_pb2_grpc.AuthorizationStub(client.channel)
    with capture(policy) as stream:
        allowed_id, refused_id = rid(), rid()
        allowed = await stub.Check(envoy_request("/api/v1/prediction/flow-1", created.api_key),
                                   metadata=with_rid(allowed_id))
        refused = await stub.Check(envoy_request("/api/v1/prediction/flow-1", FOREIGN_KEY),
                                   metadata=with_rid(refused_id))
        assert allowed.status.code == 0 and refused.denied_response.status.code == 401
        decision_ids = [a.dynamic_metadata.fields["decision_id"].string_value
                        if "decision_id" in a.dynamic_metadata.fields else None for a in (allowed, refused)]
        assert decision_ids == [allowed_id if policy == "all" else None, refused_id]
        assert [len(rpc_lines(stream, r)) for r in (allowed_id, refused_id)] == [int(policy == "all"), 1]
