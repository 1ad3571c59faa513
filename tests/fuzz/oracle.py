"""What every fuzzed answer must satisfy, and the server and keys it is checked against.

A call's answer is OK or a status of the README's status table (read from the README itself, so the
two cannot drift apart); its message, details and trailing metadata hold no key material (the keys
the test holds, their SHA-256 digests in hex or base64, the page-token secret); the server logs no
traceback, no failure and no key material for it; and a refused call leaves keys, secrets and bindings
exactly as they were. After all the examples, `assert_invariants` checks what must survive any
sequence of calls: the sentinel key (whose id no request can name) still checks OK, every key still
has a secret, every key but the bootstrap one was created by an audited call.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import event

from keygate import logs
from keygate.domain.keys import digest
from keygate.server import App
from keygate.v1 import authz_pb2, keys_pb2

from ..integration.support import Client, auth
from ..integration.test_hostile import assert_no_failure_logged

README = Path(__file__).resolve().parents[2] / "README.md"
CALL_TIMEOUT = 10.0  # far above any answer's milliseconds: reaching it is a hang, which fails the example
STREAM_FIRST_MESSAGE = 1.0  # a server stream (Health.Watch, a watch of changes) answers or stays open this long
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
# What a refused call must not change: every row, as text, but for the usage columns, which the
# write-behind usage recorder fills in for earlier allowed calls whenever it flushes (once a second).
WRITTEN_BEHIND = "- 'last_used_time' - 'usage_count'"
STATE = {
    table: f"SELECT coalesce(md5(string_agg((to_jsonb(t) {WRITTEN_BEHIND})::text, ',' ORDER BY t::text)), '')"
           f" FROM {table} t"
    for table in ("api_keys", "key_secrets", "resource_bindings")
}


def readme_statuses() -> frozenset[grpc.StatusCode]:
    """The status codes of the README's table (`| status | meaning |`), plus OK."""
    table = README.read_text().split("| status | meaning |", 1)[1].split("\n\n", 1)[0]
    names = re.findall(r"^\| `([A-Z_]+)` \|", table, re.M)
    assert names, "the README's status table was not found"
    return frozenset({grpc.StatusCode.OK, *(grpc.StatusCode[name] for name in names)})


ANSWERS = readme_statuses()


def spellings(secret: bytes) -> list[str]:
    """The ways a digest or secret could be written out: hex (either case) and base64 (both alphabets)."""
    b64 = base64.b64encode(secret).decode()
    url = base64.urlsafe_b64encode(secret).decode()
    return [secret.hex(), secret.hex().upper(), b64, b64.rstrip("="), url, url.rstrip("=")]


@dataclass
class Keys:
    """The keys the fuzz calls with, and the values (pools) it draws plausible fields from."""

    root: str
    narrow: str  # a ws1 key manager below root: the no-escalation rules apply to it
    target: str  # chatflows:update + predictions:create in ws1, bound to chatflows/bound
    target_id: str
    sentinel: str  # in ws1, its id given to no request: must still check OK after everything
    secret: bytes  # the page-token secret
    permissions: list[str]

    @classmethod
    async def make(cls, client: Client, db: asyncpg.Connection) -> Keys:
        narrow = await client.create(name="narrow", permissions=["chatflows:view", "apikeys:view", "apikeys:create",
                                                                  "apikeys:update"])
        target = await client.create(name="target", permissions=["chatflows:update", "predictions:create"])
        await client.keys.BindResource(keys_pb2.BindResourceRequest(resource="chatflows/bound", key_id=target.key.id),
                                       metadata=auth(client.root))
        sentinel = await client.create(name="sentinel")
        catalog = await client.authz.ListPermissions(authz_pb2.ListPermissionsRequest(), metadata=auth(client.root))
        secret = await db.fetchval("SELECT value FROM server_secrets LIMIT 1")
        return cls(client.root, narrow.api_key, target.api_key, target.key.id, sentinel.api_key,
                   bytes(secret), [p.name for p in catalog.permissions])

    @property
    def plaintexts(self) -> list[str]:
        return [self.root, self.narrow, self.target, self.sentinel]

    def material(self) -> Iterator[str]:
        """Every string whose appearance in an answer or a log line is a leak."""
        for key in self.plaintexts:
            yield key
            yield from spellings(digest(key))
        yield from spellings(self.secret)

    def credentials(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """The metadata a call is made with: as root, as a narrow key, with a bad key, or with none."""
        wrong = self.narrow[:-8] + ("A" if self.narrow[-8] != "A" else "B") + self.narrow[-7:]
        return {"root": auth(self.root), "narrow": auth(self.narrow), "unknown": auth(wrong),
                "malformed": (("authorization", "Bearer not-a-key"),), "basic": (("authorization", "Basic eA=="),),
                "none": ()}

    @property
    def chatflow_actions(self) -> list[str]:
        """The actions a Check on the pools' resources (chatflows, mostly) can be allowed for: a Check
        with a random catalog action is almost always INVALID_ARGUMENT (no such action on that collection)."""
        return [p for p in self.permissions if p.startswith(("chatflows:", "predictions:")) and not p.endswith("*")]

    def pools(self) -> dict[str, list[str]]:
        """Plausible values by field name, so that a request gets past the first check."""
        ids = [self.target_id, UNKNOWN_ID]  # not the narrow key's: deleted or rotated, it would call no more
        resources = ["chatflows/a", "chatflows/bound", "chatflows/x", "apikeys/x", "tools/t1"]
        bearer = [f"Bearer {key}" for key in (self.root, self.narrow, self.target)]
        return {
            "id": ids, "key_id": ids, "actor_key_id": ids, "workspace_id": ["ws1", "ws2"],
            "api_key": [self.root, self.narrow, self.target, ""], "permissions": self.permissions,
            "actions": self.permissions, "action": [*self.chatflow_actions, "CreateKey", "UpdateKey"],
            "resource": resources, "resources": resources, "name": ["n", "key-1"], "key_name": ["n"],
            "description": ["d"], "etag": [""], "page_token": [""], "allowed_cidrs": ["10.0.0.0/8", "::1/128"],
            "client_address": ["127.0.0.1", "10.1.2.3", "::1"],
            "paths": ["name", "description", "permissions", "resources", "expire_time", "disabled", "metadata",
                      "allowed_cidrs", "rate_limits", "credits", "*"],
            "service": ["", "keygate.v1.AuthzService", "keygate.v1.KeyService", "grpc.health.v1.Health"],
            "method": ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"],
            "path": ["/api/v1/prediction/x", "/api/v1/chatflows/x", "/api/v1/chatflows", "/api/v1/apikey",
                     "/api/v1/apikey/" + self.target_id, "/api/v1/../v1/apikey", "/api/v1/chatflows/x?a=1#f"],
            "host": ["localhost", "flowise.internal"], "scheme": ["http", "https"], "protocol": ["HTTP/1.1"],
            "key": ["authorization", "Authorization", "x-api-key", "x-request-id", ":path"],
            "value": [*bearer, self.narrow, "Bearer "],
        }


@dataclass
class Answer:
    code: grpc.StatusCode
    details: str  # the status message, the trailing metadata and the binary status details, as text
    reply: Message | None


@dataclass
class Fuzzed:
    app: App
    channel: grpc.aio.Channel
    db: asyncpg.Connection
    log: io.BytesIO
    keys: Keys

    def log_lines(self) -> list[dict[str, object]]:
        """Every line logged since the last call (each must be one JSON object); the capture starts over."""
        logs.flush()
        text = self.log.getvalue().decode()
        self.log.seek(0)
        self.log.truncate()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    async def state(self) -> dict[str, str]:
        return {table: await self.db.fetchval(query) for table, query in STATE.items()}

    async def call(self, path: str, method: MethodDescriptor, request: Message,
                   metadata: tuple[tuple[str, str], ...]) -> Answer:
        reply_type = GetMessageClass(method.output_type)
        if method.server_streaming:
            return await self._stream(path, reply_type, request, metadata)
        stub = self.channel.unary_unary(path, request_serializer=type(request).SerializeToString,
                                        response_deserializer=reply_type.FromString)
        call = stub(request, metadata=metadata, timeout=CALL_TIMEOUT)
        try:
            reply = await call
        except grpc.aio.AioRpcError as error:
            return Answer(error.code(), _details(error.details(), error.trailing_metadata()), None)
        return Answer(grpc.StatusCode.OK, _details("", await call.trailing_metadata()), reply)

    async def _stream(self, path: str, reply_type: type[Message], request: Message,
                      metadata: tuple[tuple[str, str], ...]) -> Answer:
        """A server stream's first message or its status; one still open after a second is cancelled
        (a watch may have nothing to say yet): that is an answer, not a hang."""
        stub = self.channel.unary_stream(path, request_serializer=type(request).SerializeToString,
                                         response_deserializer=reply_type.FromString)
        call = stub(request, metadata=metadata, timeout=CALL_TIMEOUT)
        try:
            first = await asyncio.wait_for(call.read(), STREAM_FIRST_MESSAGE)
        except TimeoutError:
            call.cancel()
            return Answer(grpc.StatusCode.OK, "", None)
        except grpc.aio.AioRpcError as error:
            return Answer(error.code(), _details(error.details(), error.trailing_metadata()), None)
        call.cancel()
        if first is grpc.aio.EOF:
            return Answer(await call.code(), _details(await call.details(), await call.trailing_metadata()), None)
        return Answer(grpc.StatusCode.OK, "", first)

    async def assert_answer(self, label: str, request: Message, answer: Answer, before: dict[str, str]) -> None:
        """Every rule of the module docstring for one call."""
        event(f"{label.split(' as ')[0]}: {answer.code.name}")  # coverage, shown by --hypothesis-show-statistics
        assert answer.code in ANSWERS, (label, answer.code, answer.details, request)
        for material in self.keys.material():
            assert material not in answer.details, (label, "key material in the answer's details", answer.details)
        if answer.code != grpc.StatusCode.OK:
            assert await self.state() == before, (label, answer.code, "a refused call changed the tables", request)
        logged = self.log_lines()
        assert_no_failure_logged(logged)  # no traceback, no failure, every line short
        text = json.dumps(logged)
        for material in self.keys.material():
            assert material not in text, (label, "key material in the log", text)

    async def assert_invariants(self) -> None:
        check = await self.channel.unary_unary(
            "/keygate.v1.AuthzService/Check", request_serializer=authz_pb2.CheckRequest.SerializeToString,
            response_deserializer=authz_pb2.CheckResponse.FromString,
        )(authz_pb2.CheckRequest(api_key=self.keys.sentinel, resource="chatflows/a", action="chatflows:view",
                                 workspace_id="ws1"), timeout=CALL_TIMEOUT)
        assert check.allowed, check
        orphans = await self.db.fetchval(
            "SELECT count(*) FROM api_keys k WHERE NOT EXISTS (SELECT 1 FROM key_secrets s WHERE s.key_id = k.id)")
        assert orphans == 0, "a key without a secret: a half-written change"
        unaudited = await self.db.fetch(
            "SELECT id, name FROM api_keys k WHERE NOT EXISTS ("
            "  SELECT 1 FROM audit_events a WHERE a.target_key_id = k.id"
            "   AND a.outcome = 'OK' AND a.action IN ('Bootstrap', 'CreateKey', 'CreateApiKey'))")
        assert unaudited == [], f"keys without the audited call that made them: {unaudited}"


def _details(message: str | None, trailing: object) -> str:
    """The status message, every trailing metadata entry, binary ones (the status details) as text."""
    parts = [message or ""]
    for key, value in trailing or ():  # type: ignore[attr-defined]
        parts.append(f"{key}={value!r}")
        if isinstance(value, bytes):
            parts.append(value.decode("latin-1"))
    return "\n".join(parts)
