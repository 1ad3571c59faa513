"""A keygate server per test, reached through a real gRPC channel."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator

import pytest

from keygate.config import Settings
from keygate.server import App

from .support import Client, capture, connect


@pytest.fixture
def settings() -> Settings:
    return Settings(listen="127.0.0.1:0")


@pytest.fixture
async def app(settings: Settings, database_url: str) -> AsyncIterator[App]:
    app = await App.start(settings, database_url)
    yield app
    await stop_within(app, STOP_SECONDS)


STOP_SECONDS = 30.0  # far above a stop's few milliseconds: reaching it means something hangs


async def stop_within(app: App, seconds: float) -> None:
    """Stop `app`, failing with every task's stack if that takes longer than `seconds`: a shutdown that
    hangs must show where, not stall the suite."""
    stopping = asyncio.ensure_future(app.stop(grace=0))
    done, _ = await asyncio.wait({stopping}, timeout=seconds)
    if not done:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(file=stacks)
        stopping.cancel()
        pytest.fail(f"App.stop took over {seconds} s; tasks:\n{stacks.getvalue()}")
    stopping.result()


@pytest.fixture
async def client(app: App) -> AsyncIterator[Client]:
    async with connect(app) as client:
        yield client


@pytest.fixture
def captured() -> Iterator[io.BytesIO]:
    """The server's log lines under the default access-log policy, `denials` (test_logs, test_tls)."""
    with capture("denials") as stream:
        yield stream
