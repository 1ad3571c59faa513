"""Helpers for integration tests: a client with conveniences, metadata, timestamps, error details."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from keygate import logs
from keygate.config import Settings
from keygate.server import App
from keygate.v1 import authz_pb2, authz_pb2_grpc, keys_pb2, keys_pb2_grpc


@dataclass
class Client:
    """Stubs plus the conveniences every test wants."""

    channel: grpc.aio.Channel
    keys: keys_pb2_grpc.KeyServiceStub
    authz: authz_pb2_grpc.AuthzServiceStub
    root: str  # plaintext root key

    async def create(self, caller: str | None = None, **fields: object) -> keys_pb2.CreateKeyResponse:
        """CreateKey as `caller` (default: root), workspace ws1 and chatflows:view unless given."""
        fields.setdefault("name", "test key")
        fields.setdefault("permissions", ["chatflows:view"])
        if caller is None or caller == self.root:
            fields.setdefault("workspace_id", "ws1")
        return await self.keys.CreateKey(keys_pb2.CreateKeyRequest(**fields), metadata=auth(caller or self.root))

    async def check(self, api_key: str, resource: str = "", action: str = "chatflows:view",
                    workspace_id: str = "") -> authz_pb2.CheckResponse:
        return await self.authz.Check(authz_pb2.CheckRequest(
            api_key=api_key, resource=resource, action=action, workspace_id=workspace_id))


def auth(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),)


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def in_(delta: timedelta) -> timestamp_pb2.Timestamp:
    return ts(datetime.now(UTC) + delta)


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations carried by an error, as {field: description}."""
    status = rpc_status.from_call(error)
    out: dict[str, str] = {}
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.update({v.field: v.description for v in bad.field_violations})
    return out


async def rpc_error(awaitable: object) -> grpc.aio.AioRpcError:
    """Await a call that must fail, and return its error."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await awaitable
    return info.value


@asynccontextmanager
async def connect(app: App) -> AsyncIterator[Client]:
    """A client of `app` holding a fresh root key."""
    _, root = await app.admin.create_root_key()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield Client(channel, keys_pb2_grpc.KeyServiceStub(channel), authz_pb2_grpc.AuthzServiceStub(channel), root)


@asynccontextmanager
async def running(settings: Settings, url: str) -> AsyncIterator[tuple[App, Client]]:
    """An App started by the test itself, with a root key and a client; stopped afterwards."""
    app = await App.start(settings, url)
    try:
        async with connect(app) as client:
            yield app, client
    finally:
        await app.stop(grace=0)


@contextmanager
def capture(policy: str) -> Iterator[io.BytesIO]:
    """The server's structlog output in a BytesIO under access-log `policy` (restored after)."""
    stream = io.BytesIO()
    logs.configure(stream=stream, access=policy)
    try:
        yield stream
    finally:
        logs.configure()


def lines(stream: io.BytesIO) -> list[dict[str, object]]:
    """Every captured line, each of which must be one JSON object."""
    logs.flush()  # the access log is written in batches
    return [json.loads(line) for line in stream.getvalue().decode().splitlines() if line.strip()]
