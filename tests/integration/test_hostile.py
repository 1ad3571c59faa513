"""Hostile input, sent as an attacker's client would: never INTERNAL or UNKNOWN, no traceback, no key in a log.

Calls go over hand-written HTTP/2 (`raw_http2`) where grpc's own client would refuse to send them:
bodies that are not protobuf, metadata bytes that are not UTF-8. The server's log is captured for
each test, and the audit table read back, so what must not be written is looked for where it would be.
Each test runs its own server on its own event loop (see test_validation); property-based tests
(hypothesis) share that server across their examples.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import string
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import field_mask_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keygate import logs
from keygate.config import Settings
from keygate.domain import keys as key_format
from keygate.domain.errors import KEY_SHAPED
from keygate.server import App
from keygate.v1 import authz_pb2, keys_pb2

from . import raw_http2
from .support import Client, running
from .test_validation import UNKNOWN_ID, Target, make_target, unsigned

SERVICES = [  # everything keygate serves, by descriptor
    keys_pb2.DESCRIPTOR.services_by_name["KeyService"],
    authz_pb2.DESCRIPTOR.services_by_name["AuthzService"],
    external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
UNIMPLEMENTED = {"/grpc.health.v1.Health/List"}  # grpc's aio HealthServicer has no List
METHODS = [path for s in SERVICES for m in s.methods if (path := f"/{s.full_name}/{m.name}") not in UNIMPLEMENTED]
# Methods whose request's field 1 is a string: only there is a non-UTF-8 field 1 a malformed body.
STRING_FIRST = {f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods
                if (f := m.input_type.fields_by_number.get(1)) is not None and f.type == f.TYPE_STRING}
NOT_PROTOBUF = {
    "wire type 7": b"\xff\xff\xff",
    "truncated varint": b"\x08\x80",
    "length past the end": b"\x0a\x05ab",
    "string field not UTF-8": b"\x0a\x02\xff\xfe",
}
FAILURES = {grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNKNOWN.value[0]}
MAX_LINE_BYTES = 400
EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class Served:
    app: App
    client: Client
    db: asyncpg.Connection
    log: io.BytesIO
    target: Target

    def lines(self) -> list[dict[str, object]]:
        """Every line logged since the last call (each must be one JSON object); the capture starts over."""
        logs.flush()
        text = self.log.getvalue().decode()
        self.log.seek(0)
        self.log.truncate()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    async def call(self, method: str, body: bytes | Message,
                   metadata: tuple[tuple[bytes, bytes], ...] = ()) -> raw_http2.RawReply:
        raw = body if isinstance(body, bytes) else body.SerializeToString()
        return await raw_http2.call(self.app.port, method, raw, metadata)


@pytest.fixture
async def served(postgres) -> AsyncIterator[Served]:
    stream = io.BytesIO()
    logs.configure(stream=stream)
    url = await postgres.fresh_database()
    db = await asyncpg.connect(url)
    try:
        async with running(Settings(listen="127.0.0.1:0"), url) as (app, client):
            served = Served(app, client, db, stream, await make_target(client))
            served.lines()
            yield served
    finally:
        await db.close()
        logs.configure()


def assert_no_failure_logged(lines: list[dict[str, object]]) -> None:
    for line in lines:
        assert "exception" not in line and line.get("event") != "rpc_failed", line
        assert line.get("code") not in ("INTERNAL", "UNKNOWN"), line
        assert len(json.dumps(line)) < MAX_LINE_BYTES, line


def root(served: Served) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {served.client.root}".encode())


# --- bodies that are not the method's message ----------------------------------------------------------------


@pytest.mark.parametrize("body", list(NOT_PROTOBUF.values()), ids=list(NOT_PROTOBUF))
async def test_a_body_that_is_not_the_message_is_invalid_argument_on_every_method(served: Served, body: bytes) -> None:
    malformed_for = [m for m in METHODS if body != NOT_PROTOBUF["string field not UTF-8"] or m in STRING_FIRST]
    for method in malformed_for:
        reply = await served.call(method, body, (root(served),))
        assert reply.status == grpc.StatusCode.INVALID_ARGUMENT.value[0], (method, reply.headers)
        assert b"not a valid" in reply.headers[b"grpc-message"]
    for method in UNIMPLEMENTED:  # was INTERNAL with a traceback: the generated stub raises NotImplementedError
        reply = await served.call(method, body, (root(served),))
        assert reply.status == grpc.StatusCode.UNIMPLEMENTED.value[0], (method, reply.headers)
    lines = served.lines()
    assert_no_failure_logged(lines)
    assert {line["method"] for line in lines if line["event"] == "malformed_request"} == set(malformed_for)


async def test_a_flood_of_malformed_bodies_writes_a_bounded_number_of_warnings(served: Served) -> None:
    started = time.monotonic()
    for _ in range(100):
        reply = await served.call("/keygate.v1.AuthzService/Check", NOT_PROTOBUF["wire type 7"])
        assert reply.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    windows = 1 + int((time.monotonic() - started) // logs.THROTTLE_WINDOW_SECONDS)  # one, unless the machine crawls
    lines = served.lines()
    warnings = [line for line in lines if line["event"] == "malformed_request"]
    assert logs.THROTTLE_LIMIT <= len(warnings) <= logs.THROTTLE_LIMIT * windows
    assert_no_failure_logged(lines)


@EXAMPLES
@given(body=st.binary(max_size=300), method=st.sampled_from(["/keygate.v1.AuthzService/Check",
                                                             "/keygate.v1.KeyService/CreateKey",
                                                             "/envoy.service.auth.v3.Authorization/Check"]))
async def test_any_body_gets_an_answer_never_a_failure(served: Served, body: bytes, method: str) -> None:
    reply = await served.call(method, body, (root(served),))
    assert reply.status not in FAILURES, reply.headers
    assert_no_failure_logged(served.lines())


# --- any value in any field ------------------------------------------------------------------------------------

def _valid_requests(target: Target) -> dict[str, Message]:
    """A request per method that would succeed (or be a plain NOT_FOUND) but for the field a test spoils."""
    every_field = field_mask_pb2.FieldMask(paths=["*"])
    return {
        "/keygate.v1.KeyService/CreateKey": keys_pb2.CreateKeyRequest(
            name="n", workspace_id="ws1", permissions=["chatflows:view"], metadata={"team": "a"},
            resources=["chatflows/a"], description="d"),
        "/keygate.v1.KeyService/GetKey": keys_pb2.GetKeyRequest(id=target.id),
        "/keygate.v1.KeyService/ListKeys": keys_pb2.ListKeysRequest(workspace_id="ws1"),
        "/keygate.v1.KeyService/UpdateKey": keys_pb2.UpdateKeyRequest(key=keys_pb2.ApiKey(
            id=target.id, name="n", description="d", permissions=["chatflows:update", "predictions:create"],
            resources=["chatflows/a"], metadata={"team": "a"}, etag=""), update_mask=every_field),
        "/keygate.v1.KeyService/DeleteKey": keys_pb2.DeleteKeyRequest(id=UNKNOWN_ID),
        "/keygate.v1.KeyService/RotateKey": keys_pb2.RotateKeyRequest(id=UNKNOWN_ID),
        "/keygate.v1.KeyService/BindResource": keys_pb2.BindResourceRequest(
            resource="chatflows/x", key_id=target.id, actions=["predictions:create"]),
        "/keygate.v1.KeyService/UnbindResource": keys_pb2.UnbindResourceRequest(resource="chatflows/x",
                                                                                key_id=target.id),
        "/keygate.v1.KeyService/ListBindings": keys_pb2.ListBindingsRequest(resource="chatflows/bound",
                                                                            workspace_id="ws1"),
        "/keygate.v1.KeyService/ListAuditEvents": keys_pb2.ListAuditEventsRequest(
            workspace_id="ws1", key_id=target.id, actor_key_id=target.id, action="CreateKey"),
        "/keygate.v1.AuthzService/Check": authz_pb2.CheckRequest(
            api_key=target.api_key, resource="chatflows/a", action="chatflows:view", workspace_id="ws1"),
        "/keygate.v1.AuthzService/BatchCheck": authz_pb2.BatchCheckRequest(api_key=target.api_key, items=[
            authz_pb2.BatchCheckItem(resource="chatflows/a", action="chatflows:view", workspace_id="ws1")]),
    }


def _string_paths(descriptor: Descriptor, prefix: str = "") -> list[str]:
    """Every string a request can carry, as dotted paths; `[]` marks a repeated or map entry."""
    paths = []
    for field in descriptor.fields:
        path = prefix + field.name
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            paths += [f"{path}[key]", f"{path}[value]"]
        elif message is not None and not message.full_name.startswith("google.protobuf."):
            paths += _string_paths(message, f"{path}[]." if field.is_repeated else f"{path}.")
        elif field.type == FieldDescriptor.TYPE_STRING:
            paths.append(f"{path}[]" if field.is_repeated else path)
    return paths


KEY_METHODS = {f"/{s.full_name}/{m.name}": m.input_type for s in SERVICES[:2] for m in s.methods}
STRING_FIELDS = [(method, path) for method, message in KEY_METHODS.items() for path in _string_paths(message)]
ENVOY_CHECK = "/envoy.service.auth.v3.Authorization/Check"
ENVOY_FIELDS = ["attributes.request.http.method", "attributes.request.http.path", "attributes.request.http.host",
                "attributes.request.http.headers[key]", "attributes.request.http.headers[value]"]


def _set(message: Message, path: str, value: str) -> None:
    """Put `value` at `path` (see _string_paths) in `message`, adding an entry where the path says so."""
    head, _, rest = path.partition(".")
    name, _, entry = head.partition("[")
    if entry == "key]":
        getattr(message, name)[value] = "v"
    elif entry == "value]":
        getattr(message, name)["k"] = value
    elif entry and rest:
        _set(getattr(message, name).add(), rest, value)
    elif entry:
        getattr(message, name).append(value)
    elif rest:
        _set(getattr(message, name), rest, value)
    else:
        setattr(message, name, value)


def _envoy_request(target: Target) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", "/api/v1/chatflows/x"
    http.headers["authorization"] = f"Bearer {target.api_key}"
    return request


CONTROL = st.one_of(st.just("\x00"), st.characters(categories=["Cc"]))  # NUL: PostgreSQL text cannot hold it
WITH_CONTROL = st.tuples(st.text(max_size=20), CONTROL, st.text(max_size=20)).map("".join)


@EXAMPLES
@given(where=st.sampled_from([*STRING_FIELDS, *((ENVOY_CHECK, p) for p in ENVOY_FIELDS)]), value=WITH_CONTROL)
async def test_control_characters_in_any_string_field_are_refused_never_a_failure(
    served: Served, where: tuple[str, str], value: str
) -> None:
    method, path = where
    request = _envoy_request(served.target) if method == ENVOY_CHECK else _valid_requests(served.target)[method]
    _set(request, path, value)
    reply = await served.call(method, request, (root(served),))
    assert reply.status not in FAILURES, (where, value, reply.headers)
    assert_no_failure_logged(served.lines())


TIME_FIELDS = {
    "CreateKey.expire_time": ("/keygate.v1.KeyService/CreateKey", "expire_time"),
    "UpdateKey.key.expire_time": ("/keygate.v1.KeyService/UpdateKey", "key.expire_time"),
    "ListAuditEvents.start_time": ("/keygate.v1.KeyService/ListAuditEvents", "start_time"),
    "ListAuditEvents.end_time": ("/keygate.v1.KeyService/ListAuditEvents", "end_time"),
    "RotateKey.grace_period": ("/keygate.v1.KeyService/RotateKey", "grace_period"),
}
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@EXAMPLES
@given(field=st.sampled_from(list(TIME_FIELDS)), seconds=st.one_of(INT64, st.integers(-10**12, 10**12)), nanos=INT32)
async def test_any_timestamp_or_duration_is_an_answer_never_a_failure(
    served: Served, field: str, seconds: int, nanos: int
) -> None:
    method, path = TIME_FIELDS[field]
    requests = _valid_requests(served.target)
    requests["/keygate.v1.KeyService/RotateKey"] = keys_pb2.RotateKeyRequest(id=served.target.id)
    request = requests[method]
    holder_path, _, name = path.rpartition(".")
    holder = getattr(request, holder_path) if holder_path else request
    value = getattr(holder, name)
    value.seconds, value.nanos = seconds, nanos
    reply = await served.call(method, request, (root(served),))
    assert reply.status not in FAILURES, (field, seconds, nanos, reply.headers)
    assert_no_failure_logged(served.lines())


LISTS = {  # method -> (its request, the query fingerprint unsigned tokens carried for it)
    "/keygate.v1.KeyService/ListKeys": (keys_pb2.ListKeysRequest, ("keys", None)),
    "/keygate.v1.KeyService/ListAuditEvents": (keys_pb2.ListAuditEventsRequest,
                                               ("audit", None, "None", "None", "", "None", "None")),
}
ANY_INT = st.one_of(st.integers(), st.integers(min_value=2**63, max_value=10**30))  # past bigint too
CURSORS = st.one_of(st.tuples(ANY_INT).map(list), st.lists(st.one_of(ANY_INT, st.text(max_size=40)), max_size=3))


@EXAMPLES
@given(method=st.sampled_from(list(LISTS)), data=st.data())
async def test_any_page_token_is_a_page_or_invalid_argument(served: Served, method: str, data: st.DataObject) -> None:
    """Random bytes and text, and forged tokens: any cursor, with the query fingerprint a caller can compute."""
    message, query = LISTS[method]
    token = data.draw(st.one_of(
        st.binary(max_size=200).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
        st.text(max_size=200),
        CURSORS.map(lambda cursor: unsigned(cursor, query)),
    ))
    request = message(page_token=token)
    reply = await served.call(method, request, (root(served),))
    assert reply.status in (grpc.StatusCode.OK.value[0], grpc.StatusCode.INVALID_ARGUMENT.value[0]), reply.headers
    assert_no_failure_logged(served.lines())


# --- no key in a log or an audit row, whoever sent it where --------------------------------------------------


def _key(prefix: str, secret: bytes) -> str:
    """A well-formed key (checksum and all) made from hypothesis' bytes, so a failing example replays."""
    body = f"{prefix}_{key_format._base62(int.from_bytes(secret), key_format.SECRET_LEN)}"
    return body + key_format._checksum(body)


def leaked(key: str, text: str) -> str | None:
    """The first piece of `key` longer than its masked display (e.g. `fl_3kQa...x9Zt`) found in `text`."""
    size = len(key_format.KeyFormat(key.partition("_")[0]).display(key)) + 1
    return next((key[i:i + size] for i in range(len(key) - size + 1) if key[i:i + size] in text), None)


Placement = Callable[[bytes], tuple[bytes, bytes]]
PLACEMENTS: dict[str, Placement] = {
    "authorization": lambda k: (b"authorization", b"Bearer " + k),
    "authorization, invalid UTF-8 after": lambda k: (b"authorization", b"Bearer " + k + b"\xff"),
    "authorization, invalid UTF-8 inside": lambda k: (b"authorization", b"Bearer " + k[:25] + b"\xc3" + k[25:]),
    "x-request-id": lambda k: (b"x-request-id", k),
    "x-request-id with a prefix": lambda k: (b"x-request-id", b"req-" + k),
    "x-request-id, invalid UTF-8": lambda k: (b"x-request-id", k + b"\xfe"),
    "another header": lambda k: (b"x-api-key", k),
    "another header, invalid UTF-8": lambda k: (b"x-trace", b"\x80" + k),
    "a binary header": lambda k: (b"x-key-bin", base64.b64encode(k)),
}
AUDITED = ["/keygate.v1.KeyService/CreateKey", "/keygate.v1.KeyService/GetKey", "/keygate.v1.AuthzService/Check"]


@EXAMPLES
@given(prefix=st.tuples(st.sampled_from(string.ascii_lowercase),
                        st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=6)).map("".join),
       secret=st.binary(min_size=32, max_size=32),
       placement=st.sampled_from(list(PLACEMENTS)), method=st.sampled_from(AUDITED))
async def test_a_key_in_any_metadata_reaches_no_log_and_no_audit_row(
    served: Served, prefix: str, secret: bytes, placement: str, method: str
) -> None:
    key = _key(prefix, secret)
    request = {"/keygate.v1.KeyService/CreateKey": keys_pb2.CreateKeyRequest(
                   name="n", workspace_id="ws1", permissions=["logs:view"]),  # beyond no one: audited either way
               "/keygate.v1.KeyService/GetKey": keys_pb2.GetKeyRequest(id=served.target.id),
               "/keygate.v1.AuthzService/Check": authz_pb2.CheckRequest(
                   api_key=served.target.api_key, resource="chatflows/a", action="chatflows:view")}[method]
    header = PLACEMENTS[placement](key.encode())
    metadata = (header,) if header[0] == b"authorization" else (root(served), header)
    reply = await served.call(method, request, metadata)
    assert reply.status not in FAILURES, reply.headers
    assert not KEY_SHAPED.search(reply.headers.get(b"x-request-id", b"").decode("latin-1"))
    logged = "\n".join(json.dumps(line) for line in served.lines())
    audited = "\n".join(str(tuple(row)) for row in await served.db.fetch("SELECT * FROM audit_events"))
    assert leaked(key, logged) is None, (placement, logged)
    assert leaked(key, audited) is None, (placement, audited)


async def test_a_key_sent_as_request_id_gets_a_fresh_one(served: Served) -> None:
    """The issue's case, through grpc's own client: the key is neither echoed, nor logged, nor audited."""
    leaky = await served.client.create(name="leaky")
    call = served.client.keys.CreateKey(
        keys_pb2.CreateKeyRequest(name="n", workspace_id="ws1", permissions=["chatflows:view"]),
        metadata=(("authorization", f"Bearer {served.client.root}"), ("x-request-id", leaky.api_key)))
    await call
    echoed = dict(await call.trailing_metadata())["x-request-id"]
    assert echoed != leaky.api_key and not KEY_SHAPED.search(echoed)
    assert await served.db.fetchval("SELECT count(*) FROM audit_events WHERE request_id = $1", echoed) == 1
    audited = "\n".join(str(tuple(row)) for row in await served.db.fetch("SELECT * FROM audit_events"))
    assert leaked(leaky.api_key, json.dumps(served.lines())) is None
    assert leaked(leaky.api_key, audited) is None


async def test_screened_streams_still_serve_well_formed_requests(served: Served) -> None:
    """Health.Watch (a server stream behind the screening wrapper) answers as before."""
    call = health_pb2_grpc.HealthStub(served.client.channel).Watch(health_pb2.HealthCheckRequest(service=""))
    first = await asyncio.wait_for(call.read(), timeout=10)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    call.cancel()
