"""A keygate server per test, reached through a real gRPC channel."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from keygate.config import Settings
from keygate.server import App
from keygate.v1 import authz_pb2_grpc, keys_pb2_grpc

from .support import Client


@pytest.fixture
def settings() -> Settings:
    return Settings(listen="127.0.0.1:0")


@pytest.fixture
async def app(settings: Settings, database_url: str) -> AsyncIterator[App]:
    app = await App.start(settings, database_url)
    yield app
    await app.stop(grace=0)


@pytest.fixture
async def client(app: App) -> AsyncIterator[Client]:
    _, root = await app.admin.create_root_key()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield Client(channel, keys_pb2_grpc.KeyServiceStub(channel), authz_pb2_grpc.AuthzServiceStub(channel), root)
