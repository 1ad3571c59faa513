"""A keygate server per test, reached through a real gRPC channel."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from keygate.config import Settings
from keygate.server import App

from .support import Client, connect


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
    async with connect(app) as client:
        yield client
